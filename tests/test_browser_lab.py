"""End to end in a real browser: JupyterLab on 127.0.0.1 with a token, headless Debian chromium
driven by playwright, a notebook run from the UI, the progress bar seen reaching 100%, errors
shown in red, and task output shown in the submitting cell after that cell ended."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import nbformat
import psutil
import pytest

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.timeout(150)

CELLS = [
    "%load_ext nbcluster\n%cluster start -n 2 --threads 1",
    "import time\nimport nbcluster\n\n"
    "def slow_square(x):\n    time.sleep(0.05)\n    print('squared', x)\n    return x * x\n\n"
    "futures = client.map(slow_square, range(40))\nnbcluster.progress(futures)",
    "def fails(x):\n    raise ValueError(f'bad {x}')\n\nbad = client.map(fails, range(3))\n"
    "nbcluster.progress(bad)",
    "time.sleep(1.5)   # the bars above keep moving while this cell blocks",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _have_browser() -> bool:
    if not os.path.exists(CHROMIUM):
        return False
    try:
        import playwright.sync_api  # noqa: F401
        import jupyterlab  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture
def lab(tmp_path):
    if not _have_browser():
        if os.environ.get("CI"):
            pytest.fail("CI needs chromium (apt), playwright and jupyterlab (pip) for this test")
        pytest.skip("needs /usr/bin/chromium, playwright and jupyterlab")
    root = tmp_path / "root"
    root.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nbformat.write(nb, root / "demo.ipynb")
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    workspaces = tmp_path / "workspaces"
    workspaces.mkdir()
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(workspaces),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
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
                time.sleep(0.1)   # polling a server that is starting: nothing to wait on
        yield base, token, tmp_path
    finally:
        _stop_lab(proc, base, token)
        log.close()


def _stop_lab(proc: subprocess.Popen, base: str, token: str) -> None:
    """Shut the server down (it shuts its kernels down, which stop their clusters)."""
    try:
        req = urllib.request.Request(f"{base}/api/shutdown?token={token}", method="POST")
        urllib.request.urlopen(req, timeout=5).read()
    except OSError:
        pass
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait()


def test_progress_bar_reaches_100_in_jupyterlab(lab):
    from playwright.sync_api import expect, sync_playwright

    base, token, tmp_path = lab
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
            viewport={"width": 1280, "height": 1600})
        try:
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            page.set_default_timeout(60_000)
            page.goto(f"{base}/lab/tree/demo.ipynb?token={token}")
            expect(page.get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible(timeout=60_000)
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()

            # the first bar (40 tasks of slow_square) fills to 100% and turns green
            bars = page.locator(".nbcluster-progress .progress-bar")
            expect(bars.first).to_have_class(re.compile("progress-bar-success"),
                                             timeout=60_000)
            page.wait_for_function(
                "() => { const b = document.querySelector('.nbcluster-progress .progress-bar');"
                " return b && b.style.width === '100%'; }")
            expect(page.locator(".nbcluster-progress-count").first).to_have_text("40 / 40")
            # the failing tasks show a red bar and a red count
            expect(bars.nth(1)).to_have_class(re.compile("progress-bar-danger"))
            expect(page.locator(".nbcluster-progress-count").nth(1)).to_contain_text("3 erred")
            # what the tasks printed on the workers is in the notebook, marked with their keys
            expect(page.locator(".jp-OutputArea-output").filter(
                has_text="squared 39").first).to_be_visible()
            expect(page.get_by_text("[slow_square-", exact=False).first).to_be_visible()
            # the cluster widget shows the workers
            expect(page.locator(".nbcluster-cluster-table").first).to_contain_text("2 workers")
            page.screenshot(path=str(tmp_path / "lab.png"))
            if os.environ.get("NBCLUSTER_KEEP_SCREENSHOT"):
                shutil.copy(tmp_path / "lab.png", os.environ["NBCLUSTER_KEEP_SCREENSHOT"])
        finally:
            ctx.close()
