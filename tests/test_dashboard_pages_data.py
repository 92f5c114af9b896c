"""What the new dashboard pages read: the snapshot's extras (task control, graph) and the
per-function fields, and the components of those pages fed by hand (no browser)."""

from __future__ import annotations

import pytest

from nbcluster.dashboard.feed import Feed
from nbcluster.state.snapshot import snapshot
from test_scheduler_state import Sim, spec

pytestmark = pytest.mark.timeout(30)


def test_snapshot_extras_are_only_there_when_asked_for_and_checked():
    sim = Sim(workers=("A",))
    plain = snapshot(sim.s)
    assert "control" not in plain and "graph" not in plain
    with pytest.raises(ValueError, match="unknown \\['grpah'\\].*'control', 'graph'"):
        snapshot(sim.s, extras=("grpah",))


def test_snapshot_task_control_lists_queues_limits_and_delayed_tasks():
    sim = Sim(workers=("A",), nthreads=4)
    sim.submit(spec("later-1", options={"not_before": sim.now + 50}),
               spec("later-2", options={"not_before": sim.now + 5}),
               spec("gpu-1", options={"queue": "gpu"}),
               *[spec(f"db-{i}", options={"limit_key": "db", "concurrency": 1})
                 for i in range(3)])
    control = snapshot(sim.s, extras=("control",))["control"]
    assert control["queues"]["gpu"]["queued"] == 1 and control["queues"]["gpu"]["workers"] == []
    assert control["queues"]["default"]["delayed"] == 2
    assert control["queues"]["default"]["workers"] == ["A"]
    db = control["limits"]["db"]
    assert db["concurrency"] == 1 and db["running"] == 1 and db["waiting"] == 2
    assert [k for k, _, _ in control["delayed"]] == ["later-2", "later-1"]   # soonest first
    assert control["delayed"][0][1] == pytest.approx(sim.now + 5, abs=0.01)
    assert control["delayed_total"] == 2


def test_snapshot_graph_has_depths_edges_and_a_cap():
    sim = Sim(workers=())
    sim.submit(spec("a-1"), spec("a-2"), spec("b-1", deps=["a-1", "a-2"]),
               spec("c-1", deps=["b-1"]), spec("c-2", deps=["a-1"]))
    g = snapshot(sim.s, extras=("graph",))["graph"]
    assert g["keys"] == ["a-1", "a-2", "b-1", "c-1", "c-2"]
    assert g["depth"] == [0, 0, 1, 2, 1]
    assert sorted(map(tuple, g["edges"])) == [(0, 2), (0, 4), (1, 2), (2, 3)]
    assert g["states"][0] == "queued" and g["total"] == 5
    capped = snapshot(sim.s, extras=("graph",), graph_limit=2)["graph"]
    assert capped["keys"] == ["c-1", "c-2"] and capped["total"] == 5   # the newest
    assert capped["edges"] == [] and capped["depth"] == [0, 0]


def test_snapshot_prefix_rows_carry_bytes_in_memory_and_run_time():
    sim = Sim(workers=("A",))
    sim.submit(spec("f-1"), spec("f-2"))
    for key in ("f-1", "f-2"):
        sim.finish(sim.where(key), key)
    row = snapshot(sim.s)["prefixes"]["f"]
    assert row["memory"] == 2 and row["nbytes"] == sum(sim.s.tasks[k].nbytes
                                                       for k in ("f-1", "f-2"))
    assert row["duration"] is not None and row["done"] == 2


class _Source:
    """A fetch for a Feed: returns the snapshot the test sets, with the extras it was asked."""

    def __init__(self, sim):
        self.sim = sim
        self.asked: list = []
        self.feed = Feed(self.fetch, min_interval=0, budget=0)

    def fetch(self, since, tsince):
        self.asked.append(self.feed.extras)
        return snapshot(self.sim.s, since, tsince, extras=self.feed.extras)


def test_pages_ask_for_extras_only_while_open_and_show_them():
    from nbcluster.dashboard.graph import TaskGraph
    from nbcluster.dashboard.panels import Header, TaskControl, TaskGroups

    sim = Sim(workers=("A",))
    sim.submit(spec("x-1"), spec("y-1", deps=["x-1"]),
               spec("later-1", options={"not_before": sim.now + 60}))
    src = _Source(sim)
    graph, control = TaskGraph(src.feed), TaskControl(src.feed, clock=lambda: sim.now)
    header, groups = Header(src.feed), TaskGroups(src.feed)
    for comp in (graph, control, header, groups):
        comp.update()
    assert src.asked[-1] == {"graph", "control"}
    nodes = graph.nodes.data
    assert nodes["key"] == ["x-1", "y-1", "later-1"] and nodes["x"] == [0.0, 1.0, 0.0]
    assert nodes["state"] == ["processing", "waiting", "delayed"]
    assert graph.note.text == "3 tasks"
    d = control.delayed.source.data
    assert d["key"] == ["later-1"] and d["in"] == ["60.00 s"]
    assert header.figures["workers"] == "1" and header.figures["running"] == "1"
    assert header.figures["waiting"] == "2"
    # a state changes: the graph patches its colours, the same tasks stay in place
    sim.finish(sim.where("x-1"), "x-1")
    src.feed.refresh()
    graph.update()
    assert graph.nodes.data["state"][:2] == ["memory", "processing"]
    header.update()
    groups.update()
    assert header.figures["done"] == "1"
    t = groups.table.source.data
    assert "x" in t["name"] and t["done"][t["name"].index("x")] == 1
    graph.close()
    control.close()
    src.feed.refresh(force=True)
    assert src.asked[-1] == frozenset()
