"""The JupyterLab extension in a real JupyterLab and headless chromium: the sidebar lists the
cluster a notebook started, a dashboard plot opens as a panel beside the notebook and draws
live, and Stop in the sidebar ends the cluster; "New cluster" starts one in the Jupyter server,
which the sidebar scales, connects a notebook to, and stops.

Lab loads the committed build (nbcluster/labextension, via ``JUPYTER_PATH``) and the server
extension (via ``JUPYTER_CONFIG_PATH``), and imports this checkout (``PYTHONPATH``), so the
tests do not depend on how nbcluster was installed."""

from __future__ import annotations

import json
import os
import re
import urllib.request
from pathlib import Path

import psutil
import pytest
from labserver import chromium, running_lab
from test_browser_lab import _have_browser

from nbcluster.testing import wait_until

pytestmark = pytest.mark.timeout(120)    # the first test also waits for JupyterLab to start
REPO = Path(__file__).resolve().parent.parent
CELLS = [
    "%load_ext nbcluster\n%cluster start -n 2 --threads 1",
    "import time\n\ndef slow(x):\n    time.sleep(0.1)\n    return x\n\n"
    "futures = client.map(slow, range(600))   # 30 s of work: the plots have data to draw",
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not _have_browser():
        if os.environ.get("CI"):
            pytest.fail("CI needs chromium (apt), playwright and jupyterlab (pip) for this test")
        pytest.skip("needs /usr/bin/chromium, playwright and jupyterlab")
    tmp = tmp_path_factory.mktemp("labext")
    labextensions = tmp / "jupyter-path" / "labextensions"
    labextensions.mkdir(parents=True)
    (labextensions / "nbcluster").symlink_to(REPO / "nbcluster" / "labextension")
    with pytest.MonkeyPatch.context() as env:      # the server's (and its kernels') environment
        env.setenv("NBCLUSTER_RUNTIME_DIR", str(tmp / "nbcluster"))
        env.setenv("JUPYTER_CONFIG_PATH", str(REPO / "extension" / "jupyter-config"))
        env.setenv("JUPYTER_PATH", str(tmp / "jupyter-path"))
        env.setenv("PYTHONPATH", os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
        with running_lab(tmp, "demo.ipynb", CELLS) as (base, token):
            yield base, token, tmp


def _clusters(base, token):
    with urllib.request.urlopen(f"{base}/nbcluster/clusters?token={token}", timeout=15) as r:
        return json.loads(r.read())["clusters"]


def _shut_down_kernels(base, token):
    """End the notebooks' kernels (the server outlives the test; they must not)."""
    for session in json.loads(urllib.request.urlopen(
            f"{base}/api/sessions?token={token}", timeout=15).read()):
        request = urllib.request.Request(f"{base}/api/sessions/{session['id']}?token={token}",
                                         method="DELETE")
        urllib.request.urlopen(request, timeout=30).read()


def _open_sidebar(page):
    from playwright.sync_api import expect

    tab = page.locator('.jp-SideBar li[data-id="nbcluster-sidebar"]')
    expect(tab).to_be_visible()
    if not page.locator(".nbcluster-sidebar").is_visible():    # a workspace may restore it
        tab.click()
    expect(page.locator(".nbcluster-sidebar")).to_be_visible()


def test_sidebar_lists_a_notebooks_cluster_opens_a_live_plot_and_stops_it(lab):
    from playwright.sync_api import expect

    base, token, tmp = lab
    with chromium(tmp / "profile-1", viewport={"width": 1600, "height": 1000}) as page:
        page.goto(f"{base}/lab/tree/demo.ipynb?token={token}")
        expect(page.get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible()
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        _open_sidebar(page)
        card = page.locator(".nbcluster-card").filter(has_text="2 workers")
        expect(card).to_have_count(1)
        expect(card).to_have_attribute("data-owner", "scheduler")   # the notebook's processes
        expect(card.locator(".nbcluster-card-tasks")).to_contain_text(
            re.compile(r"[1-9]\d* running"))
        [cluster] = _clusters(base, token)

        # a plot as a panel beside the notebook, through the Jupyter server's proxy
        card.locator('.nbcluster-plot-button[data-page="task-stream"]').click()
        frame_el = page.locator(".nbcluster-plot-panel iframe")
        expect(frame_el).to_have_attribute(
            "src", re.compile(rf"/nbcluster/dashboard/{cluster['dashboard_port']}/task-stream$"))
        expect(page.frame_locator(".nbcluster-plot-panel iframe").locator("canvas").first
               ).to_be_visible()
        notebook = page.locator(".jp-NotebookPanel").first
        expect(notebook).to_be_visible()                       # docked side by side
        assert frame_el.bounding_box()["x"] > notebook.bounding_box()["x"] + 100
        first = frame_el.screenshot()
        # live: the stream draws the tasks as they finish
        wait_until(lambda: frame_el.screenshot() != first, "the plot to change", timeout=30,
                   interval=0.5)
        if os.environ.get("NBCLUSTER_KEEP_SCREENSHOT"):
            page.screenshot(path=os.environ["NBCLUSTER_KEEP_SCREENSHOT"])

        # Stop, confirmed in a dialog: the scheduler process ends, the card goes
        card.locator(".nbcluster-stop").click()
        page.locator(".jp-Dialog").get_by_role("button", name="Stop").click()
        expect(page.locator(".nbcluster-card")).to_have_count(0)
        if psutil.pid_exists(cluster["pid"]):
            psutil.Process(cluster["pid"]).wait(10)
        assert _clusters(base, token) == []
    _shut_down_kernels(base, token)


def test_new_cluster_from_the_sidebar_scales_connects_and_stops(lab):
    from playwright.sync_api import expect

    base, token, tmp = lab
    with chromium(tmp / "profile-2", viewport={"width": 1600, "height": 1000}) as page:
        page.goto(f"{base}/lab/workspaces/second/tree/demo.ipynb?token={token}")
        expect(page.locator(".jp-NotebookPanel").first).to_be_visible()
        _open_sidebar(page)
        page.locator(".nbcluster-new-workers").fill("1")
        page.locator(".nbcluster-new-cluster").click()
        card = page.locator('.nbcluster-card[data-owner="server"]')
        expect(card.locator(".nbcluster-card-figures")).to_contain_text("1 worker ")
        card.locator(".nbcluster-scale-input").fill("2")
        card.locator(".nbcluster-scale").click()
        expect(card.locator(".nbcluster-card-figures")).to_contain_text("2 workers")
        [cluster] = _clusters(base, token)
        # Connect puts the line in the notebook, below the active cell
        card.locator(".nbcluster-connect").click()
        expect(page.locator(".jp-Cell").filter(
            has_text=f"%cluster connect {cluster['scheduler']}")).to_have_count(1)
        card.locator(".nbcluster-stop").click()
        page.locator(".jp-Dialog").get_by_role("button", name="Stop").click()
        expect(page.locator(".nbcluster-card")).to_have_count(0)
        if psutil.pid_exists(cluster["pid"]):
            psutil.Process(cluster["pid"]).wait(10)
    _shut_down_kernels(base, token)
