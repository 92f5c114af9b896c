"""``snapshot(state, since)``: pure, plain data, log cursors; and the dashboard's Feed."""

from __future__ import annotations

from collections import deque

import msgspec
import pytest

from nbcluster.dashboard.feed import Feed, RateMeter
from nbcluster.dashboard.metrics import figures, prometheus_text
from nbcluster.protocol import messages as m
from nbcluster.protocol.serialize import dumps
from nbcluster.state.scheduler_state import SchedulerState
from nbcluster.state.snapshot import snapshot

pytestmark = pytest.mark.timeout(10)
C = "client-1"


def msg(kind: type[m.Message], *fields) -> m.Message:
    """A message; fields the protocol added since (options) left as None."""
    return kind(*fields, *[None] * (len(kind.__struct_fields__) - len(fields)))


class Cluster:
    """A SchedulerState with one client and two workers, fed messages by hand."""

    def __init__(self) -> None:
        self.s = SchedulerState()
        self.now = 100.0
        self.s.add_client(C)
        for w, n in (("A", 1), ("B", 2)):
            self.s.add_worker(w, n, f"worker-{w}", {"address": w, "memory_limit": 1000, "pid": 7},
                              self.now)
        self.s.handle(C, [msg(m.Function, "tok", b"fn")], self.now)

    def submit(self, *keys: str) -> None:
        specs = [m.TaskSpec(k, "tok", [1], None, [], None) for k in keys]
        self.s.handle(C, [msg(m.Submit, specs)], self.now)

    def where(self, key: str) -> str:
        return self.s.tasks[key].processing_on.address

    def finish(self, key: str, nbytes: int = 8) -> None:
        self.now += 0.01
        self.s.handle(self.where(key), [msg(m.Finished, key, nbytes, self.now - 0.005, self.now,
                                            False, None, "int", self.s.tasks[key].run_id)],
                      self.now)

    def fail(self, key: str) -> None:
        self.now += 0.01
        self.s.handle(self.where(key), [msg(m.Failed, key, dumps(ValueError("x")), "tb",
                                            self.now - 0.005, self.now, None,
                                            self.s.tasks[key].run_id)], self.now)


def test_snapshot_counts_workers_and_log_as_plain_data():
    c = Cluster()
    c.submit("inc-1", "inc-2", "inc-3", "inc-4", "boom-1")
    c.s.handle("A", [msg(m.Heartbeat, {"rss": 500, "cpu": 12.5, "executing": 1, "ready": 0})],
               c.now)
    c.finish("inc-1", nbytes=100)
    c.finish("inc-2", nbytes=50)
    c.fail("boom-1")
    snap = snapshot(c.s)
    assert snap == msgspec.msgpack.decode(msgspec.msgpack.encode(snap))  # plain data
    assert snap["tasks"] == {"memory": 2, "processing": 2, "erred": 1}
    inc = snap["prefixes"]["inc"]
    assert (inc["done"], inc["memory"], inc["processing"], inc["failed"]) == (2, 2, 2, 0)
    assert snap["prefixes"]["boom"]["failed"] == 1 and snap["prefixes"]["boom"]["erred"] == 1
    assert [e[0] for e in snap["task_log"]] == ["inc-1", "inc-2", "boom-1"]
    assert [e[4] for e in snap["task_log"]] == [True, True, False]
    assert snap["cursor"] == 3
    a = next(w for w in snap["workers"] if w["address"] == "A")
    assert (a["rss"], a["cpu"], a["memory_limit"], a["name"], a["nthreads"]) == \
        (500, 12.5, 1000, "worker-A", 1)
    totals = snap["totals"]
    assert (totals["workers"], totals["threads"], totals["tasks_completed"],
            totals["tasks_failed"], totals["nbytes"], totals["clients"]) == (2, 3, 2, 1, 150, 1)
    assert snap["transfer_log"] == [] and snap["transfer_cursor"] == 0
    assert snap["now"] == c.now


def test_snapshot_log_cursor():
    c = Cluster()
    c.submit(*[f"inc-{i}" for i in range(6)])
    for i in range(3):
        c.finish(f"inc-{i}")
    first = snapshot(c.s)
    assert len(first["task_log"]) == 3
    assert snapshot(c.s, since=first["cursor"])["task_log"] == []
    c.finish("inc-3")
    nxt = snapshot(c.s, since=first["cursor"])
    assert [e[0] for e in nxt["task_log"]] == ["inc-3"] and nxt["cursor"] == 4
    assert snapshot(c.s, since=99)["task_log"] == first["task_log"] + nxt["task_log"]  # restart
    assert len(snapshot(c.s, log_limit=2)["task_log"]) == 2
    assert snapshot(c.s, log_limit=0)["task_log"] == []
    assert snapshot(c.s, prefixes=False)["prefixes"] == {}
    # an observer that fell behind the bounded log gets what is left, not more
    c.s.task_log = deque(c.s.task_log, maxlen=2)
    c.finish("inc-4")
    assert [e[0] for e in snapshot(c.s, since=1)["task_log"]] == ["inc-3", "inc-4"]


def test_snapshot_reads_a_transfer_log_when_the_state_has_one():
    c = Cluster()
    c.s.transfer_log = deque([("x-1", "A", "B", 1.0, 1.5, 800), ("y-1", "B", "A", 2.0, 2.1, 8)])
    c.s.transfer_log_total = 2
    snap = snapshot(c.s)
    assert snap["transfer_log"] == [["x-1", "A", "B", 1.0, 1.5, 800],
                                    ["y-1", "B", "A", 2.0, 2.1, 8]]
    assert snap["transfer_cursor"] == 2
    assert snapshot(c.s, transfers_since=1)["transfer_log"] == [["y-1", "B", "A", 2.0, 2.1, 8]]


def test_feed_throttles_keeps_history_and_cursors():
    c = Cluster()
    c.submit(*[f"inc-{i}" for i in range(5)])
    clock = [0.0]
    calls = []

    def fetch(since, tsince):
        calls.append(since)
        return snapshot(c.s, since, tsince)

    feed = Feed(fetch, min_interval=0.5, history=3, clock=lambda: clock[0])
    assert feed.refresh() and feed.tasks_total == 0
    c.finish("inc-0")
    assert not feed.refresh()             # too soon
    clock[0] = 1.0
    assert feed.refresh() and calls == [0, 0]
    entries, cursor = feed.tasks_since(0)
    assert [e[0] for e in entries] == ["inc-0"] and cursor == 1
    for i in range(1, 5):
        c.finish(f"inc-{i}")
    clock[0] = 2.0
    assert feed.refresh() and calls[-1] == 1
    entries, cursor = feed.tasks_since(cursor)
    assert [e[0] for e in entries] == ["inc-2", "inc-3", "inc-4"]   # history of 3
    assert cursor == 5 and feed.tasks_since(cursor)[0] == []
    assert feed.rate.rate() == pytest.approx(5 / 2.0)


def test_feed_survives_a_failing_source_and_spends_within_budget():
    clock = [0.0]

    def fetch(since, tsince):
        clock[0] += 0.1        # a snapshot that takes 100 ms
        return snapshot(SchedulerState(), since, tsince)

    feed = Feed(fetch, min_interval=0.1, budget=0.05, clock=lambda: clock[0])
    assert feed.refresh()
    clock[0] += 1.0
    assert not feed.refresh()        # 0.1 s / 5 % = 2 s between snapshots
    clock[0] += 1.0
    assert feed.refresh()
    broken = Feed(lambda a, b: 1 / 0, min_interval=0)
    assert not broken.refresh() and "ZeroDivisionError" in broken.error


def test_rate_meter_window():
    r = RateMeter(window=10.0, clock=lambda: 0.0)
    assert r.rate() == 0.0
    for t in range(31):
        r.add(100 * t, now=float(t))
    assert r.rate() == pytest.approx(100.0)
    r.add(5, now=31.0)               # the total went down: another scheduler
    assert r.rate() == 0.0


def test_metrics_text_and_json_agree():
    c = Cluster()
    c.submit("inc-1", "inc-2")
    c.finish("inc-1")
    fig = figures(snapshot(c.s), 12.5)
    assert fig["tasks"]["memory"] == 1 and fig["tasks"]["processing"] == 1
    assert fig["tasks"]["waiting"] == 0 and fig["workers"] == 2
    text = prometheus_text(fig)
    assert 'nbcluster_tasks{state="memory"} 1\n' in text
    assert "nbcluster_tasks_completed_total 1\n" in text
    assert "nbcluster_tasks_per_second 12.5\n" in text
    assert 'nbcluster_worker_memory_bytes{worker="A",kind="limit"} 1000\n' in text
    assert "# TYPE nbcluster_tasks_completed_total counter" in text
