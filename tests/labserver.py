"""A JupyterLab server on 127.0.0.1 for browser tests, with one notebook in its root, and
headless chromium whose every wait allows ``WAIT_MS`` (never Playwright's 5 s default: this
2-core machine is shared, and a page can take many seconds to draw under load)."""

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import urllib.request

import nbformat
import psutil
import pytest

from nbcluster.testing import wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
WAIT_MS = 60_000      # any one browser wait: loading a page, a click, an expect, a condition
START_S = 120         # JupyterLab's start-up on a loaded machine


@contextlib.contextmanager
def chromium(profile, extra_args=(), **context_options):
    """The first page of a fresh headless chromium profile, every timeout set to ``WAIT_MS``
    (``extra_args``: more command-line switches)."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS + list(extra_args),
            timeout=WAIT_MS, **context_options)
        try:
            ctx.set_default_timeout(WAIT_MS)
            ctx.set_default_navigation_timeout(WAIT_MS)
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            page.set_default_timeout(WAIT_MS)
            page.set_default_navigation_timeout(WAIT_MS)
            yield page
        finally:
            ctx.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_lab(tmp_path, notebook: str, cells: list[str]):
    """Yield (base URL, token) of a JupyterLab serving ``notebook`` made of ``cells``."""
    root = tmp_path / "root"
    root.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nbformat.write(nb, root / notebook)
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    # no news pop-up over the page
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    workspaces = tmp_path / "workspaces"
    workspaces.mkdir()
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(workspaces),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    log_path = tmp_path / "lab.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
         "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5).read()
            return True
        except OSError:
            return False

    try:
        # a server that is starting sends no event: poll its port (or its death)
        try:
            wait_until(lambda: proc.poll() is not None or up(), "jupyter lab to start",
                       timeout=START_S, interval=0.1)
        except AssertionError:
            pass
        if proc.poll() is not None or not up():
            pytest.fail("jupyter lab did not start:\n" + log_path.read_text()[-3000:])
        yield base, token
    finally:
        _stop(proc, base, token)
        log.close()


def _stop(proc: subprocess.Popen, base: str, token: str) -> None:
    """Shut the server down (it shuts its kernels down, which stop their clusters)."""
    try:
        req = urllib.request.Request(f"{base}/api/shutdown?token={token}", method="POST")
        urllib.request.urlopen(req, timeout=30).read()
    except OSError:
        pass
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait()
