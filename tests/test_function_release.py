"""Functions, and what they capture, are released once no task needs them, on every process
(issue 13, item 5): on the scheduler, on every worker that was sent one, and when the client
that sent them leaves.
"""

from __future__ import annotations

import sys
import threading

import pytest

from nbcluster import Client
from nbcluster.testing import wait_until

MB = 1024 * 1024


def closure(i: int, size: int):
    """A function (pickled by value: it is not importable) that captures ``size`` bytes."""
    data = bytes([i % 256]) * size

    def task():
        return len(data) + i

    return task


def worker_functions() -> int:
    """Run on a worker process (``client.run``): the functions its worker keeps. Defined in
    here so that it travels by value (a worker need not import this test module)."""
    def count():
        import gc

        from nbcluster.server.worker import Worker

        return sum(len(w.functions) for w in gc.get_objects() if isinstance(w, Worker))
    return count


def _kept(cluster) -> tuple[int, int, int]:
    """Functions kept by the in-process scheduler, by its record of what workers have, and
    by the workers themselves."""
    state = cluster.scheduler.state
    return (len(state.functions), sum(len(w.functions) for w in state.workers.values()),
            sum(len(w.functions) for w in cluster._inproc_workers))


def test_fifty_closures_of_2mb_are_released_on_the_scheduler_and_the_workers(inproc_cluster):
    with Client(inproc_cluster) as client:
        futures = [client.submit(closure(i, 2 * MB)) for i in range(50)]
        assert client.gather(futures) == [2 * MB + i for i in range(50)]
        assert _kept(inproc_cluster)[0] == 50
        del futures
        wait_until(lambda: _kept(inproc_cluster) == (0, 0, 0),
                   "the scheduler and the workers to drop the released functions", timeout=5)
        # a function used again after its release travels again, and runs
        fn = closure(7, 10)
        assert client.submit(fn).result() == 17
        assert client.submit(fn).result() == 17


def test_a_client_that_leaves_takes_its_functions_along(inproc_cluster):
    with Client(inproc_cluster) as client:
        futures = [client.submit(closure(i, 100_000)) for i in range(10)]
        client.gather(futures)
        assert _kept(inproc_cluster)[0] == 10
    wait_until(lambda: _kept(inproc_cluster) == (0, 0, 0),
               "the functions of a client that left to be dropped everywhere", timeout=5)


GATE = threading.Event()


def wait_for_gate() -> bool:
    """A task (in-process workers: the same GATE) that runs until the test opens the gate."""
    return GATE.wait(5)


def test_a_fire_and_forget_task_keeps_its_function_until_it_ends(inproc_cluster):
    GATE.clear()
    try:
        with Client(inproc_cluster) as client:
            fut = client.submit(wait_for_gate)
            client.fire_and_forget(fut)
            wait_until(lambda: inproc_cluster.scheduler.state.counts_by_state().get(
                "processing") == 1, "the task to start")
            del fut
        # the client is gone; its task still runs and needs its function
        assert _kept(inproc_cluster)[0] == 1
    finally:
        GATE.set()
    wait_until(lambda: _kept(inproc_cluster) == (0, 0, 0),
               "the function of the fire-and-forget task to go once it ended", timeout=5)


@pytest.mark.processes
def test_worker_processes_drop_released_functions(pclient):
    count = worker_functions()
    futures = [pclient.submit(closure(i, 200_000)) for i in range(10)]
    pclient.gather(futures)
    assert sum(pclient.run(count).values()) >= 10
    del futures
    wait_until(lambda: sum(pclient.run(count).values()) == 0,
               "the worker processes to drop the released functions", timeout=5)


def test_a_task_that_is_never_sent_gives_its_function_back(inproc_cluster):
    with Client(inproc_cluster) as client:
        fn = closure(1, 10)
        with pytest.raises(TypeError):
            client.submit(fn, threading.Lock())          # its argument cannot be pickled
        with pytest.raises(ValueError, match="keys"):
            client.map(fn, [1, 2], key=["only-one"])
        wait_until(lambda: _kept(inproc_cluster) == (0, 0, 0),
                   "the function of tasks never sent to be released", timeout=5)


# ---------------------------------------------------------------------- the client's cache
class Recorder:
    """What a FunctionCache posts, and its timers, run by the test."""

    def __init__(self) -> None:
        self.posted: list = []
        self.timers: list = []
        self.lock = threading.Lock()

    def post(self, msg) -> None:
        with self.lock:
            self.posted.append(msg)

    def later(self, delay, callback) -> None:
        with self.lock:
            self.timers.append(callback)

    def run_timers(self) -> None:
        with self.lock:
            timers, self.timers = self.timers, []
        for callback in timers:
            callback()


def test_the_client_releases_an_unused_token_and_names_its_function_anew(monkeypatch):
    from nbcluster.client import functions
    from nbcluster.protocol import messages as m

    monkeypatch.setattr(functions, "LINGER", 0.0)
    rec = Recorder()
    cache = functions.FunctionCache("uid", lambda fn: "f", rec.post, rec.later)
    fn = closure(1, 10)
    t1 = cache.acquire(fn)
    assert cache.acquire(fn) == t1 and [type(x) for x in rec.posted] == [m.Function]
    cache.release(t1)
    assert not rec.timers                              # one use left
    cache.release(t1)
    assert cache.acquire(fn) == t1                     # used again before the sweep: kept
    rec.run_timers()
    assert [type(x) for x in rec.posted] == [m.Function]
    cache.release(t1)
    rec.run_timers()
    assert rec.posted[-1] == m.ReleaseFunctions([t1])
    t2 = cache.acquire(fn)                             # a new token, pickled and sent again
    assert t2 != t1 and rec.posted[-1] == m.Function(t2, rec.posted[0].blob)


def test_no_token_is_named_after_its_release_whatever_the_threads_do(monkeypatch):
    """Threads submit (acquire, post a task, let go) the same functions while the loop's
    sweeps release unused tokens: in the order the scheduler hears them, no task names a
    token after its release, and each is sent before it is named."""
    from nbcluster.client import functions
    from nbcluster.protocol import messages as m

    monkeypatch.setattr(functions, "LINGER", 0.0)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)      # threads interleave often
    rec = Recorder()
    cache = functions.FunctionCache("uid", lambda fn: "f", rec.post, rec.later)
    fns = [closure(i, 10) for i in range(3)]
    stop = threading.Event()

    def submitter(n: int) -> None:
        for i in range(2000):
            token = cache.acquire(fns[(i + n) % 3])
            rec.post(m.Submit([m.TaskSpec(f"k{n}-{i}", token, [], None, [], None)]))
            cache.release(token)

    def sweeper() -> None:
        while not stop.is_set():
            rec.run_timers()

    threads = [threading.Thread(target=submitter, args=(n,), name="nbcluster-test-submit")
               for n in range(3)]
    sweep = threading.Thread(target=sweeper, name="nbcluster-test-sweep")
    sweep.start()
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join(20)
    finally:
        stop.set()
        sweep.join(20)
        sys.setswitchinterval(switch)
    rec.run_timers()
    sent, released, named = set(), set(), 0
    for msg in rec.posted:
        if type(msg) is m.Function:
            assert msg.token not in sent
            sent.add(msg.token)
        elif type(msg) is m.ReleaseFunctions:
            assert set(msg.tokens) <= sent - released
            released.update(msg.tokens)
        else:
            token = msg.tasks[0].fn
            assert token in sent and token not in released, token
            named += 1
    assert named == 6000 and released == sent        # every token released in the end
    assert len(sent) > 3                             # some were released while in use
