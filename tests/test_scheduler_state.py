"""SchedulerState fed plain messages: no sockets, no threads, no sleeps; time is data.

Each step goes through :class:`Sim`, which also checks the state's invariants and the shape of
everything it sends (``nbcluster.testing.validate``, rules in ``nbcluster.state.invariants``), so
every test is also a test that no transition leaves dangling references, leaked data or messages
to peers that do not exist.
"""

from __future__ import annotations

import msgspec
import pytest

from nbcluster.errors import (CancelledError, FutureLostError, KilledWorkerError, ProtocolError)
from nbcluster.protocol import messages as m
from nbcluster.protocol.framing import decode
from nbcluster.protocol.serialize import Serialized, dumps, loads
from nbcluster.state.scheduler_state import KILLED_WORKER_LIMIT, SchedulerState
from nbcluster.testing import FakeClock, validate

FN, FN2 = "inc-tok", "double-tok"
BLOBS = {FN: b"<pickled inc>", FN2: b"<pickled double>"}
C, C2 = "client-1", "client-2"


def spec(key, deps=(), options=None, fn=FN, args=None, kwargs=None):
    return m.TaskSpec(key, fn, [1] if args is None else args, kwargs, list(deps), options)


class Sim:
    """A SchedulerState, one client, workers, a fake clock; every step validates the state and
    what it sent (``nbcluster.testing.validate``)."""

    def __init__(self, workers=("A", "B"), nthreads=1, clients=(C,)):
        self.s = SchedulerState()
        self.clock = FakeClock(100.0)
        self.functions: dict[str, set] = {}     # what each worker was sent, across steps
        for c in clients:
            self.s.add_client(c)
        for w in workers:
            self.add_worker(w, nthreads)
        for c in clients:
            self.client(*[m.Function(t, b) for t, b in BLOBS.items()], peer=c)

    @property
    def now(self) -> float:
        return self.clock.now()

    @now.setter
    def now(self, when: float) -> None:
        self.clock.advance_to(when)

    def _step(self, out):
        self.clock.advance(0.001)
        validate(self.s, out, self.functions)
        return out

    def wake(self):
        """Time moves to the state's next timer or rate limit, which fires."""
        return self._step(self.clock.wake(self.s))

    def client(self, *msgs, peer=C):
        return self._step(self.s.handle(peer, list(msgs), self.now))

    def worker(self, addr, *msgs):
        return self._step(self.s.handle(addr, list(msgs), self.now))

    def add_worker(self, addr, nthreads=1):
        return self._step(self.s.add_worker(addr, nthreads, addr, {"address": addr}, self.now))

    def remove_worker(self, addr):
        self.functions.pop(addr, None)
        return self._step(self.s.remove_worker(addr, self.now))

    def submit(self, *specs, peer=C):
        return self.client(m.Submit(list(specs)), peer=peer)

    def release(self, *keys, peer=C):
        return self.client(m.Release(list(keys)), peer=peer)

    def run_of(self, key, run=None):
        """The run id a worker echoes: that of the task's latest assignment unless given."""
        if run is not None:
            return run
        ts = self.s.tasks.get(key)
        return ts.run_id if ts is not None else 0

    def finish(self, addr, key, nbytes=8, value=None, has_value=None, duration=0.0005,
               run=None):
        if has_value is None:
            has_value = value is not None
        t = self.now
        return self.worker(addr, m.Finished(key, nbytes, t, t + duration, has_value,
                                  value, "int", self.run_of(key, run)))

    def fail(self, addr, key, exc=None, tb="Traceback: boom", run=None):
        exc = exc if exc is not None else dumps(ValueError("boom"))
        return self.worker(addr, m.Failed(key, exc, tb, self.now, self.now + 0.001, None,
                                  self.run_of(key, run)))

    def started(self, addr, key, run=None):
        return self.worker(addr, m.Started(key, self.now, self.run_of(key, run)))

    def state(self, key):
        ts = self.s.tasks.get(key)
        return ts.state if ts is not None else "forgotten"

    def where(self, key):
        ts = self.s.tasks[key]
        return ts.processing_on.address if ts.processing_on else None


def sent(out, peer=None, op=None):
    return [msg for p, msg in out if (peer is None or p == peer) and (op is None or type(msg) is op)]


def computes(out):
    """{key: worker} of the COMPUTE messages in ``out``."""
    return {msg.key: p for p, msg in out if type(msg) is m.Compute}


def compute_order(out, peer=None):
    return [msg.key for msg in sent(out, peer, m.Compute)]


def compute_msg(out, key):
    [msg] = [msg for msg in sent(out, op=m.Compute) if msg.key == key]
    return msg


def frees(out):
    return {(p, k) for p, msg in out if type(msg) is m.Free for k in msg.keys}


def to_client(out, op, peer=C):
    return {msg.key: msg for msg in sent(out, peer, op)}


# ---------------------------------------------------------------------- submitting
def test_independent_tasks_spread_over_workers_within_window():
    sim = Sim(("A", "B"))
    out = sim.submit(*[spec(f"t{i}") for i in range(20)])
    placed = computes(out)
    window = sim.s._window(sim.s.workers["A"])
    assert window == 6   # 1 thread * (1 + 5 ms of 1 ms tasks)
    assert len(placed) == 2 * window
    assert sorted(placed.values()).count("A") == window
    assert sorted(placed.values()).count("B") == window
    assert compute_order(out, "A") == [f"t{i}" for i in range(0, 12, 2)]   # FIFO, alternating
    assert compute_msg(out, "t0") == m.Compute("t0", FN, [1], None, {}, True, 0, None, 1)
    assert sum(sim.state(f"t{i}") == "queued" for i in range(20)) == 8
    # a completion frees a slot on that worker, which takes the next task in order
    out = sim.finish("A", "t0")
    assert computes(out) == {"t12": "A"}
    assert len(sent(out, C, m.Done)) == 1


def test_window_scales_with_threads_and_shrinks_for_slow_tasks():
    sim = Sim(("A",), nthreads=2)
    out = sim.submit(*[spec(f"t{i}") for i in range(40)])
    assert len(computes(out)) == 12
    # slow tasks: the average duration grows, so fewer tasks are queued per thread
    order = compute_order(out)
    for key in order[:11]:
        out = sim.finish("A", key, duration=1.0)
        assert not computes(out) or len(sim.s.workers["A"].processing) <= 4
    assert len(sim.s.workers["A"].processing) == sim.s._window(sim.s.workers["A"]) == 4


def test_function_sent_once_per_worker_per_token():
    sim = Sim(("A", "B"))
    out = sim.submit(*[spec(f"a{i}") for i in range(4)])
    for w in ("A", "B"):
        msgs = sent(out, w)
        assert msgs[0] == m.Function(FN, BLOBS[FN])          # before the first compute
        assert len(sent(out, w, m.Function)) == 1
    out = sim.submit(spec("a9"), spec("b0", fn=FN2), spec("b1", fn=FN2))
    assert sorted(msg.token for msg in sent(out, op=m.Function)) == [FN2, FN2]
    assert {p for p, msg in out if type(msg) is m.Function} == {"A", "B"}
    out = sim.submit(spec("b2", fn=FN2))
    assert not sent(out, op=m.Function)
    # a worker that joins later gets the function with its first task of it
    out = sim.add_worker("C")
    out = sim.submit(spec("b3", fn=FN2))
    assert computes(out) == {"b3": "C"}
    assert sent(out, "C") == [m.Function(FN2, BLOBS[FN2]), compute_msg(out, "b3")]


def test_dependencies_wait_then_run_where_most_input_bytes_are():
    sim = Sim(("A", "B", "C"))
    out = sim.submit(spec("x"), spec("y"))
    assert computes(out) == {"x": "A", "y": "B"}
    out = sim.submit(spec("z", deps=["x", "y"]))
    assert not computes(out) and sim.state("z") == "waiting"
    out = sim.finish("A", "x", nbytes=10)
    assert not computes(out) and sim.state("z") == "waiting"
    out = sim.finish("B", "y", nbytes=10_000)
    assert computes(out) == {"z": "B"}
    msg = compute_msg(out, "z")
    assert msg.deps == {"x": ["A"], "y": ["B"]}
    # inputs already in memory at submission: runs at once, next to its input
    out = sim.submit(spec("w", deps=["x"]))
    assert computes(out) == {"w": "A"}
    assert compute_msg(out, "w").deps == {"x": ["A"]}


def test_dependent_goes_elsewhere_when_holder_is_much_busier():
    sim = Sim(("A", "B"))
    sim.submit(spec("x", options={"workers": ["A"]}))
    sim.finish("A", "x", nbytes=10)
    sim.submit(*[spec(f"p{i}", options={"workers": ["A"]}) for i in range(6)])
    out = sim.submit(spec("y", deps=["x"]))
    assert computes(out) == {"y": "B"}          # small input, A has 6 queued, B none
    assert compute_msg(out, "y").deps == {"x": ["A"]}


def test_small_result_carried_inline_to_client():
    sim = Sim(("A",), clients=(C, C2))
    sim.submit(spec("x"), spec("big"))
    sim.submit(spec("x"), peer=C2)
    out = sim.finish("A", "x", nbytes=28, value=42)
    assert to_client(out, m.Done, C) == {"x": m.Done("x", True, 42, 28, [])}
    assert to_client(out, m.Done, C2) == {"x": m.Done("x", True, 42, 28, [])}
    ser = dumps(list(range(5)))
    out = sim.finish("A", "big", nbytes=10**7)
    assert to_client(out, m.Done) == {"big": m.Done("big", False, None, 10**7, ["A"])}
    # wanting a finished key later: DONE without the value (the client fetches it)
    out = sim.submit(spec("big"), peer=C2)
    assert sent(out) == [m.Done("big", False, None, 10**7, ["A"])]
    assert sent(out, C2) == sent(out)
    assert ser.nbytes > 0


def test_want_known_and_unknown_keys():
    sim = Sim(("A",), clients=(C, C2))
    sim.submit(spec("x"))
    sim.finish("A", "x")
    out = sim.client(m.Want(["x", "nope"]), peer=C2)
    assert sent(out, C2) == [m.Done("x", False, None, 8, ["A"]),
                             m.Cancelled("nope", "the scheduler does not know this key")]
    sim.release("x")
    assert sim.state("x") == "memory"          # C2 holds it now
    out = sim.release("x", peer=C2)
    assert frees(out) == {("A", "x")} and sim.state("x") == "forgotten"


# ---------------------------------------------------------------------- failure
def test_failure_errs_client_and_dependents_with_the_same_exception():
    sim = Sim(("A", "B"))
    sim.submit(spec("x"), spec("w"))
    sim.submit(spec("y", deps=["x", "w"]), spec("z", deps=["y"]))
    sim.release("w")                            # only y needs w now
    sim.finish("B", "w", nbytes=100)
    exc = dumps(ZeroDivisionError("division by zero"))
    out = sim.fail("A", "x", exc, "Traceback (most recent call last): ...")
    erred = to_client(out, m.Erred)
    assert set(erred) == {"x", "y", "z"}
    for key, msg in erred.items():
        assert msg.exception is exc and msg.traceback == "Traceback (most recent call last): ..."
        assert msg.blame == "x"
    assert isinstance(loads(exc), ZeroDivisionError)
    assert {sim.state(k) for k in "xyz"} == {"erred"}
    # w is no longer needed by anyone: its data is freed, its lineage forgotten with y
    assert ("B", "w") in frees(out)
    # a task submitted later on an erred key errs at once, with the same exception
    out = sim.submit(spec("v", deps=["z"]))
    assert to_client(out, m.Erred)["v"].exception is exc and not computes(out)
    out = sim.release("x", "y", "z", "v")
    assert not sim.s.tasks


def test_failure_report_from_wrong_worker_is_ignored():
    sim = Sim(("A", "B"))
    sim.submit(spec("x"))
    out = sim.fail("B", "x")
    assert out == [] and sim.state("x") == "processing"
    out = sim.fail("ghost", "x")
    assert out == [] and sim.state("x") == "processing"


# ---------------------------------------------------------------------- release
def test_release_frees_data_on_workers_and_forgets():
    sim = Sim(("A",))
    sim.submit(spec("x"))
    sim.finish("A", "x", nbytes=50)
    assert sim.s.workers["A"].nbytes == 50
    out = sim.release("x")
    assert out == [("A", m.Free(["x"], [sim.s.runs]))]
    assert not sim.s.tasks and sim.s.workers["A"].nbytes == 0
    out = sim.release("x")                      # twice: nothing
    assert out == []


def test_release_keeps_lineage_needed_by_dependents():
    sim = Sim(("A",))
    sim.submit(spec("x"))
    sim.submit(spec("y", deps=["x"]))
    out = sim.release("x")
    assert out == [] and sim.state("x") == "processing"
    out = sim.finish("A", "x")
    assert computes(out) == {"y": "A"} and sim.state("x") == "memory"
    out = sim.finish("A", "y")
    assert frees(out) == {("A", "x")}           # data freed once y has it ...
    assert sim.state("x") == "released"         # ... lineage kept to recompute y
    out = sim.release("y")
    assert frees(out) == {("A", "y")} and not sim.s.tasks


def test_releasing_an_input_frees_it_once_no_dependent_is_pending():
    sim = Sim(("A",))
    sim.submit(spec("x"), spec("y", deps=["x"]), spec("z", deps=["y"]))
    sim.finish("A", "x")
    sim.finish("A", "y")
    sim.finish("A", "z")
    assert sim.state("y") == "memory"           # the client holds x, y, z
    out = sim.release("y")
    assert frees(out) == {("A", "y")} and sim.state("y") == "released"
    out = sim.release("x")                      # y does not need x: y itself is done
    assert frees(out) == {("A", "x")} and sim.state("x") == "released"
    out = sim.release("z")
    assert frees(out) == {("A", "z")} and not sim.s.tasks


def test_release_of_pending_task_cancels_it_on_its_worker():
    sim = Sim(("A",))
    sim.submit(spec("x"), spec("y", deps=["x"]))
    out = sim.release("x", "y")
    assert frees(out) == {("A", "x")} and not sim.s.tasks
    out = sim.finish("A", "x", value=1)        # the worker finished before it got FREE
    assert out == [("A", m.Free(["x"], [sim.s.runs]))]
    assert not sim.s.tasks


def test_release_of_queued_task_never_runs_it():
    sim = Sim(("A",))
    sim.submit(*[spec(f"t{i}") for i in range(8)])
    assert sim.state("t7") == "queued"
    sim.release("t6", "t7")
    for i in range(6):
        out = sim.finish("A", f"t{i}")
        assert "t6" not in computes(out) and "t7" not in computes(out)
    assert sim.s.workers["A"].processing == set()


def test_remove_client_forgets_its_tasks():
    sim = Sim(("A",), clients=(C, C2))
    sim.submit(spec("x"), spec("y"), spec("z", deps=["x"]))
    sim.submit(spec("y"), peer=C2)
    sim.finish("A", "x")
    out = sim.s.remove_client(C, sim.now)
    assert frees(out) == {("A", "x"), ("A", "z")}     # z was running
    assert set(sim.s.tasks) == {"y"}
    validate(sim.s)


# ---------------------------------------------------------------------- cancel, fire and forget
def test_cancel_pending_task_and_its_dependents():
    sim = Sim(("A",))
    sim.submit(spec("x"), spec("y", deps=["x"]), spec("done"))
    sim.finish("A", "done")
    out = sim.client(m.Cancel(["x", "done", "unknown"]))
    cancelled = to_client(out, m.Cancelled)
    assert set(cancelled) == {"x", "y"}
    assert frees(out) == {("A", "x")}
    assert sim.state("done") == "memory"        # finished tasks are not cancelled
    assert isinstance(loads(sim.s.tasks["y"].exception), CancelledError)
    out = sim.finish("A", "x")                  # late result of the cancelled task
    assert out == [("A", m.Free(["x"], [sim.s.runs]))] and sim.state("x") == "erred"
    out = sim.submit(spec("w", deps=["y"]))   # depending on a cancelled task
    assert set(to_client(out, m.Erred)) == {"w"}
    sim.release("x", "y", "w", "done")
    assert not sim.s.tasks


def test_fire_and_forget_runs_to_completion_then_forgets():
    sim = Sim(("A",))
    sim.submit(spec("x"))
    sim.client(m.FireAndForget(["x"]))
    out = sim.release("x")
    assert out == [] and sim.state("x") == "processing"
    out = sim.finish("A", "x", value=3)
    assert not sent(out, C)                     # the client let go of it
    assert frees(out) == {("A", "x")} and not sim.s.tasks


def test_fire_and_forget_keeps_inputs_until_done():
    sim = Sim(("A",))
    sim.submit(spec("x"), spec("y", deps=["x"]))
    sim.client(m.FireAndForget(["y"]))
    sim.release("x", "y")
    out = sim.finish("A", "x")
    assert computes(out) == {"y": "A"}
    out = sim.finish("A", "y")
    assert frees(out) == {("A", "x"), ("A", "y")}
    assert not sim.s.tasks


def test_fire_and_forget_task_that_errs_is_forgotten():
    sim = Sim(("A",))
    sim.submit(spec("x"), spec("y", deps=["x"]))
    sim.client(m.FireAndForget(["y"]))
    sim.release("y")
    out = sim.fail("A", "x")
    assert set(to_client(out, m.Erred)) == {"x"}    # y is not the client's any more
    assert sim.state("y") == "forgotten"
    sim.release("x")
    assert not sim.s.tasks


def test_fire_and_forget_task_that_is_cancelled_is_forgotten():
    sim = Sim(("A",))
    sim.submit(spec("x"))
    sim.client(m.FireAndForget(["x"]))
    sim.client(m.Cancel(["x"]))
    out = sim.release("x")
    assert out == [] and not sim.s.tasks


# ---------------------------------------------------------------------- workers leaving
def test_worker_removal_reschedules_its_tasks():
    sim = Sim(("A", "B"))
    out = sim.submit(*[spec(f"t{i}") for i in range(4)])
    on_a = sorted(k for k, w in computes(out).items() if w == "A")
    out = sim.remove_worker("A")
    assert computes(out) == {k: "B" for k in on_a}
    assert not sent(out, op=m.Function)         # B already has it
    assert sim.remove_worker("A") == []         # unknown worker: nothing


def test_result_held_only_by_dead_worker_is_recomputed():
    sim = Sim(("A", "B"))
    out = sim.submit(spec("x"), spec("other"))
    assert computes(out) == {"x": "A", "other": "B"}
    sim.finish("A", "x", nbytes=5, value=1)
    out = sim.remove_worker("A")
    assert computes(out) == {"x": "B"} and not sent(out, C)
    out = sim.finish("B", "x", value=1)
    assert to_client(out, m.Done) == {"x": m.Done("x", True, 1, 8, [])}


def test_chain_recomputed_from_lineage_after_intermediates_were_released():
    sim = Sim(("A", "B"))
    sim.submit(spec("x"))
    sim.finish("A", "x")
    sim.submit(spec("y", deps=["x"]))
    sim.release("x")
    out = sim.finish("A", "y")
    assert frees(out) == {("A", "x")}
    sim.submit(spec("z", deps=["y"]))
    sim.release("y")
    out = sim.finish("A", "z", value=7)
    assert frees(out) == {("A", "y")}
    assert [sim.state(k) for k in "xyz"] == ["released", "released", "memory"]
    out = sim.remove_worker("A")                # z is lost, and so is its lineage's data
    assert computes(out) == {"x": "B"}
    assert [sim.state(k) for k in "xyz"] == ["processing", "waiting", "waiting"]
    out = sim.finish("B", "x")
    assert computes(out) == {"y": "B"} and compute_msg(out, "y").deps == {"x": ["B"]}
    out = sim.finish("B", "y")
    assert computes(out) == {"z": "B"} and frees(out) == {("B", "x")}
    out = sim.finish("B", "z", value=7)
    assert to_client(out, m.Done) == {"z": m.Done("z", True, 7, 8, [])}
    assert frees(out) == {("B", "y")}
    assert [sim.state(k) for k in "xyz"] == ["released", "released", "memory"]


def test_dependent_sent_to_fetch_from_dead_worker_waits_for_recompute():
    sim = Sim(("A", "B"))
    sim.submit(spec("x"))
    sim.finish("A", "x")
    sim.submit(spec("y", deps=["x"], options={"workers": ["B"]}))
    sim.started("B", "y")
    out = sim.remove_worker("A")
    assert ("B", "y") in frees(out)             # B cannot fetch x any more
    assert computes(out) == {"x": "B"}
    assert sim.state("y") == "waiting"
    # B's result for y, sent before it got FREE: B drops it, so it must not count
    out = sim.finish("B", "y", value=5)
    assert not sent(out, C) and sim.state("y") == "waiting"
    assert ("B", "y") in frees(out)
    out = sim.finish("B", "x")
    assert computes(out) == {"y": "B"}
    assert sim.s.tasks["y"].suspicious == 0     # y was not running when a worker died
    out = sim.finish("B", "y", value=5)
    assert to_client(out, m.Done)["y"].value == 5


def test_task_killing_three_workers_fails_with_killed_worker():
    sim = Sim(("W0",))
    sim.submit(spec("x"), spec("y", deps=["x"]))
    for i in range(KILLED_WORKER_LIMIT):
        assert sim.where("x") == f"W{i}"
        sim.started(f"W{i}", "x")
        out = sim.remove_worker(f"W{i}")
        if i < KILLED_WORKER_LIMIT - 1:
            assert not sent(out, C)
            out = sim.add_worker(f"W{i + 1}")
            assert computes(out) == {"x": f"W{i + 1}"}
    erred = to_client(out, m.Erred)
    assert set(erred) == {"x", "y"}
    err = loads(erred["x"].exception)
    assert isinstance(err, KilledWorkerError) and "3 workers" in str(err)
    assert erred["y"].exception is erred["x"].exception
    out = sim.add_worker("W9")
    assert not computes(out)


def test_killed_worker_error_names_what_the_last_worker_said():
    sim = Sim(("W0",))
    sim.submit(spec("x"))
    for i in range(KILLED_WORKER_LIMIT):
        sim.started(f"W{i}", "x")
        sim.worker(f"W{i}", m.Status("terminating", f"process memory {i} MiB is over"))
        out = sim.remove_worker(f"W{i}")
        if i < KILLED_WORKER_LIMIT - 1:
            sim.add_worker(f"W{i + 1}")
    err = loads(to_client(out, m.Erred)["x"].exception)
    assert "The last one said: process memory 2 MiB is over" in str(err)
    assert sim.s.tasks["x"].attempts[-1][-1].endswith("2 MiB is over")   # (worker, start, duration, error)


def test_restart_forgets_every_task_and_tells_clients_and_workers():
    sim = Sim(("A", "B"), clients=(C, "c2"))
    sim.submit(spec("x", options={"workers": ["A"]}))
    sim.finish("A", "x")
    sim.submit(spec("y", deps=["x"], options={"workers": ["B"]}))      # running on B
    sim.submit(*[spec(f"q{i}") for i in range(20)], peer="c2")        # some still queued
    sim.client(m.SetLimit("api", [1, 1.0], None))
    out = sim._step(sim.s.restart("restarted", sim.now))
    assert set(to_client(out, m.Cancelled)) == {"x", "y"}
    assert len(to_client(out, m.Cancelled, peer="c2")) == 20
    assert ("A", "x") in frees(out) and ("B", "y") in frees(out)
    assert sim.s.tasks == {} and all(not h for h in sim.s.queues.values())
    assert all(not w.processing and not w.has_what and w.nbytes == 0
               for w in sim.s.workers.values())
    assert "api" in sim.s.limits                  # settings stay
    out = sim.submit(spec("z"))
    assert computes(out)                          # and work goes on


def test_unfinished_work_uses_each_functions_recent_run_time():
    sim = Sim(("A",))
    sim.submit(spec("slow-1"), spec("fast-1"))
    sim.finish("A", "slow-1", duration=2.0)
    sim.finish("A", "fast-1", duration=0.01)
    sim.submit(*[spec(f"slow-{i}") for i in range(2, 5)], *[spec(f"fast-{i}") for i in range(2, 12)],
               spec("new-1"))
    expected = 3 * 2.0 + 10 * 0.01 + sim.s.avg_duration
    assert sim.s.unfinished_work() == pytest.approx(expected)


def test_a_stale_report_from_an_earlier_run_on_the_same_worker_is_ignored():
    sim = Sim(("A",))
    sim.submit(spec("x"))
    first = sim.s.tasks["x"].run_id
    sim.release("x")                                 # FREE to A ...
    out = sim.submit(spec("x"))                      # ... and given back: a new run
    assert computes(out) == {"x": "A"} and sim.s.tasks["x"].run_id != first
    sim.started("A", "x", run=first)                 # reports of the old run, sent before
    assert not sim.s.tasks["x"].executing            # A heard FREE
    out = sim.finish("A", "x", run=first)
    assert sim.state("x") == "processing" and not sent(out, C)
    out = sim.fail("A", "x", run=first)
    assert sim.state("x") == "processing" and not sent(out, C)
    out = sim.finish("A", "x")                       # the current run counts
    assert sim.state("x") == "memory" and to_client(out, m.Done)


# ---------------------------------------------------------------------- work stealing
def _long_tasks_on_a(n, duration=1.0, **spec_kwargs):
    """A alone, ``n`` tasks of a function known to take ``duration`` s: 2 land on A."""
    sim = Sim(("A",))
    sim.submit(spec("long-0"))
    sim.started("A", "long-0")
    sim.finish("A", "long-0", duration=duration)
    out = sim.submit(*[spec(f"long-{i}", **spec_kwargs) for i in range(1, n + 1)])
    return sim, out


def test_a_new_idle_worker_steals_a_long_task_queued_behind_a_running_one():
    sim, out = _long_tasks_on_a(2)
    assert computes(out) == {"long-1": "A", "long-2": "A"}    # window: 1 running + 1 queued
    sim.started("A", "long-1")
    out = sim.add_worker("B")
    assert computes(out) == {"long-2": "B"} and ("A", "long-2") in frees(out)
    assert sim.where("long-2") == "B"
    out = sim.finish("A", "long-2")         # A finished it before hearing FREE: ignored
    assert ("A", "long-2") in frees(out) and sim.where("long-2") == "B"
    sim.finish("B", "long-2")
    assert sim.state("long-2") == "memory"


def test_short_tasks_and_started_tasks_are_not_stolen():
    sim, out = _long_tasks_on_a(2, duration=0.0005)
    assert not computes(sim.add_worker("B"))   # 0.5 ms of work is not worth a round trip
    sim, out = _long_tasks_on_a(2)
    sim.started("A", "long-1")
    sim.started("A", "long-2")                 # both running (2 threads' worth): leave them
    assert not computes(sim.add_worker("B"))


def test_pinned_tasks_and_tasks_with_big_inputs_stay():
    sim, _ = _long_tasks_on_a(2, options={"workers": ["A"]})
    sim.started("A", "long-1")
    assert not computes(sim.add_worker("B"))
    sim = Sim(("A",))
    sim.submit(spec("big"))
    sim.finish("A", "big", nbytes=2_000_000_000)            # 2 GB: 2 s to move
    sim.submit(spec("use-0", deps=["big"]))
    sim.finish("A", "use-0", duration=1.0)
    sim.submit(*[spec(f"use-{i}", deps=["big"]) for i in (1, 2)])
    sim.started("A", "use-1")
    assert not computes(sim.add_worker("B"))   # 1 s of work against 2 s of transfer


# ---------------------------------------------------------------------- paused workers
def test_paused_worker_gets_no_new_tasks_until_it_resumes():
    sim = Sim(("A", "B"))
    sim.worker("A", m.Status("paused", "memory 85% of the limit"))
    out = sim.submit(*[spec(f"t{i}") for i in range(20)])
    assert set(computes(out).values()) == {"B"}       # up to B's window; the rest wait
    assert sim.s.workers["A"].paused and len(computes(out)) < 20
    out = sim.worker("A", m.Status("running", "memory 40%"))
    assert set(computes(out).values()) == {"A"}, "queued tasks go to the resumed worker"


def test_paused_worker_is_avoided_for_tasks_with_inputs_it_holds():
    sim = Sim(("A", "B"))
    sim.submit(spec("x", options={"workers": ["A"]}))
    sim.finish("A", "x", nbytes=10_000_000)
    sim.worker("A", m.Status("paused", "memory"))
    out = sim.submit(spec("y", deps=["x"]))
    assert computes(out) == {"y": "B"}


def test_task_pinned_to_a_paused_worker_waits_there():
    sim = Sim(("A", "B"))
    sim.worker("A", m.Status("paused", "memory"))
    out = sim.submit(spec("p", options={"workers": ["A"]}))
    assert computes(out) == {"p": "A"}      # the worker starts it once it resumes


def test_all_workers_paused_holds_root_tasks_in_the_scheduler():
    sim = Sim(("A",))
    sim.worker("A", m.Status("paused", "memory"))
    out = sim.submit(spec("t"))
    assert not computes(out) and sim.state("t") == "queued"
    out = sim.worker("A", m.Status("running", ""))
    assert computes(out) == {"t": "A"}


def test_a_worker_that_pauses_hands_its_queued_tasks_to_one_that_runs():
    # issue 13, item 1: tasks queued on a paused worker waited there while another was idle
    sim = Sim(("A", "B"))
    out = sim.submit(*[spec(f"t{i}") for i in range(8)])
    on_a = sorted(k for k, w in computes(out).items() if w == "A")
    sim.started("A", on_a[0])
    for key in sorted(k for k, w in computes(out).items() if w == "B"):
        sim.started("B", key)
        sim.finish("B", key)                            # B drains its own window: idle
    moved = on_a[1:]
    first_run = sim.s.tasks[moved[0]].run_id
    out = sim.worker("A", m.Status("paused", "process memory 85% of the limit"))
    assert computes(out) == {k: "B" for k in moved}, "queued tasks go to the running worker"
    assert frees(out) == {("A", k) for k in moved}      # A drops them unstarted
    assert sim.where(on_a[0]) == "A"                    # the one running there goes on
    assert sim.s.workers["A"].memory_note == "process memory 85% of the limit"
    out = sim.finish("A", moved[0], run=first_run)      # A ran one before it heard FREE: stale
    assert ("A", moved[0]) in frees(out) and sim.where(moved[0]) == "B"
    for key in moved:
        sim.finish("B", key)
    sim.finish("A", on_a[0])
    assert all(sim.state(f"t{i}") == "memory" for i in range(8)), "none lost"


def test_tasks_queued_on_a_paused_worker_stay_when_no_other_runs_and_move_when_one_does():
    sim = Sim(("A", "B"))
    sim.worker("B", m.Status("paused", "memory"))
    out = sim.submit(spec("x"))
    sim.finish("A", "x")
    out = sim.submit(*[spec(f"y{i}", deps=["x"]) for i in range(3)],
                     spec("p", options={"workers": ["A"]}))
    sim.started("A", "y0")
    out = sim.worker("A", m.Status("paused", "memory"))     # both paused: nothing moves
    assert not computes(out) and not frees(out)
    out = sim.worker("B", m.Status("running", ""))          # B resumes: A's queued ones go
    assert computes(out) == {"y1": "B", "y2": "B"}
    assert frees(out) == {("A", "y1"), ("A", "y2")}
    assert sim.where("p") == "A" and sim.where("y0") == "A"  # pinned, and running: stay
    assert sim.s.workers["B"].memory_note == ""


def test_tasks_with_big_inputs_on_the_paused_worker_stay_there():
    sim = Sim(("A", "B"))
    sim.submit(spec("big", options={"workers": ["A"]}))
    sim.finish("A", "big", nbytes=50_000_000)
    out = sim.submit(*[spec(f"u{i}", deps=["big"]) for i in range(3)], spec("root"))
    assert computes(out) == {"u0": "A", "u1": "A", "u2": "A", "root": "B"}
    sim.started("A", "u0")
    out = sim.worker("A", m.Status("paused", "memory"))
    assert not computes(out)     # A would serve 50 MB short of memory: it spills, resumes
    out = sim.worker("A", m.Status("paused", "nothing left to spill"))   # said again: why
    assert not computes(out) and sim.s.workers["A"].memory_note == "nothing left to spill"
    out = sim.worker("A", m.Status("running", ""))
    assert sim.where("u1") == "A" and sim.s.workers["A"].memory_note == ""


def test_tasks_queued_on_a_paused_worker_go_to_a_worker_that_joins():
    sim = Sim(("A",))
    sim.submit(spec("x"))
    sim.finish("A", "x")
    sim.submit(*[spec(f"y{i}", deps=["x"]) for i in range(3)])
    sim.started("A", "y0")
    assert not computes(sim.worker("A", m.Status("paused", "memory")))   # nowhere to go
    out = sim.add_worker("B")
    assert computes(out) == {"y1": "B", "y2": "B"} and sim.where("y0") == "A"


def test_workers_dying_before_task_started_do_not_count():
    sim = Sim(("W0",))
    sim.submit(spec("x"))
    sim.started("W9", "x")                      # STARTED from a worker not running it
    for i in range(2 * KILLED_WORKER_LIMIT):
        out = sim.add_worker(f"W{i + 1}")
        sim.remove_worker(f"W{i}")
        assert sim.where("x") == f"W{i + 1}"
    assert sim.s.tasks["x"].suspicious == 0
    out = sim.finish(f"W{2 * KILLED_WORKER_LIMIT}", "x", value=1)
    assert to_client(out, m.Done)["x"].value == 1


def test_all_workers_gone_then_one_joins():
    sim = Sim(("A",))
    sim.submit(spec("x"), spec("y", deps=["x"]))
    sim.finish("A", "x")
    out = sim.remove_worker("A")
    assert computes(out) == {}
    assert sim.state("x") == "queued" and sim.state("y") == "waiting"
    out = sim.add_worker("B")
    assert computes(out) == {"x": "B"}
    out = sim.finish("B", "x")
    assert computes(out) == {"y": "B"}


# ---------------------------------------------------------------------- missing inputs
def _y_on_b_needs_x_on_a():
    sim = Sim(("A", "B", "C"))
    sim.submit(spec("x", options={"workers": ["A"]}))
    sim.finish("A", "x")
    sim.submit(spec("y", deps=["x"], options={"workers": ["B"]}))
    return sim


def test_missing_input_with_no_other_holder_is_recomputed():
    sim = _y_on_b_needs_x_on_a()
    out = sim.worker("B", m.Missing("y", "x", "A"))
    assert computes(out) == {"x": "A"}          # x is pinned to A
    assert sim.state("y") == "waiting"
    out = sim.finish("A", "x")
    assert computes(out) == {"y": "B"} and compute_msg(out, "y").deps == {"x": ["A"]}


def test_missing_input_retries_with_remaining_holders():
    sim = Sim(("A", "B", "C"))
    sim.client(m.UpdateData({"s": 100}, "A"), m.UpdateData({"s": 100}, "C"))
    assert {w.address for w in sim.s.tasks["s"].who_has} == {"A", "C"}
    out = sim.submit(spec("y", deps=["s"], options={"workers": ["B"]}))
    assert sorted(compute_msg(out, "y").deps["s"]) == ["A", "C"]
    out = sim.worker("B", m.Missing("y", "s", "A"))
    assert computes(out) == {"y": "B"} and compute_msg(out, "y").deps == {"s": ["C"]}
    assert sim.s.workers["A"].nbytes == 0


def test_missing_report_from_worker_not_running_the_task():
    sim = _y_on_b_needs_x_on_a()
    out = sim.worker("C", m.Missing("y", "x", "C"))   # C holds nothing, runs nothing
    assert out == [] and sim.state("y") == "processing"


def test_worker_missing_data_the_scheduler_thinks_it_holds():
    sim = Sim(("A", "B"))
    sim.submit(spec("x", options={"workers": ["A"]}))
    sim.finish("A", "x")
    sim.submit(spec("y", deps=["x"], options={"workers": ["A"]}))
    out = sim.worker("A", m.Missing("y", "x", "A"))   # A lost x (its own copy)
    assert computes(out) == {"x": "A"} and sim.state("y") == "waiting"


def test_submit_on_unknown_key_fails_with_future_lost():
    sim = Sim(("A",))
    out = sim.submit(spec("y", deps=["gone"]))
    erred = to_client(out, m.Erred)
    err = loads(erred["y"].exception)
    assert isinstance(err, FutureLostError) and "'gone'" in str(err)
    assert not computes(out) and sim.state("y") == "erred"
    sim.release("y")
    assert not sim.s.tasks


# ---------------------------------------------------------------------- scattered data
def test_scattered_data_lost_with_its_worker():
    sim = Sim(("A", "B"))
    out = sim.client(m.UpdateData({"s": 100}, "A"))
    assert sent(out) == [m.Done("s", False, None, 100, ["A"])]
    out = sim.submit(spec("y", deps=["s"]))
    assert computes(out) == {"y": "A"}
    out = sim.remove_worker("A")
    erred = to_client(out, m.Erred)
    assert set(erred) == {"s", "y"}
    assert isinstance(loads(erred["s"].exception), FutureLostError)
    assert not computes(out)


def test_scatter_to_unknown_worker_errs():
    sim = Sim(("A",))
    out = sim.client(m.UpdateData({"s": 100}, "ghost"))
    assert isinstance(loads(to_client(out, m.Erred)["s"].exception), FutureLostError)


def test_released_scattered_input_cannot_be_recomputed():
    sim = Sim(("A", "B"))
    sim.client(m.UpdateData({"s": 100}, "A"))
    sim.submit(spec("y", deps=["s"]))
    sim.release("s")
    out = sim.finish("A", "y")
    assert frees(out) == {("A", "s")} and sim.state("s") == "released"
    out = sim.remove_worker("A")                # y must be recomputed, but s is gone
    assert not computes(out)
    assert isinstance(loads(to_client(out, m.Erred)["y"].exception), FutureLostError)


def test_scatter_under_a_running_task_key_frees_the_copy_and_keeps_the_task():
    sim = Sim(("A", "B"), clients=(C, "c2"))
    sim.submit(spec("x", options={"workers": ["A"]}))
    out = sim.client(m.UpdateData({"x": 100}, "B"), peer="c2")   # another client's scatter
    assert frees(out) == {("B", "x")} and not sent(out, peer="c2")
    assert sim.state("x") == "processing" and sim.where("x") == "A"
    out = sim.finish("A", "x")
    assert "x" in to_client(out, m.Done, peer="c2") and "x" in to_client(out, m.Done)


def test_scatter_under_a_finished_task_key_answers_with_the_task_result():
    sim = Sim(("A", "B"), clients=(C, "c2"))
    sim.submit(spec("x", options={"workers": ["A"]}))
    sim.finish("A", "x", nbytes=8)
    out = sim.client(m.UpdateData({"x": 100}, "B"), peer="c2")
    assert frees(out) == {("B", "x")}
    assert sent(out, peer="c2") == [m.Done("x", False, None, 8, ["A"])]
    assert {w.address for w in sim.s.tasks["x"].who_has} == {"A"}


# ---------------------------------------------------------------------- ordering and placement
def test_queued_root_tasks_run_by_priority_then_fifo():
    sim = Sim(())
    prios = {"a": 0, "b": 5, "c": 0, "d": 5, "e": -1, "f": 0}
    sim.submit(*[spec(k, options={"priority": p} if p else None) for k, p in prios.items()])
    out = sim.add_worker("A")
    assert compute_order(out) == ["b", "d", "a", "c", "f", "e"]
    assert compute_msg(out, "b").priority == -5 and compute_msg(out, "e").priority == 1


def test_high_priority_task_overtakes_queued_ones():
    sim = Sim(("A",))
    sim.submit(*[spec(f"t{i}") for i in range(10)])      # 6 running, 4 queued
    sim.submit(spec("urgent", options={"priority": 10}), spec("later"))
    out = sim.finish("A", "t0")
    assert compute_order(out) == ["urgent"]
    out = sim.finish("A", "t1")
    assert compute_order(out) == ["t6"]


def test_workers_option_pins_tasks():
    sim = Sim(("A", "B"))
    out = sim.submit(*[spec(f"p{i}", options={"workers": ["B"]}) for i in range(8)])
    assert set(computes(out).values()) == {"B"} and len(computes(out)) == 8
    # pinned to a worker that is not there: waits for it, never runs elsewhere
    out = sim.submit(spec("q", options={"workers": ["C"]}), spec("r"))
    assert computes(out) == {"r": "A"}
    out = sim.add_worker("D")
    assert "q" not in computes(out)
    sim.remove_worker("D")
    out = sim.finish("A", "r")
    assert "q" not in computes(out)
    out = sim.add_worker("C")
    assert computes(out) == {"q": "C"}
    # and when its worker dies it waits for that worker again
    out = sim.remove_worker("C")
    assert "q" not in computes(out) and sim.state("q") == "queued"
    out = sim.add_worker("C")
    assert computes(out) == {"q": "C"}


# ---------------------------------------------------------------------- other worker messages
def test_output_and_heartbeat():
    sim = Sim(("A",), clients=(C, C2))
    sim.submit(spec("x"))
    sim.client(m.FireAndForget(["x"]))
    out = sim.worker("A", m.Output("x", "stdout", "hello\n"))
    assert out == [(C, m.Output("x", "stdout", "hello\n"))]
    out = sim.worker("A", m.Heartbeat({"rss": 1}))
    assert out == [] and sim.s.workers["A"].metrics == {"rss": 1}
    assert sim.worker("A", m.Output("nope", "stdout", "x")) == []


# ---------------------------------------------------------------------- malformed messages
# What a peer may put on the wire: raw msgpack arrays, decoded (and type-checked) by the
# framing layer, then checked for what types cannot say by the state machine.
def raw_spec(key, deps=(), options=None, fn=FN, args=None, kwargs=None):
    return [key, fn, [1] if args is None else args, kwargs, list(deps), options]


GOOD = ["submit", [raw_spec("ok")]]
BAD_CLIENT_MESSAGES = {
    "not a list": "submit",
    "empty": [],
    "unknown op": ["frobnicate", 1],
    "missing field": ["submit"],
    "extra field": ["release", ["x"], 1],
    "specs not a list": ["submit", "x"],
    "spec too short": ["submit", [["k", FN, [], None, []]]],
    "spec not a list": ["submit", [{"key": "k"}]],
    "key not a string": ["submit", [raw_spec(7)]],
    "empty key": ["submit", [raw_spec("")]],
    "unknown function": ["submit", [raw_spec("k", fn="never-sent")]],
    "args not a list": ["submit", [raw_spec("k", args="abc")]],
    "kwargs a list": ["submit", [raw_spec("k", kwargs=[1])]],
    "deps not a list": ["submit", [["k", FN, [], None, "ok", None]]],
    "dep not a string": ["submit", [raw_spec("k", deps=[["ok"]])]],
    "depends on itself": ["submit", [raw_spec("k", deps=["k"])]],
    "options not a map": ["submit", [raw_spec("k", options=["priority"])]],
    "workers a string": ["submit", [raw_spec("k", options={"workers": "A"})]],
    "priority a string": ["submit", [raw_spec("k", options={"priority": "high"})]],
    "release keys a string": ["release", "ok"],
    "release key unhashable": ["release", [["ok"]]],
    "cancel keys none": ["cancel", None],
    "want keys ints": ["want", [1, 2]],
    "fire keys map": ["fire", {"ok": 1}],
    "update sizes list": ["update-data", [1], "A"],
    "update size str": ["update-data", {"s": "big"}, "A"],
    "update worker int": ["update-data", {"s": 1}, 5],
    "function token int": ["fn", 1, b""],
    "function blob str": ["fn", "t", "not bytes"],
    "request": ["req", 1, "info", {}],
    "hello": ["hello", "client", {}],
    "worker message from a client": ["finished", "ok", 8, 0.0, 1.0, False, None, "int", 1],
}
BAD_WORKER_MESSAGES = {
    "finished key int": ["finished", 5, 8, 0.0, 1.0, False, None, "int", 1],
    "finished nbytes str": ["finished", "ok", "8", 0.0, 1.0, False, None, "int", 1],
    "finished stop str": ["finished", "ok", 8, 0.0, "later", False, None, "int", 1],
    "finished flag int": ["finished", "ok", 8, 0.0, 1.0, 2, None, "int", 1],
    "finished run str": ["finished", "ok", 8, 0.0, 1.0, False, None, "int", "1"],
    "failed traceback int": ["failed", "ok", None, 5, 0.0, 1.0, None, 1],
    "started time str": ["started", "ok", "now", 1],
    "missing dep int": ["missing", "ok", 3, "A"],
    "output text bytes": ["output", "ok", "stdout", b"x"],
    "heartbeat list": ["heartbeat", [1]],
    "client message from a worker": ["submit", [raw_spec("k")]],
    "run result": ["run-result", 1, True, None],
}


def deliver(sim, peer, raw_batch):
    """``raw_batch`` as it arrives from ``peer`` over the wire: decoded, then handled."""
    return sim.s.handle(peer, decode([msgspec.msgpack.encode(raw_batch)]), sim.now)


def _snapshot(s):
    return (
        {k: (ts.state, sorted(w.address for w in ts.who_has), sorted(ts.who_wants),
             ts.processing_on.address if ts.processing_on else None) for k, ts in s.tasks.items()},
        {a: (sorted(t.key for t in w.processing), sorted(t.key for t in w.has_what),
             sorted(w.functions)) for a, w in s.workers.items()},
        sorted(t.key for heap in s.queues.values() for _, t in heap), set(s.functions),
    )


@pytest.mark.parametrize("bad", list(BAD_CLIENT_MESSAGES), ids=list(BAD_CLIENT_MESSAGES))
def test_malformed_client_message_raises_and_changes_nothing(bad):
    sim = Sim(("A",))
    sim.submit(spec("x"), spec("q", options={"workers": ["Z"]}))
    before = _snapshot(sim.s)
    for batch in ([BAD_CLIENT_MESSAGES[bad]], [GOOD, BAD_CLIENT_MESSAGES[bad]]):
        with pytest.raises(ProtocolError):
            deliver(sim, C, batch)
        assert _snapshot(sim.s) == before, bad
    # the state still works
    out = sim.client(m.Submit([spec("ok")]))
    assert "ok" in computes(out)


@pytest.mark.parametrize("bad", list(BAD_WORKER_MESSAGES), ids=list(BAD_WORKER_MESSAGES))
def test_malformed_worker_message_raises_and_changes_nothing(bad):
    sim = Sim(("A",))
    sim.submit(spec("ok"))
    before = _snapshot(sim.s)
    good = ["started", "ok", 1.0, 1]
    for batch in ([BAD_WORKER_MESSAGES[bad]], [good, BAD_WORKER_MESSAGES[bad]]):
        with pytest.raises(ProtocolError):
            deliver(sim, "A", batch)
        assert _snapshot(sim.s) == before, bad
        assert not sim.s.tasks["ok"].executing
    out = sim.finish("A", "ok", value=1)
    assert to_client(out, m.Done)["ok"].value == 1


def test_batch_must_be_a_list():
    sim = Sim(("A",))
    for raw in (None, ["submit", []], {"0": GOOD}):
        with pytest.raises(ProtocolError):
            deliver(sim, C, raw)


def test_function_and_submit_in_one_batch():
    sim = Sim(("A",))
    out = sim.client(m.Function("new-fn", b"blob"), m.Submit([spec("k", fn="new-fn")]))
    assert sent(out, "A") == [m.Function("new-fn", b"blob"), compute_msg(out, "k")]


def test_resubmitting_a_known_key_with_an_unknown_function_is_harmless():
    sim = Sim(("A",), clients=(C, C2))
    sim.submit(spec("x"))
    out = sim.submit(spec("x", fn="other-client-token"), peer=C2)
    assert out == [] and set(sim.s.tasks["x"].who_wants) == {C, C2}


def test_adding_a_worker_twice_is_an_error():
    sim = Sim(("A",))
    with pytest.raises(ValueError):
        sim.s.add_worker("A", 1, "A", {})


def test_serialized_arguments_pass_through_untouched():
    sim = Sim(("A",))
    args, kwargs = dumps((1, 2)), dumps({"k": 3})
    out = sim.submit(spec("x", args=args, kwargs=kwargs))
    msg = compute_msg(out, "x")
    assert msg.args is args and msg.kwargs is kwargs and isinstance(msg.args, Serialized)


def test_missing_report_naming_no_holder_retries_elsewhere():
    sim = _y_on_b_needs_x_on_a()
    out = sim.worker("B", m.Missing("y", "x", ""))     # B gave up on x without a culprit
    assert computes(out) == {"y": "B"} and compute_msg(out, "y").deps == {"x": ["A"]}
    assert sim.state("x") == "memory"


def test_internal_error_still_sends_what_earlier_messages_decided(monkeypatch):
    from nbcluster.state.scheduler_state import BadBatch

    def boom(self, peer, msg):
        raise RuntimeError("bug")
    monkeypatch.setitem(SchedulerState._handlers, m.Heartbeat, boom)
    sim = Sim(("A",))
    sim.submit(spec("x"))
    with pytest.raises(BadBatch) as info:
        sim.s.handle("A", [m.Finished("x", 8, 0.0, 0.001, True, 1, "int", sim.run_of("x")),
                           m.Heartbeat({})], sim.now)
    assert (C, m.Done("x", True, 1, 8, [])) in info.value.out
    assert isinstance(info.value, ProtocolError)


def test_broadcast_scatter_with_one_target_gone():
    sim = Sim(("A", "B"))
    out = sim.client(m.UpdateData({"s": 10}, "A"), m.UpdateData({"s": 10}, "ghost"))
    assert to_client(out, m.Done) == {"s": m.Done("s", False, None, 10, ["A"])}
    assert not to_client(out, m.Erred) and sim.state("s") == "memory"
    out = sim.client(m.UpdateData({"s": 10}, "B"))
    assert {w.address for w in sim.s.tasks["s"].who_has} == {"A", "B"}
    out = sim.remove_worker("A")
    assert out == [] and sim.state("s") == "memory"
    out = sim.release("s")
    assert frees(out) == {("B", "s")} and not sim.s.tasks


def test_functions_of_a_client_that_left_are_forgotten_once_unused():
    sim = Sim(workers=("A",), clients=(C, C2))
    sim.client(m.Function("mine-tok", b"<blob>"), peer=C2)
    sim.submit(spec("kept", fn="mine-tok"), peer=C2)
    sim.client(m.FireAndForget(["kept"]), peer=C2)
    sim.s.remove_client(C2, sim.now)
    assert "mine-tok" in sim.s.functions          # a task still needs it (lineage, retries)
    out = sim.finish("A", "kept")                 # its last task is forgotten: it goes
    assert "mine-tok" not in sim.s.functions
    assert sent(out, "A", m.ForgetFunctions) == [m.ForgetFunctions(["mine-tok"])]
    assert all(t in sim.s.functions for t in BLOBS)     # the other client's stay


def test_heartbeats_slow_down_as_the_cluster_grows_and_speed_up_as_it_shrinks():
    from nbcluster.state.model import HEARTBEAT_WORKERS, heartbeat_interval

    assert heartbeat_interval(1) == heartbeat_interval(HEARTBEAT_WORKERS) == 1.0
    assert heartbeat_interval(HEARTBEAT_WORKERS + 1) == 1.5
    assert heartbeat_interval(1000) == 2.5    # about HEARTBEAT_WORKERS heartbeats a second
    sim = Sim(workers=[f"w{i}" for i in range(HEARTBEAT_WORKERS)])
    assert sim.s.heartbeat == 1.0
    out = sim.add_worker("big")                  # past the step: every worker is told
    assert {p for p, msg in out if msg == m.Settings(1.5)} == set(sim.s.workers)
    out = sim.add_worker("next")                 # same step: only the newcomer hears
    assert out == [("next", m.Settings(1.5))]
    sim.remove_worker("next")
    out = sim.remove_worker("big")               # back under: every worker is told
    assert sorted(out) == sorted((w, m.Settings(1.0)) for w in sim.s.workers)
