"""End to end in a real browser: JupyterLab on 127.0.0.1 with a token, headless Debian chromium
driven by playwright, a notebook run from the UI, the progress bar seen reaching 100%, errors
shown in red, and task output shown in the submitting cell after that cell ended."""

from __future__ import annotations

import os
import re
import shutil

import pytest
from labserver import CHROMIUM, chromium, running_lab

# start-up (up to 2 min on a loaded machine) and a dozen waits of up to 60 s each
pytestmark = pytest.mark.timeout(360)

CELLS = [
    "%load_ext nbcluster\n%cluster start -n 2 --threads 1",
    "import time\nimport nbcluster\n\n"
    "def slow_square(x):\n    time.sleep(0.05)\n    print('squared', x)\n    return x * x\n\n"
    "futures = client.map(slow_square, range(40))\nnbcluster.progress(futures)",
    "def fails(x):\n    raise ValueError(f'bad {x}')\n\nbad = client.map(fails, range(3))\n"
    "nbcluster.progress(bad)",
    "time.sleep(1.5)   # the bars above keep moving while this cell blocks",
]


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
    with running_lab(tmp_path, "demo.ipynb", CELLS) as (base, token):
        yield base, token, tmp_path


def test_progress_bar_reaches_100_in_jupyterlab(lab):
    from playwright.sync_api import expect

    base, token, tmp_path = lab
    with chromium(tmp_path / "chromium-profile", viewport={"width": 1280, "height": 1600}) as page:
        page.goto(f"{base}/lab/tree/demo.ipynb?token={token}")
        expect(page.get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible()
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()

        # the first bar (40 tasks of slow_square) fills to 100% and turns green
        bars = page.locator(".nbcluster-progress .progress-bar")
        expect(bars.first).to_have_class(re.compile("progress-bar-success"))
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
