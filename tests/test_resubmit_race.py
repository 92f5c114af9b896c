"""Submitting a key again right after its future was released (issue 13, item 4).

The scheduler answers RELEASE k + SUBMIT k with FREE k (the old run) and COMPUTE k (the new
one) to the worker that holds k. Two things make the order harmless: the scheduler's shell
sends a worker its messages in the order the state decided them (a FREE is merged with later
ones only past messages that do not name its keys), and a FREE carries, per key, the latest run
id issued when it was decided, so a worker ignores a FREE older than its current run. Each is
tested here on its own, the shell with recording comms and a worker state machine fed what it
sent (no sockets, no threads), and then end to end.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from nbcluster.protocol import messages as m
from nbcluster.server.scheduler import Scheduler
from nbcluster.state.instructions import Drop, Execute, Send, Stop
from nbcluster.state.worker_state import WorkerState

FN = "fn-token"
C = "client-1"


class Recorder:
    """A comm that keeps what it is sent."""

    def __init__(self) -> None:
        self.sent: list[m.Message] = []

    def send(self, msg: m.Message) -> None:
        self.sent.append(msg)

    def take(self) -> list[m.Message]:
        sent, self.sent = self.sent, []
        return sent


class Cluster:
    """The scheduler's shell with recording comms, and worker A's state machine."""

    def __init__(self) -> None:
        self.shell = Scheduler("inproc://unused")
        self.comms = {"A": Recorder(), C: Recorder()}
        self.shell.comms.update(self.comms)
        self.shell.state.add_worker("A", 1, "A", {"address": "A"})
        self.shell.state.add_client(C)
        self.worker = WorkerState("A", 1)
        self.client(m.Function(FN, b"<pickled fn>"))

    def client(self, *msgs: m.Message) -> None:
        self.shell._on_batch(C, list(msgs))

    def deliver(self) -> list[Execute]:
        """Worker A handles what the scheduler sent it, in order; its reports go back."""
        reports: list[m.Message] = []
        executes: list[Execute] = []
        for msg in self.comms["A"].take():
            if type(msg) is m.Compute:
                out = self.worker.compute(msg)
            elif type(msg) is m.Free:
                out = self.worker.free(msg.keys, msg.runs)
            else:
                continue
            reports += [i.msg for i in out if type(i) is Send]
            executes += [i for i in out if type(i) is Execute]
        if reports:
            self.shell._on_batch("A", reports)
        return executes

    def finish(self, ex: Execute) -> None:
        out = self.worker.task_finished(ex.key, 8, 1.0, 2.0, False, None, "int")
        self.shell._on_batch("A", [i.msg for i in out if type(i) is Send])


def spec(key: str) -> m.TaskSpec:
    return m.TaskSpec(key, FN, [1], None, [], None)


@pytest.mark.parametrize("held", ["finished", "running"])
@pytest.mark.parametrize("batches", ["one batch", "two batches"])
def test_release_then_submit_of_the_same_key_leaves_it_on_the_worker(held, batches):
    c = Cluster()
    c.client(m.Submit([spec("x")]))
    [ex] = c.deliver()
    if held == "finished":
        c.finish(ex)
        assert c.shell.state.tasks["x"].state == "memory"
    if batches == "one batch":
        c.client(m.Release(["x"]), m.Submit([spec("x")]))
    else:
        c.client(m.Release(["x"]))
        c.client(m.Submit([spec("x")]))
    for ex in c.deliver():      # run again if the worker dropped it first
        c.finish(ex)
    if held == "running":       # the first call ends: its result is that of the new run
        c.finish(ex)
    ts = c.shell.state.tasks["x"]
    assert ts.state == "memory" and [w.address for w in ts.who_has] == ["A"]
    assert c.worker.tasks["x"].state == "memory", "the scheduler counts a value the worker dropped"


def test_a_free_goes_before_a_later_compute_of_its_key_and_merges_past_others():
    c = Cluster()
    c.shell._send([("A", m.Free(["a"], [1])), ("A", m.Compute("b", FN, [1], None, {}, True, 0,
                                                                None, 2)),
                   ("A", m.Free(["x"], [2])), ("A", m.Compute("x", FN, [1], None, {}, True, 0,
                                                                None, 3)),
                   ("A", m.Free(["c"], [3])),
                   ("A", m.Compute("y", FN, [1], None, {"c": ["B"]}, True, 0, None, 4)),
                   ("A", m.Free(["d"], [4]))])
    sent = [(type(msg).__name__, getattr(msg, "key", None) or msg.keys)
            for msg in c.comms["A"].take()]
    assert sent == [("Compute", "b"), ("Free", ["a", "x"]), ("Compute", "x"),
                    ("Free", ["c"]), ("Compute", "y"), ("Free", ["d"])]


# ---------------------------------------------------------------------- run ids on FREE
def compute(key: str, run: int) -> m.Compute:
    return m.Compute(key, FN, [1], None, {}, True, 0, None, run)


def test_a_worker_ignores_a_free_older_than_its_current_run():
    w = WorkerState("A", 1)
    w.compute(compute("x", 1))
    w.task_finished("x", 8, 1.0, 2.0, False, None, "int")
    out = w.compute(compute("x", 3))          # given again: its value reports the new run
    assert [i.msg.run for i in out if type(i) is Send] == [3]
    assert w.free(["x"], [2]) == []           # decided before run 3: not about it
    assert w.tasks["x"].state == "memory"
    assert w.free(["x"], [3]) == [Drop(["x"])]


def test_a_stale_free_does_not_stop_the_current_run():
    w = WorkerState("A", 1)
    w.compute(compute("x", 1))
    assert w.compute(compute("x", 3)) == []   # still running: the call delivers run 3
    assert w.free(["x"], [2]) == []           # no Stop
    out = w.task_finished("x", 8, 1.0, 2.0, False, None, "int")
    assert [i.msg.run for i in out if type(i) is Send] == [3]
    assert w.free(["x"], [5]) == [Drop(["x"])]
    assert w.compute(compute("y", 6)) and w.free(["y"], [6]) == [Stop("y")]


def test_free_needs_a_run_for_each_key():
    from nbcluster.errors import ProtocolError

    with pytest.raises(ProtocolError, match="2 keys but 1 run"):
        WorkerState("A", 1).free(["x", "y"], [1])


def test_the_scheduler_frees_the_old_run_and_computes_a_newer_one():
    c = Cluster()
    c.client(m.Submit([spec("x")]))
    [ex] = c.deliver()
    c.finish(ex)
    c.client(m.Release(["x"]), m.Submit([spec("x")]))
    [free, comp] = c.comms["A"].take()
    assert type(free) is m.Free and free.keys == ["x"] and type(comp) is m.Compute
    assert ex.run <= free.runs[0] < comp.run


# ---------------------------------------------------------------------- end to end
BIG = 100_000      # over the inline limit: the value stays on its worker


def test_resubmitting_a_released_key_in_one_batch_end_to_end(client, inproc_cluster):
    a = inproc_cluster.workers[0]
    f = client.submit(np.arange, BIG, key="k", workers=[a])
    assert len(f.result(timeout=5)) == BIG

    async def release_and_resubmit():   # on the client's loop: one flush carries both
        f.release()
        return client.submit(np.arange, BIG, key="k", workers=[a])

    for _ in range(3):
        g = asyncio.run_coroutine_threadsafe(release_and_resubmit(), client.loop).result(5)
        assert len(g.result(timeout=5)) == BIG
        f = g
