"""nbcluster.testing: the invariants catch what they should and name it, the fake clock drives
timers, the polling helper and the plugin's check of captured output."""

from __future__ import annotations

import threading

import msgspec
import pytest

from nbcluster.protocol import messages as m
from nbcluster.state.invariants import (SAMPLE_TASKS, Sampled, check_scheduler_messages,
                                        shell_check, unchecked)
from nbcluster.state.scheduler_state import SchedulerState
from nbcluster.state.worker_state import WorkerState
from nbcluster.testing import FakeClock, InvariantError, validate, wait_until
from test_scheduler_state import BLOBS, C, FN, Sim, spec


# ---------------------------------------------------------------------- scheduler invariants
def _running_and_done():
    """x in memory on A, y running on A and needing x, w waiting for y, z queued behind y
    on A, q queued on the scheduler."""
    sim = Sim(("A",))
    sim.s.avg_duration = 10.0                   # a window of one queued task per thread
    sim.submit(spec("x"))
    sim.finish("A", "x")
    sim.submit(spec("y", deps=["x"]), spec("w", deps=["y"]), spec("z"), spec("q"))
    return sim


def _drop_from_queue(s):
    for heap in s.queues.values():
        heap[:] = [entry for entry in heap if entry[2].key != "q"]


SCHEDULER_BREAKS = {
    "byte count": (lambda s: setattr(s.workers["A"], "nbytes", 1), None),
    "processing task is on a connected worker": (
        lambda s: s.workers["A"].processing.discard(s.tasks["y"]), "y"),
    "only a task in memory has replicas": (lambda s: setattr(s.tasks["x"], "state", "erred"), "x"),
    "waits on exactly its inputs": (lambda s: setattr(s.tasks["w"], "waiting_on", set()), "w"),
    "frozen set is its member's own": (
        lambda s: setattr(s.tasks["w"], "waiting_on", frozenset((s.tasks["y"],))), "w"),
    "kept only while a client wants it": (lambda s: setattr(s.tasks["z"], "who_wants", ()), "z"),
    "only connected clients": (lambda s: s.clients.discard(C), "x"),
    "queued task is in its queue": (_drop_from_queue, "q"),
    "inputs list their dependents": (lambda s: s.tasks["x"].dependents.clear(), "y"),
    "function of a known task is kept": (lambda s: s.functions.pop(FN), "x"),
    "use count is the number of known tasks naming it": (
        lambda s: s.fn_refs.uses.__setitem__(FN, 99), None),
    "kept only while a known task names it or a connected client holds it": (
        lambda s: (s.functions.__setitem__("orphan", b""), None)[1], None),
    "workers a function was sent to are listed": (lambda s: s.fn_refs.workers.clear(), None),
    "told of dropped functions within the step": (
        lambda s: s.fn_refs.dropped.__setitem__("A", ["gone"]), None),
}


@pytest.mark.parametrize("rule", list(SCHEDULER_BREAKS))
def test_a_broken_scheduler_rule_is_named_with_its_task(rule):
    sim = _running_and_done()
    assert sim.state("q") == "queued" and sim.state("y") == "processing"
    assert sim.state("w") == "waiting"
    validate(sim.s)
    breaks, key = SCHEDULER_BREAKS[rule]
    breaks(sim.s)
    with pytest.raises(InvariantError, match=rule) as info:
        validate(sim.s)
    assert isinstance(info.value, AssertionError)
    assert rule in info.value.rule and info.value.key == key
    if key is not None:
        assert repr(key) in str(info.value)


def test_messages_are_checked_for_peers_order_and_holders():
    s = SchedulerState()
    s.add_client(C)
    s.add_worker("A", 1, "A", {}, 0.0)
    out = s.handle(C, [m.Function(FN, BLOBS[FN]), m.Submit([spec("x")])], 1.0)
    check_scheduler_messages(s, out)                          # trusts the state for the past
    sent: dict = {}
    check_scheduler_messages(s, out, sent)
    assert sent == {"A": {FN}}
    compute = next(msg for _, msg in out if type(msg) is m.Compute)
    with pytest.raises(InvariantError, match="function before a task"):
        check_scheduler_messages(s, [("A", compute)], {})
    with pytest.raises(InvariantError, match="connected peers"):
        check_scheduler_messages(s, [("B", m.Free(["x"], [0]))], sent)
    bad = msgspec.structs.replace(compute, deps={"dep": []})
    with pytest.raises(InvariantError, match="has a holder"):
        check_scheduler_messages(s, [("A", bad)], sent)
    with pytest.raises(InvariantError, match="well formed"):
        check_scheduler_messages(s, [("A", m.Free("x", [0]))], sent)   # keys not a list
    with pytest.raises(InvariantError, match="told to forget only functions"):
        check_scheduler_messages(s, [("A", m.ForgetFunctions([FN]))], sent)   # x runs it


# ---------------------------------------------------------------------- worker invariants
def _worker():
    """a in memory, b waiting for c (a is here), c fetched from a peer, d running."""
    w = WorkerState("tcp://me:1", 1)
    w.compute(m.Compute("a", "fn", [1], None, {}, True, 0, None, 0))
    w.task_finished("a", 8, 0.0, 0.1, False, None, "int")
    w.compute(m.Compute("b", "fn", [1], None, {"a": ["tcp://me:1"], "c": ["tcp://peer:1"]}, True, 0, None, 0))
    w.compute(m.Compute("d", "fn", [1], None, {}, True, 0, None, 0))
    return w


def _unneeded_copy(ts):
    ts.fetched = True             # a copy from a peer, and no task here needs it any more
    ts.dependents.clear()


WORKER_BREAKS = {
    "executing set": lambda w: w.executing.add("a"),
    "byte count": lambda w: setattr(w, "nbytes", 0),
    "waits only on inputs not here": lambda w: w.tasks["b"].waiting_on.add("a"),
    "kept only while a task here needs it": lambda w: _unneeded_copy(w.tasks["a"]),
    "spilled byte count": lambda w: setattr(w, "spilled", 5),
    "known task is in a live state": lambda w: setattr(w.tasks["a"], "state", "bogus"),
}


@pytest.mark.parametrize("rule", list(WORKER_BREAKS))
def test_a_broken_worker_rule_is_named(rule):
    w = _worker()
    assert w.tasks["d"].state == "executing" and w.tasks["c"].state == "flight"
    validate(w)
    WORKER_BREAKS[rule](w)
    with pytest.raises(InvariantError, match=rule):
        validate(w)


def test_validate_takes_only_state_machines():
    with pytest.raises(TypeError, match="SchedulerState or a WorkerState"):
        validate({})


# ---------------------------------------------------------------------- debug mode in the shells
class _Tasks:
    def __init__(self, n):
        self.tasks = dict.fromkeys(range(n))


def test_shells_check_every_batch_of_a_small_state_and_sample_large_ones():
    assert shell_check(len, False) is unchecked
    calls = []
    check = shell_check(calls.append, True)
    assert isinstance(check, Sampled)
    small, large = _Tasks(SAMPLE_TASKS), _Tasks(3 * SAMPLE_TASKS)
    for _ in range(5):
        check(small)
    assert len(calls) == 5
    for _ in range(9):
        check(large)
    assert len(calls) == 5 + 3                  # one batch in three


# ---------------------------------------------------------------------- the fake clock
def test_fake_clock_moves_only_when_told_and_drives_timers():
    clock = FakeClock(10.0)
    assert clock.now() == clock() == 10.0
    assert clock.advance(2.5) == 12.5
    with pytest.raises(ValueError):
        clock.advance(-1)
    with pytest.raises(ValueError):
        clock.advance_to(3.0)
    s = SchedulerState()
    s.add_client(C)
    s.add_worker("A", 1, "A", {}, clock())
    later = spec("later", options={"not_before": 100.0})
    sooner = spec("sooner", options={"not_before": 50.0})
    s.handle(C, [m.Function(FN, BLOBS[FN]), m.Submit([later, sooner])], clock())
    assert clock.wake(s) and clock() == 50.0             # the first timer, no earlier
    assert s.tasks["sooner"].state == "processing" and s.tasks["later"].state == "delayed"
    assert clock.wake(s) and clock() == 100.0
    assert s.tasks["later"].state in ("processing", "queued")
    assert clock.wake(s) == [] and clock() == 100.0      # nothing due: time stays


# ---------------------------------------------------------------------- polling
def test_wait_until_returns_when_true_and_names_what_it_waited_for():
    calls = []
    wait_until(lambda: calls.append(1) or len(calls) == 3, "three calls", timeout=5)
    assert len(calls) == 3
    done = threading.Event()
    threading.Timer(0.01, done.set).start()
    wait_until(done.is_set, "a timer in another thread", timeout=5)
    with pytest.raises(AssertionError, match="waiting for the impossible"):
        wait_until(lambda: False, "the impossible", timeout=0.02)


# ---------------------------------------------------------------------- the plugin
def _report(outcome, text, when="call"):
    from _pytest.reports import TestReport

    return TestReport("t.py::t", ("t.py", 0, "t"), {}, outcome,
                      None if outcome == "passed" else "boom", when,
                      [(f"Captured stderr {when}", text)])


def _through_plugin(report):
    from nbcluster.testing import fixtures

    hook = fixtures.pytest_runtest_makereport(None, None)
    next(hook)
    with pytest.raises(StopIteration) as stop:
        hook.send(report)
    return stop.value.value


def test_the_plugin_fails_a_test_during_which_an_invariant_broke():
    line = ("nbcluster.state.invariants.InvariantError: invariant broken: a worker's byte count "
            "is the sum of what it holds: tcp://a:1: 8 counted, 0 held")
    report = _through_plugin(_report("passed", f"Traceback ...\n{line}\n"))
    assert report.failed and "a worker's byte count" in report.longrepr
    report = _through_plugin(_report("failed", f"{line}\n"))
    assert report.failed and report.longrepr.endswith("then:\nboom")
    report = _through_plugin(_report("passed", "nothing to see\n"))
    assert report.passed
    assert _through_plugin(_report("passed", f"{line}\n", when="setup")).failed
