"""Seceded tasks in the pure state machines (issue 17): the scheduler counts a seceded task
against none of its worker's threads, and again once it rejoins; the worker hands its thread
to the next task; setups are sent to each joining worker before its tasks, and hold tasks on
the worker until they are done. Every step is validated (nbcluster.testing.validate)."""

from __future__ import annotations

import pytest

from nbcluster.protocol import messages as m
from nbcluster.state import secession
from nbcluster.state.instructions import Execute, Send
from nbcluster.state.worker_state import WorkerState
from nbcluster.testing import validate

from test_scheduler_state import Sim, spec

pytestmark = pytest.mark.timeout(10)


def seceded(sim, addr, key, rejoined=False):
    return sim.worker(addr, m.Seceded(key, sim.run_of(key), rejoined))


def computes(out, addr=None):
    return [msg.key for peer, msg in out if type(msg) is m.Compute and addr in (None, peer)]


def test_a_seceded_task_frees_its_workers_thread_and_counts_again_when_it_rejoins():
    sim = Sim(("A",))
    sim.s.avg_duration = 1.0      # long tasks: a window of one task per thread, plus one
    sim.submit(spec("parent"))
    sim.started("A", "parent")
    ws = sim.s.workers["A"]
    parent = sim.s.tasks["parent"]
    sim.submit(*[spec(f"child{i}") for i in range(4)])
    before = len(ws.processing)
    assert before == sim.s._window(ws)         # full: the parent holds the thread
    out = seceded(sim, "A", "parent")
    assert parent not in ws.processing and parent in ws.seceded
    assert sim.where("parent") == "A" and sim.state("parent") == "processing"
    assert len(computes(out, "A")) == 1        # its slot went to the next child
    assert sim.s.occupancy.least_loaded("default") is ws
    seceded(sim, "A", "parent", rejoined=True)
    assert parent in ws.processing and parent not in ws.seceded
    sim.finish("A", "parent")
    assert not ws.seceded and parent not in ws.processing and sim.state("parent") == "memory"


def test_a_stale_seceded_is_ignored_and_a_seceded_task_is_rescheduled_if_its_worker_dies():
    sim = Sim(("A", "B"))
    sim.submit(spec("t"))
    where = sim.where("t")
    other = "B" if where == "A" else "A"
    sim.worker(other, m.Seceded("t", sim.run_of("t"), False))     # not its worker: ignored
    sim.worker(where, m.Seceded("t", sim.run_of("t") - 1, False))  # an older run: ignored
    assert sim.s.tasks["t"] in sim.s.workers[where].processing
    seceded(sim, where, "t")
    out = sim.remove_worker(where)
    assert computes(out) == ["t"] and sim.where("t") == other
    assert sim.s.tasks["t"].suspicious == 1    # it ran there: a death counts against it


def test_a_retiring_worker_waits_for_its_seceded_tasks():
    sim = Sim(("A", "B"))
    sim.submit(spec("t"))
    where = sim.where("t")
    sim.started(where, "t")
    seceded(sim, where, "t")
    out = sim._step(sim.s.retire_workers([where], "test", sim.now))
    assert not any(type(msg) is m.Close for _, msg in out)
    out = sim.finish(where, "t")     # its result is copied away, then it may go
    assert any(type(msg) is m.Replicate for peer, msg in out)


def test_setups_go_to_a_joining_worker_before_its_tasks_and_to_current_workers():
    sim = Sim(("A",))
    out = secession.register(sim.s, "load", "function", b"blob", 7)
    assert out == [("A", m.Setup(7, "load", "function", b"blob"))]
    secession.register(sim.s, "mod.py", "file", b"x = 1", 8)
    secession.register(sim.s, "load", "function", b"blob2", 9)     # replaces, runs last
    sim.submit(*[spec(f"t{i}") for i in range(20)])
    out = sim.add_worker("B")
    setups = [(msg.name, msg.blob) for peer, msg in out if type(msg) is m.Setup]
    assert setups == [("mod.py", b"x = 1"), ("load", b"blob2")]
    kinds = [type(msg) for peer, msg in out if peer == "B"]
    assert kinds.index(m.Compute) > kinds.index(m.Setup) == 0


# ---------------------------------------------------------------------- the worker
def step(w, out):
    validate(w)
    return out


def compute(w, key):
    return step(w, w.compute(m.Compute(key, "fn", [1], None, {}, True, 0, None, 1)))


def test_a_worker_hands_a_seceded_tasks_thread_to_the_next_task():
    w = WorkerState("tcp://me:1", 1)
    w.avg_duration = 1.0          # long tasks: nothing handed to the executor ahead of time
    w._observe_duration(1.0)
    assert [i.key for i in compute(w, "parent") if type(i) is Execute] == ["parent"]
    assert not [i for i in compute(w, "child") if type(i) is Execute]
    out = step(w, w.task_seceded("parent"))
    assert Send(m.Seceded("parent", 1, False)) in out
    assert [i.key for i in out if type(i) is Execute] == ["child"]
    assert w.executing == {"child"} and w.seceded == {"parent"}
    assert step(w, w.task_seceded("parent")) == []       # once
    out = step(w, w.task_rejoined("parent"))
    assert out == [Send(m.Seceded("parent", 1, True))]
    assert w.executing == {"child", "parent"} and not w.seceded
    compute(w, "next")          # two tasks hold the one thread: nothing more starts
    step(w, w.task_finished("child", 8, 0.0, 1.0, False, None, "int"))
    assert w.tasks["next"].state == "ready"
    out = step(w, w.task_finished("parent", 8, 0.0, 2.0, False, None, "int"))
    assert [i.key for i in out if type(i) is Execute] == ["next"]


def test_a_seceded_task_that_ends_leaves_the_seceded_set():
    w = WorkerState("tcp://me:1", 1)
    compute(w, "t")
    step(w, w.task_seceded("t"))
    step(w, w.task_failed("t", None, "boom", 0.0, 1.0))
    assert not w.seceded and not w.executing
    compute(w, "u")
    step(w, w.task_seceded("u"))
    step(w, w.reset())
    assert not w.seceded


def test_no_task_starts_on_a_worker_while_a_setup_runs():
    w = WorkerState("tcp://me:1", 2)
    step(w, w.setup_started())
    assert not [i for i in compute(w, "t") if type(i) is Execute]
    out = step(w, w.setup_done())
    assert [i.key for i in out if type(i) is Execute] == ["t"]
