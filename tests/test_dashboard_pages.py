"""Every dashboard page in a real browser (headless Debian chromium), one browser and one
in-process cluster for the whole module: tables redraw their rows when their data changes,
and each page loads and shows live data."""

from __future__ import annotations

import json
import os
import threading
import urllib.request

import pytest

from nbcluster import Client, LocalCluster

sync_api = pytest.importorskip("playwright.sync_api")
from labserver import CHROMIUM, WAIT_MS, chromium  # noqa: E402
from playwright.sync_api import expect  # noqa: E402

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian chromium")]
GATE = threading.Event()


def gated(x):
    GATE.wait(20)
    return x


def inc(x):
    return x + 1


# the text of every rendered row of the table whose source is named ``name`` (slick-grid rows,
# inside shadow roots)
ROWS = """(name) => {
  const out = [];
  const walk = (root) => { for (const el of root.querySelectorAll('*')) {
      if (el.classList && el.classList.contains('slick-row'))
        out.push(el.innerText.replace(/\\s+/g, ' ').trim());
      if (el.shadowRoot) walk(el.shadowRoot); } };
  walk(document);
  return out;
}"""
SOURCE = "(name) => { const d = window.Bokeh && Bokeh.documents[0]; " \
         "const s = d && d.get_model_by_name(name); return s ? JSON.stringify(s.data) : null }"
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    runtime = tmp_path_factory.mktemp("runtime")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NBCLUSTER_RUNTIME_DIR", str(runtime))
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=False) as cluster, \
                Client(cluster) as client, \
                chromium(tmp_path_factory.mktemp("profile"),
                         viewport={"width": 1280, "height": 1000}) as page:
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            yield cluster, client, page, errors
            assert not errors, errors


def url(cluster, page_name: str) -> str:
    return cluster._dashboard.address + "/" + page_name


def test_the_workers_table_redraws_its_rows_when_the_data_changes(setup):
    cluster, client, page, _ = setup
    page.goto(url(cluster, "workers"))
    page.wait_for_function(f"({ROWS})('workers').length == 2", timeout=WAIT_MS)
    before = page.evaluate(ROWS, "workers")
    GATE.clear()
    try:
        futures = client.map(gated, range(2))     # one running task on each worker
        # the data reaches the browser (the source), and the rows drawn change with it
        page.wait_for_function(f"JSON.parse(({SOURCE})('workers')).running.join() == '1,1'",
                               timeout=WAIT_MS)
        page.wait_for_function(f"({ROWS})('workers').join('|') != {json.dumps('|'.join(before))}",
                               timeout=WAIT_MS)
        rows = page.evaluate(ROWS, "workers")
        assert all(" 1 " in f" {r} " for r in rows), rows
    finally:
        GATE.set()
    client.gather(futures)


def completed(cluster) -> int:
    return sum(n for name, n in list(cluster.scheduler.state.counts.items())
               if not name.endswith(" erred"))


def data_of(page, name: str):
    raw = page.evaluate(SOURCE, name)
    return json.loads(raw) if raw else None


def wait_data(page, name: str, check: str) -> None:
    """Wait until ``check`` (JavaScript, on ``d``: the source's data) holds in the browser."""
    page.wait_for_function(f"(() => {{ const raw = ({SOURCE})({json.dumps(name)}); "
                           f"if (!raw) return false; const d = JSON.parse(raw); "
                           f"return {check}; }})()", timeout=WAIT_MS)


def test_pages_are_listed_as_json(setup):
    cluster, *_ = setup
    with urllib.request.urlopen(url(cluster, "pages"), timeout=10) as r:
        pages = json.load(r)["pages"]
    names = [p["name"] for p in pages]
    assert {"status", "workers", "system", "groups", "graph", "control", "task-stream",
            "memory", "progress"} <= set(names)
    assert all(not p["path"].startswith("/") for p in pages)     # relative: proxy-safe
    assert {p["kind"] for p in pages} == {"page", "plot"}


def test_every_page_loads_and_shows_live_data(setup):
    cluster, client, page, _ = setup
    n = 0

    def more(count=5):
        nonlocal n
        client.gather(client.map(inc, range(n, n + count)))
        n += count

    with urllib.request.urlopen(url(cluster, "pages.json"), timeout=10) as r:
        pages = json.load(r)["pages"]
    for entry in pages:
        name = entry["name"]
        page.goto(url(cluster, entry["path"]))
        assert page.title() == f"nbcluster: {entry['title']}"
        if entry["kind"] == "page":
            # the navigation bar marks this page; the header's totals follow the cluster
            expect(page.locator(".nbc-current")).to_have_text(entry["title"])
            done = page.locator('.nbc-total[data-name="done"]')
            expect(page.locator('.nbc-total[data-name="workers"]')).to_have_text("2")
            expect(done).to_have_text(str(completed(cluster)))
            more()
            expect(done).to_have_text(str(completed(cluster)))
        if name in ("status", "task-stream"):
            more()
            wait_data(page, "task_stream", "d.key.length > 0")
        if name in ("status", "memory", "workers"):
            wait_data(page, "memory", "d.worker.length == 2")
        if name in ("status", "progress"):
            wait_data(page, "progress", "d.name.includes('inc')")
        if name == "system":
            wait_data(page, "system", "d.time.length > 0")
            first = len(data_of(page, "system")["time"])
            wait_data(page, "system", f"d.time.length > {first}")      # grows while open
        if name == "groups":
            before = cluster.scheduler.state.counts.get("inc", 0)
            wait_data(page, "groups", f"d.done[d.name.indexOf('inc')] == {before}")
            more()
            wait_data(page, "groups", f"d.done[d.name.indexOf('inc')] == {before + 5}")
        if name == "graph":
            GATE.clear()
            try:
                held = client.submit(gated, "graph")
                wait_data(page, "graph_nodes",
                          f"d.state[d.key.indexOf({json.dumps(held.key)})] == 'processing'")
            finally:
                GATE.set()
            held.result(10)
            wait_data(page, "graph_nodes",
                      f"d.state[d.key.indexOf({json.dumps(held.key)})] == 'memory'")
            del held
        if name == "control":
            wait_data(page, "queues", "d.name.includes('default')")
            later = client.submit(inc, 1, countdown=600)
            wait_data(page, "delayed", f"d.key.includes({json.dumps(later.key)})")
            client.cancel([later])
            wait_data(page, "delayed", f"!d.key.includes({json.dumps(later.key)})")
