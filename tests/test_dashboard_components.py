"""Dashboard components on an in-process cluster: run tasks, call ``update()``, read sources."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque

import pytest

from nbcluster import Client, LocalCluster
from nbcluster.dashboard.components import (
    _axis_ms,
    ERROR_COLOR,
    MemoryByWorker,
    ProgressByFunction,
    TaskStream,
    ScheduleTable,
    WorkerTable,
    color_of,
)
from nbcluster.dashboard.feed import scheduler_feed
from nbcluster.testing import wait_until

pytestmark = pytest.mark.timeout(30)
GATE = threading.Event()


def inc(x):
    return x + 1


def boom(x):
    raise ValueError(x)


def gated(x):
    GATE.wait(10)
    return x


def nap(x):
    time.sleep(0.1)   # a task that lasts long enough to be drawn
    return x


def on_loop(cluster, fn, *args):
    """Run ``fn`` on the scheduler's loop, as the dashboard server does, and return its value."""
    async def call():
        return fn(*args)
    return asyncio.run_coroutine_threadsafe(call(), cluster._thread.loop).result(10)


def make(cluster, cls, **kwargs):
    feed = on_loop(cluster, lambda: scheduler_feed(cluster.scheduler, min_interval=0, budget=0))
    return on_loop(cluster, lambda: cls(feed, **kwargs))


def test_task_stream_one_rect_per_task_coloured_by_function(cluster, client):
    client.gather(client.map(inc, range(20)))
    with pytest.raises(ValueError):
        client.submit(boom, 1).result()
    ts = make(cluster, TaskStream)
    on_loop(cluster, ts.update)
    data = ts.source.data
    assert len(data["key"]) == 21
    names = [key.rsplit("-", 1)[0] for key in data["key"]]
    assert sorted(names) == ["boom"] + ["inc"] * 20
    for name, color in zip(names, data["color"]):
        assert color == (color_of("inc") if name == "inc" else ERROR_COLOR)
    assert all(r >= left for left, r in zip(data["left"], data["right"]))
    assert set(data["worker"]) <= set(cluster.workers)
    for left, right, ms in zip(data["left"], data["right"], data["duration"]):
        assert ms == pytest.approx(right - left, abs=1e-3)    # hover: "@duration ms"
    # one row per worker thread, labelled with the worker's name
    assert {round(b + 0.4, 6) for b in data["bottom"]} <= {0.0, 1.0}
    labels = ts.figure.yaxis.major_label_overrides.values()
    assert any("worker-0" in str(label) for label in labels)
    hover = next(t for t in ts.figure.tools if type(t).__name__ == "HoverTool")
    assert [name for name, _ in hover.tooltips] == ["key", "worker", "start", "duration",
                                                    "transfer"]
    assert all(t == "none" or " in " in t for t in data["transfer"])
    assert all(s.count(":") == 2 for s in data["start"])
    # the next update adds only what is new
    client.gather(client.map(inc, range(100, 105)))
    on_loop(cluster, ts.update)
    assert len(ts.source.data["key"]) == 26


def test_task_stream_keeps_a_bounded_window(cluster, client):
    capped = make(cluster, TaskStream, max_new=5)
    client.gather(client.map(inc, range(200, 230)))
    on_loop(cluster, capped.update)
    assert len(capped.source.data["key"]) == 5      # the newest 5 of 30 new ones
    ts = make(cluster, TaskStream, window=10, binary=True)
    client.gather(client.map(inc, range(30)))
    on_loop(cluster, ts.update)
    assert len(ts.source.data["key"]) == 10
    assert type(ts.source.data["left"]).__name__ == "ndarray"   # sent as binary buffers
    client.gather(client.map(inc, range(30, 60)))
    on_loop(cluster, ts.update)
    assert len(ts.source.data["key"]) == 10
    assert all(int(k.rsplit("-", 1)[1], 16) >= 0 for k in ts.source.data["key"])
    newest = max(ts.source.data["right"])
    assert newest == _axis_ms(max(e[3] for e in cluster.scheduler.state.task_log))


def test_task_stream_puts_concurrent_tasks_on_separate_threads():
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False) as cluster, \
            Client(cluster) as client:
        client.gather([client.submit(nap, i) for i in range(2)])
        ts = make(cluster, TaskStream)
        on_loop(cluster, ts.update)
        rows = sorted(b + 0.4 for b in ts.source.data["bottom"])
        assert rows == pytest.approx([0.0, 1.0])


def test_task_stream_draws_transfers_when_the_scheduler_logs_them(cluster, client):
    ts = make(cluster, TaskStream)
    on_loop(cluster, ts.update)            # today's scheduler: no transfer log, no marks
    assert ts.transfer_source.data["key"] == []
    a, b = cluster.workers
    now = time.time()

    def add_log():
        st = cluster.scheduler.state
        st.transfer_log = deque([("x-1", a, b, now, now + 0.5, 2_000_000)], maxlen=10_000)
        st.transfer_log_total = 1
    on_loop(cluster, add_log)
    on_loop(cluster, ts.update)
    t = ts.transfer_source.data
    assert t["key"] == ["x-1"] and t["source"] == [a] and t["target"] == [b]
    assert t["nbytes"] == ["2.0 MB"] and t["duration"] == ["500.0 ms"]
    assert t["left"] == [_axis_ms(now)] and t["right"] == [_axis_ms(now + 0.5)]


def test_task_stream_axis_reads_as_local_time(monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Kolkata")      # +05:30, no daylight saving
    time.tzset()
    try:
        t = 1_700_000_000.0                       # 2023-11-14 22:13:20 UTC
        assert _axis_ms(t) == (t + 5.5 * 3600) * 1000
    finally:
        monkeypatch.undo()
        time.tzset()


def test_memory_progress_and_worker_table(cluster, client):
    GATE.clear()
    try:
        held = client.scatter(list(range(1000)))
        running = client.map(gated, range(3))
        waiting = client.submit(sum, running)
        wait_until(lambda: sum(len(w.processing) for w in cluster.scheduler.state.workers.values())
                   == 3, "three tasks on the workers")
        feed = on_loop(cluster, lambda: scheduler_feed(cluster.scheduler, min_interval=0, budget=0))
        mem, prog, table = (on_loop(cluster, lambda c=c: c(feed))
                            for c in (MemoryByWorker, ProgressByFunction, WorkerTable))
        for comp in (mem, prog, table):
            on_loop(cluster, comp.update)
        state = cluster.scheduler.state
        m = mem.source.data
        assert sorted(m["address"]) == sorted(cluster.workers)
        for address, nbytes, limit in zip(m["address"], m["nbytes"], m["limit"]):
            assert nbytes == state.workers[address].nbytes
            assert limit == cluster.memory_limit
        assert sum(m["nbytes"]) > 1000                      # the scattered list
        assert list(mem.figure.y_range.factors) == m["worker"]
        p = prog.source.data
        row = p["name"].index("gated")
        assert (p["done"][row], p["running"][row], p["waiting"][row], p["erred"][row]) == \
            (0, 3, 0, 0)
        srow = p["name"].index("sum")
        assert p["waiting"][srow] == 1
        assert p["running_right"][row] == pytest.approx(1.0)
        t = table.source.data
        assert sorted(t["address"]) == sorted(cluster.workers)
        assert t["threads"] == [1, 1] and sum(t["running"]) == 3
        assert t["status"] == ["running", "running"]
        assert all(s.endswith("s ago") for s in t["last_seen"])
        GATE.set()
        assert waiting.result(10) == 3
        on_loop(cluster, prog.update)
        p = prog.source.data
        row = p["name"].index("gated")
        assert (p["done"][row], p["running"][row], p["label"][row]) == (3, 0, "3 / 3")
        del held
    finally:
        GATE.set()


class _StaticFeed:
    """A feed that always shows the same snapshot."""

    def __init__(self, data):
        self.data = data

    def refresh(self):
        pass


def test_memory_plot_and_worker_table_show_spilled_results_apart():
    worker = {"address": "tcp://w:1", "name": "w", "nthreads": 1, "processing": 0,
              "executing": 0, "ready": 0, "nbytes": 300_000_000, "spilled": 200_000_000,
              "keys": 4, "rss": 150_000_000, "cpu": 1.0, "memory_limit": 400_000_000,
              "pid": 1, "last_seen": 0.0, "status": "running"}
    feed = _StaticFeed({"workers": [worker]})
    memory = MemoryByWorker(feed)
    memory.update()
    d = memory.source.data
    # stacked: results in memory, the rest of the process (150 MB RSS - 100 MB), on disk
    assert d["nbytes"] == [100_000_000] and d["memory_end"] == [100_000_000]
    assert d["process_end"] == [150_000_000] and d["disk_end"] == [350_000_000]
    assert d["process_text"] == ["50.0 MB"]
    assert d["label"] == ["150.0 MB / 400.0 MB + 200.0 MB on disk"]
    assert d["limit_mark"] == [400_000_000]            # near: the axis shows the limit
    assert memory.figure.x_range.end >= 400_000_000
    assert d["spilled_text"] == ["200.0 MB"] and d["nbytes_text"] == ["100.0 MB"]
    table = WorkerTable(feed, clock=lambda: 1.0)
    table.update()
    assert table.source.data["spilled"] == ["200.0 MB"]
    assert table.source.data["results"] == ["100.0 MB"]


def test_memory_bars_of_a_small_cluster_on_a_big_machine_are_visible():
    """2 MB of results and 60 MB of process under a 16 GB limit: the axis follows the bars,
    not the limit, and a tiny part still gets a visible width."""
    def worker(i, nbytes, rss):
        return {"address": f"tcp://w:{i}", "name": f"w{i}", "nthreads": 1, "processing": 0,
                "executing": 0, "ready": 0, "nbytes": nbytes, "spilled": 0, "keys": 1,
                "rss": rss, "cpu": 0.0, "memory_limit": 16_000_000_000, "pid": 1,
                "last_seen": 0.0, "status": "running"}
    feed = _StaticFeed({"workers": [worker(1, 2_000_000, 60_000_000), worker(2, 1, 50_000_000)]})
    memory = MemoryByWorker(feed)
    memory.update()
    end = memory.figure.x_range.end
    assert 60_000_000 < end < 200_000_000
    d = memory.source.data
    assert all(x != x for x in d["limit_mark"])        # the far limit: no mark (NaN), in text
    assert d["label"][0] == "60.0 MB / 16.0 GB"
    assert d["memory_end"][1] >= end * MemoryByWorker.MIN_FRACTION     # 1 byte, still seen


def test_the_schedule_table_shows_periodic_tasks_and_hides_when_there_are_none():
    feed = _StaticFeed({"schedules": {}})
    table = ScheduleTable(feed)
    table.update()
    assert not table.root.visible
    feed.data = {"schedules": {"report": {"rule": "cron 0 6 * * *", "next": 86400.0 + 6 * 3600,
                                          "last": "memory", "skipped": 2}}}
    table.update()
    d = table.source.data
    assert table.root.visible and d["name"] == ["report"] and d["rule"] == ["cron 0 6 * * *"]
    assert d["next"] == ["1970-01-02 06:00:00"] and d["last"] == ["memory"] and d["skipped"] == [2]


def test_the_scheduler_snapshot_lists_schedules(cluster, client):
    client.schedule(inc, 1, cron="0 0 1 1 *", name="new-year")
    feed = on_loop(cluster, lambda: scheduler_feed(cluster.scheduler, min_interval=0, budget=0))
    on_loop(cluster, feed.refresh)
    assert feed.data["schedules"]["new-year"]["rule"] == "cron 0 0 1 1 *"
    client.unschedule("new-year")


def test_the_worker_table_says_why_a_worker_stays_paused():
    worker = {"address": "tcp://w:1", "name": "w", "nthreads": 1, "processing": 0,
              "executing": 0, "ready": 0, "nbytes": 0, "spilled": 0, "keys": 0, "rss": 1,
              "cpu": 0.0, "memory_limit": 1, "pid": 1, "last_seen": 0.0, "status": "paused",
              "memory_note": "nothing left to spill: 250 MB held by the process"}
    table = WorkerTable(_StaticFeed({"workers": [worker]}), clock=lambda: 1.0)
    table.update()
    assert table.source.data["status"] == [
        "paused: nothing left to spill: 250 MB held by the process"]
