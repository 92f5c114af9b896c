"""The inline dashboard in JupyterLab, in headless chromium: the widget renders with BokehJS
loaded offline, and its plots fill with tasks while the cell that runs them still blocks."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

CHROMIUM = "/usr/bin/chromium"
nbformat = pytest.importorskip("nbformat")
sync_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("jupyterlab")
pytest.importorskip("jupyter_bokeh")
pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian chromium")]

CELLS = [
    """\
from nbcluster import Client, LocalCluster
from nbcluster.dashboard.widget import dashboard_widget
from nbcluster.state.snapshot import snapshot
cluster = LocalCluster(n_workers=2, processes=False)
s = cluster.scheduler
if not hasattr(type(s), "_request_snapshot"):   # until the scheduler answers it itself
    s._request_snapshot = lambda peer, rid, since=0, transfers_since=0: \\
        snapshot(s.state, since, transfers_since)
client = Client(cluster)
dashboard_widget(client)""",
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nbformat.write(nb, root / "dash.ipynb")
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path), JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"))
    log = open(tmp_path / "lab.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
         "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("jupyter lab did not start:\n" +
                                (tmp_path / "lab.log").read_text()[-3000:])
                time.sleep(0.1)   # a server that is starting: nothing to wait on but its port
        yield base, token, tmp_path
    finally:
        try:
            req = urllib.request.Request(f"{base}/api/shutdown?token={token}", method="POST")
            urllib.request.urlopen(req, timeout=5).read()
        except OSError:
            pass
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        log.close()


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
