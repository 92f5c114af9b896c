"""Retiring workers gracefully, in the pure state machines: the scheduler moves queued work,
lets running work finish, copies results only the retiring worker holds, then says CLOSE; the
worker fetches copies it is asked for and keeps them as its own."""

from __future__ import annotations

import pytest

from nbcluster.protocol import messages as m
from nbcluster.state.instructions import Fetch, Send
from nbcluster.state.worker_state import WorkerState
from nbcluster.testing import validate

from test_scheduler_state import Sim, computes, frees, spec


def _replicates(out):
    return {(p, msg.source, k) for p, msg in out if type(msg) is m.Replicate for k in msg.keys}


def _closes(out):
    return [p for p, msg in out if type(msg) is m.Close]


def test_results_only_on_a_retiring_worker_are_copied_then_it_is_closed():
    sim = Sim(workers=("A", "B"))
    sim.submit(spec("x"), spec("y"))
    where = {k: sim.where(k) for k in ("x", "y")}
    for key, w in where.items():
        sim.finish(w, key)
    on_a = [k for k, w in where.items() if w == "A"]
    assert on_a, where
    out = sim._step(sim.s.retire_workers(["A"], "test", sim.now))
    assert _replicates(out) == {("B", "A", k) for k in on_a}
    assert not _closes(out)
    assert sim.s.workers["A"].retiring is not None
    # B reports the copies: A may go
    out = sim.worker("B", m.Replicated(on_a, []))
    assert _closes(out) == ["A"]
    out = sim.remove_worker("A")
    assert not computes(out)                       # nothing is recomputed
    for key in on_a:
        assert sim.state(key) == "memory"
        assert [w.address for w in sim.s.tasks[key].who_has] == ["B"]


def test_queued_work_moves_and_running_work_finishes_before_close():
    sim = Sim(workers=("A", "B"))
    sim.submit(*[spec(f"t{i}") for i in range(6)])
    on_a = [k for k in (f"t{i}" for i in range(6)) if sim.where(k) == "A"]
    running = on_a[0]
    sim.started("A", running)
    out = sim._step(sim.s.retire_workers(["A"], "test", sim.now))
    moved = set(on_a) - {running}
    assert {k for (p, k) in frees(out) if p == "A"} == moved      # unstarted ones dropped
    assert all(sim.where(k) in ("B", None) for k in moved)         # and go to B (or wait)
    assert sim.where(running) == "A"                               # the running one stays
    assert not _closes(out)
    # nothing new goes to A while it retires
    out = sim.submit(spec("late"))
    assert computes(out).get("late") in (None, "B")
    # the running task ends on A: its result is copied to B, then A is closed
    out = sim.finish("A", running)
    assert _replicates(out) == {("B", "A", running)}
    out = sim.worker("B", m.Replicated([running], []))
    assert _closes(out) == ["A"]


def test_a_retiring_worker_with_nobody_to_take_its_results_goes_anyway():
    sim = Sim(workers=("A",))
    sim.submit(spec("x"))
    sim.finish("A", "x")
    out = sim._step(sim.s.retire_workers(["A"], "scaled to zero", sim.now))
    assert _closes(out) == ["A"]
    [close] = [msg for p, msg in out if type(msg) is m.Close]
    assert "scaled to zero" in close.reason
    sim.remove_worker("A")
    assert sim.state("x") in ("released", "waiting", "queued")   # recomputed when a worker comes


def test_a_copy_whose_target_leaves_is_asked_of_another_worker():
    sim = Sim(workers=("A", "B", "C"))
    sim.submit(spec("x"))
    holder = sim.where("x")
    sim.finish(holder, "x")
    out = sim._step(sim.s.retire_workers([holder], "test", sim.now))
    [(target, _, _)] = _replicates(out)
    out = sim.remove_worker(target)
    [(other, source, key)] = _replicates(out)
    assert other not in (target, holder) and source == holder and key == "x"
    out = sim.worker(other, m.Replicated(["x"], []))
    assert _closes(out) == [holder]


def test_a_copy_of_a_released_key_is_freed_and_retiring_workers_take_no_copies():
    sim = Sim(workers=("A", "B", "C"))
    sim.submit(spec("x"), spec("y"))
    for key in ("x", "y"):
        sim.finish(sim.where(key), key)
    holders = {next(iter(sim.s.tasks[k].who_has)).address for k in ("x", "y")}
    out = sim._step(sim.s.retire_workers(sorted(holders), "test", sim.now))
    plan = _replicates(out)
    assert plan and not {p for p, _, _ in plan} & holders   # never to a retiring worker
    sim.release("x", "y")
    for target in {p for p, _, _ in plan}:
        keys = [k for p, _, k in plan if p == target]
        out = sim.worker(target, m.Replicated(keys, []))
        assert {k for p, k in frees(out) if p == target} == set(keys)
    assert sorted(_closes(out)) == sorted(holders)


def test_retire_unknown_worker_is_refused_and_a_worker_may_ask_itself():
    sim = Sim(workers=("A", "B"))
    with pytest.raises(KeyError, match="'nope'"):
        sim.s.retire_workers(["nope"], "test", sim.now)
    sim.submit(spec("x"))
    w = sim.where("x")
    sim.finish(w, "x")
    out = sim.worker(w, m.Retire("its lifetime (3600 s) is up"))
    assert _replicates(out)
    info = sim.s.workers[w]
    assert info.retiring is not None and "lifetime" in info.retiring.reason


# ---------------------------------------------------------------------- the worker's side
def _worker():
    ws = WorkerState("tcp://w2", 1)
    return ws


def test_worker_fetches_a_replica_and_keeps_it_as_its_own():
    ws = _worker()
    out = ws.replicate("tcp://w1", ["x", "y"])
    [fetch] = [i for i in out if type(i) is Fetch]
    assert fetch.peer == "tcp://w1" and sorted(fetch.keys) == ["x", "y"]
    out = ws.fetch_done("tcp://w1", {"x": 10}, ["y"])
    replicated = [i.msg for i in out if type(i) is Send and type(i.msg) is m.Replicated]
    assert m.Replicated(["x"], []) in replicated
    assert m.Replicated([], ["y"]) in replicated      # the source did not have it
    assert ws.tasks["x"].state == "memory" and not ws.tasks["x"].fetched
    assert "y" not in ws.tasks
    assert ws.held() == {"x": 10}                    # counted as its own (a rejoin reports it)
    validate(ws)


def test_worker_keeps_a_copy_it_already_fetched_for_a_task():
    ws = _worker()
    ws.compute(m.Compute("t", "fn", [], None, {"x": ["tcp://w1"]}, False, 0.0, None, 1))
    ws.fetch_done("tcp://w1", {"x": 10}, [])
    assert ws.tasks["x"].fetched
    out = ws.replicate("tcp://w1", ["x"])
    assert [i.msg for i in out if type(i) is Send] == [m.Replicated(["x"], [])]
    assert not ws.tasks["x"].fetched
    validate(ws)
