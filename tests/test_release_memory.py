"""A large argument leaves the scheduler as soon as its future is released (issue 13, item 8).

Two things held it: the state kept the task's arguments on a forgotten task that a queue, a
timer or a limit still listed (they drop such entries lazily), and the scheduler's connections
read large frames into receive memory kept for reuse, unmapped only after 10 s idle.
"""

from __future__ import annotations

import gc
import tracemalloc
import weakref

import numpy as np
import pytest

from nbcluster import Client
from nbcluster.comm.buffers import POOL
from nbcluster.loop_thread import LoopThread
from nbcluster.protocol import messages as m
from nbcluster.server.scheduler import Scheduler
from nbcluster.state.scheduler_state import SchedulerState
from nbcluster.testing import validate, wait_until

FN = "fn-token"
C = "client-1"


class Payload:
    """An argument whose end the test can see (a weak reference)."""


CASES = {
    "queued (no worker yet)": ((), None, False),
    "pinned to a worker not here": (("A",), {"workers": ["B"]}, False),
    "delayed": (("A",), {"not_before": 1e12}, False),
    "held by its limit": ((), {"concurrency": 1}, False),
    "finished, with an expiry timer": (("A",), {"expires": 1e12}, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_forgotten_task_lets_go_of_its_arguments(case):
    workers, options, finish = CASES[case]
    s = SchedulerState()
    s.add_client(C)
    for w in workers:
        s.add_worker(w, 1, w, {"address": w})
    payload = Payload()
    gone = weakref.ref(payload)
    s.handle(C, [m.Function(FN, b"<fn>"), m.Submit([m.TaskSpec(
        "x", FN, [payload], {"p": payload}, [], options)])], 1.0)
    del payload
    if finish:
        ts = s.tasks["x"]
        s.handle("A", [m.Finished("x", 8, 1.0, 2.0, False, None, "int", ts.run_id)], 2.0)
        assert ts.state == "memory"
    out = s.handle(C, [m.Release(["x"])], 3.0)
    validate(s, out)
    assert "x" not in s.tasks
    gc.collect()
    assert gone() is None, "the scheduler still holds the released task's arguments"


MB = 1024 * 1024


def test_the_scheduler_keeps_no_receive_memory_for_a_released_argument():
    """A scheduler (on TCP, in this process) sent a 50 MB argument, then its release: the
    memory it read the argument into is freed with the task, not kept for reuse."""
    loop = LoopThread("nbcluster-test-scheduler")
    try:
        scheduler = loop.run(Scheduler("tcp://127.0.0.1:0").start())
        with Client(scheduler.address, set_as_default=False) as client:
            pooled = POOL.stats()["bytes"]
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                arg = np.ones(50 * MB, dtype="u1")
                f = client.submit(len, arg, key="big")     # no worker: it stays queued
                wait_until(lambda: "big" in scheduler.state.tasks, "the task to arrive")
                del f, arg
                wait_until(lambda: not scheduler.state.tasks, "the release to arrive")
                gc.collect()
                held = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            assert POOL.stats()["bytes"] - pooled < 50 * MB, \
                "the scheduler kept the argument's receive memory for reuse"
            assert held < 5 * MB, f"{held / MB:.0f} MB still held after the release"
        loop.run(scheduler.close())
    finally:
        loop.stop()
