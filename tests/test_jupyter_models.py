"""Widget models and HTML as plain Python: no kernel, no ipywidgets."""

from __future__ import annotations

import threading
import time

import pytest

from nbcluster.jupyter.html import StatusReport, futures_html, snapshot_html
from nbcluster.jupyter.models import (ClusterSnapshot, ProgressModel, Throttle, flatten_futures,
                                      format_bytes, key_name)

INFO = {
    "address": "tcp://127.0.0.1:8786",
    "workers": {
        "tcp://127.0.0.1:1001": {"name": "worker-1", "nthreads": 2, "processing": 1, "memory": 2000,
                                 "keys": 3, "identity": {"memory_limit": 4_000_000_000},
                                 "metrics": {"rss": 50_000_000, "cpu": 12.0, "nbytes": 2000}},
        "tcp://127.0.0.1:1000": {"name": "worker-0", "nthreads": 1, "processing": 0, "memory": 0,
                                 "keys": 0, "metrics": {"rss": 40_000_000, "cpu": 0.0}},
    },
    "tasks": {"memory": 3, "processing": 1},
    "done_by_prefix": {"inc": 3},
}


def test_key_name_is_the_function_name():
    assert key_name("slow_square-1a2b3c") == "slow_square"
    assert key_name("my-func-abc") == "my-func"
    assert key_name("plain") == "plain"


def test_throttle_calls_at_once_then_delivers_the_last_request_later():
    calls: list[float] = []
    second = threading.Event()

    def fn():
        calls.append(time.monotonic())
        if len(calls) == 2:
            second.set()

    th = Throttle(fn, 0.05)
    th.request()                 # at once
    th.request()                 # inside the interval: a timer delivers it
    th.request()                 # coalesced with the previous one
    assert len(calls) == 1
    assert second.wait(2)
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.04
    th.request()                 # right after a call: a timer is pending
    th.flush()                   # flush calls now and drops that timer
    th.cancel()
    assert len(calls) == 3


def test_progress_model_counts_by_function_and_status(client):
    def ok(x, gate):
        return x

    def bad(x, gate):
        raise ValueError(x)

    gate = client.submit(time.sleep, 0.2)     # holds the tasks back while we subscribe
    futs = client.map(ok, range(5), [gate] * 5) + client.map(bad, range(2), [gate] * 2)
    model = ProgressModel({"a": futs[:3], "b": (futs[3:], futs[0])}, rate=1000)
    seen = []
    model.subscribe(lambda m: seen.append(m.done))
    assert model.total == 7
    assert [g.name for g in model.snapshot()] == ["ok", "bad"]
    assert model.wait(10)
    groups = {g.name: g for g in model.snapshot()}
    assert (groups["ok"].finished, groups["ok"].erred) == (5, 0)
    assert (groups["bad"].erred, groups["bad"].complete) == (2, True)
    assert model.erred == 2 and len(model.errors) == 2
    assert seen[-1] == 7                       # the final state always reaches listeners
    model.close()


def test_progress_model_of_nothing_is_finished():
    model = ProgressModel([])
    assert model.total == 0 and model.finished.is_set() and model.snapshot() == []


def test_cluster_snapshot_from_scheduler_info():
    snap = ClusterSnapshot.from_info(INFO, dashboard_link="http://127.0.0.1:8787/status",
                                     kind="processes")
    assert [w.name for w in snap.workers] == ["worker-0", "worker-1"]
    assert snap.nthreads == 3 and snap.rss == 90_000_000 and snap.memory == 2000
    text = snap.text()
    assert "Workers: 2, threads: 3" in text and "memory: 90.0 MB" in text
    assert "memory: 3" in text and "processing: 1" in text
    assert "http://127.0.0.1:8787/status" in text
    html = snapshot_html(snap)
    assert "<b>2</b> workers" in html and "4.0 GB" in html and "href='http://127.0.0.1:8787" in html
    assert "not available" in snapshot_html(ClusterSnapshot.from_info(INFO))
    assert "stopped" in snapshot_html(ClusterSnapshot(closed=True))
    report = StatusReport(snap)
    assert repr(report) == text and report._repr_html_() == html


def test_paused_workers_and_spilled_results_are_marked():
    info = {"address": "tcp://s:1", "workers": {
        "a": {"name": "w-a", "nthreads": 1, "status": "paused", "memory": 3_000_000,
              "metrics": {"spilled": 2_000_000}},
        "b": {"name": "w-b", "nthreads": 1}}}
    snap = ClusterSnapshot.from_info(info)
    assert [w.status for w in snap.workers] == ["paused", "running"]
    assert "w-a <span" in snapshot_html(snap) and "(paused)" in snapshot_html(snap)
    assert snap.text().count("(paused)") == 1
    assert "3.0 MB (2.0 MB on disk)" in snapshot_html(snap) and "on disk 2.0 MB" in snap.text()
    info["workers"]["a"]["memory_note"] = "nothing left to spill"   # %cluster status says why
    assert "(paused: nothing left to spill)" in ClusterSnapshot.from_info(info).text()


def test_html_escapes_names():
    info = {"address": "<x>", "workers": {"a": {"name": "<script>", "nthreads": 1}}}
    html = snapshot_html(ClusterSnapshot.from_info(info))
    assert "<script>" not in html and "&lt;script&gt;" in html


@pytest.mark.parametrize("n, text", [(0, "0 B"), (512, "512 B"), (1500, "1.5 kB"),
                                     (2_500_000_000, "2.5 GB")])
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def test_futures_html_and_flatten(client):
    futs = client.map(lambda x: x, range(12))
    client.gather(futs)
    assert flatten_futures([futs, {"k": futs[0]}]) == futs
    html = futures_html(futs)
    assert "12 futures" in html and "finished: 12" in html and "and 2 more" in html
    assert "lambda" in html
