"""The inline dashboard in JupyterLab, in headless chromium: the widget renders with BokehJS
loaded offline, and its plots fill with tasks while the cell that runs them still blocks."""

from __future__ import annotations

import os

import pytest
from labserver import CHROMIUM, running_lab

nbformat = pytest.importorskip("nbformat")
sync_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("jupyterlab")
pytest.importorskip("jupyter_bokeh")
pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian chromium")]

CELLS = [
    """\
from nbcluster import Client, LocalCluster
cluster = LocalCluster(n_workers=2, processes=False)
client = Client(cluster)
client.dashboard()""",
    """\
import time
def nap(x):
    time.sleep(0.02)
    return x
futures = client.map(nap, range(300))
time.sleep(6)   # blocks: the plots above keep moving""",
    "client.close(); cluster.close()",
]
STATE = """() => {
  const docs = (window.Bokeh && Bokeh.documents) || [];
  let n = 0;
  for (const d of docs) { const s = d.get_model_by_name('task_stream'); if (s) n = s.data.key.length; }
  const prompts = [...document.querySelectorAll('.jp-InputArea-prompt')].map(p => p.textContent);
  return {tasks: n, prompts};
}"""


@pytest.fixture
def lab(tmp_path):
    with running_lab(tmp_path, "dash.ipynb", CELLS) as (base, token):
        yield base, token, tmp_path


def test_inline_dashboard_updates_in_jupyterlab(lab):
    base, token, tmp_path = lab
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
            viewport={"width": 1280, "height": 1400})
        try:
            page = ctx.new_page()
            page.set_default_timeout(60_000)
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{base}/lab/tree/dash.ipynb?token={token}")
            sync_api.expect(page.get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible()
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
            page.wait_for_function(f"({STATE})().tasks > 50")
            state = page.evaluate(STATE)
            assert "[*]:" in state["prompts"][1], state   # the blocking cell is still running
            # the plots are drawn in the first cell's output, on canvases
            assert page.locator(".jp-Cell").first.locator("canvas").count() > 0
            page.screenshot(path=str(tmp_path / "lab-dashboard.png"))
            page.wait_for_function(f"({STATE})().tasks >= 300")   # and catch up with all
            assert not errors, errors
        finally:
            ctx.close()
