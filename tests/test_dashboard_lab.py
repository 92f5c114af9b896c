"""The inline dashboard in JupyterLab, in headless chromium: the widget renders with BokehJS
loaded offline, and its plots fill with tasks while the cell that runs them still blocks."""

from __future__ import annotations

import errno
import os

import pytest
from labserver import CHROMIUM, chromium, running_lab

nbformat = pytest.importorskip("nbformat")
sync_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("jupyterlab")
pytest.importorskip("jupyter_bokeh")
# start-up (up to 2 min on a loaded machine) and a few waits of up to 60 s each
pytestmark = [pytest.mark.timeout(360),
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
open("release.fifo").read()   # blocks until the test writes: the plots above keep moving""",
    "client.close(); cluster.close()",
]
STATE = """() => {
  const docs = (window.Bokeh && Bokeh.documents) || [];
  let n = 0;
  for (const d of docs) { const s = d.get_model_by_name('task_stream'); if (s) n = s.data.key.length; }
  const prompts = [...document.querySelectorAll('.jp-InputArea-prompt')].map(p => p.textContent);
  return {tasks: n, prompts};
}"""


def release(fifo) -> bool:
    """Let the blocked cell go on; False if nothing reads the FIFO (the cell is not there)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)   # never blocks the test
    except OSError as e:
        if e.errno == errno.ENXIO:
            return False
        raise
    with os.fdopen(fd, "w") as f:
        f.write("go")
    return True


@pytest.fixture
def lab(tmp_path):
    with running_lab(tmp_path, "dash.ipynb", CELLS) as (base, token):
        yield base, token, tmp_path


def test_inline_dashboard_updates_in_jupyterlab(lab):
    base, token, tmp_path = lab
    # the second cell blocks on this until the test has seen the plots move
    fifo = tmp_path / "root" / "release.fifo"
    os.mkfifo(fifo)
    with chromium(tmp_path / "profile", viewport={"width": 1280, "height": 1400}) as page:
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
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
            # and catch up with all of them while that cell still blocks
            page.wait_for_function(f"({STATE})().tasks >= 300")
            assert "[*]:" in page.evaluate(STATE)["prompts"][1]
            assert release(fifo), "the second cell never reached its blocking read"
            # the last cell closes the cluster: wait for it, so nothing is cut off mid-way
            page.wait_for_function(f"({STATE})().prompts.every(p => /\\[\\d+\\]/.test(p))")
            assert not errors, errors
        finally:
            release(fifo)   # a failed test leaves no kernel blocked (no-op if nothing waits)
