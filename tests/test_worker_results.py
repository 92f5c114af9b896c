"""What a worker does with what a task returns: a result that cannot be pickled (even by
raising SystemExit) fails the task and the worker carries on; a coroutine is run to its end;
pickling errors are also the standard library's."""

import asyncio
import collections
import pickle
import threading
import time

import pytest

from nbcluster import Client, LocalCluster
from nbcluster.errors import SerializationError, TaskTimeoutError
from nbcluster.protocol import messages as m
from nbcluster.protocol.serialize import Serialized, dumps, loads
from nbcluster.state.worker_state import WorkerState
from nbcluster.testing import wait_until

pytestmark = pytest.mark.timeout(60)


class Exits:
    """A result whose pickling raises a BaseException (``SystemExit``, ``KeyboardInterrupt``)."""

    def __init__(self, exc_type, nbytes=100):
        self.exc_type = exc_type
        self.nbytes = nbytes     # what the worker takes as its size

    def __reduce__(self):
        raise self.exc_type("raised while pickling")


def small_exits(exc_type):
    return Exits(exc_type)


def large_exits(exc_type):
    return Exits(exc_type, nbytes=10_000_000)   # kept on the worker, pickled when fetched


def length(value):
    return len(value)


def inc(x):
    return x + 1


def first_worker(client):
    return sorted(client.scheduler_info()["workers"])[0]


# ---------------------------------------------------------------------- results that raise
@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt])
def test_result_whose_pickling_raises_fails_the_task_and_the_thread_lives(client, exc_type):
    worker = first_worker(client)
    future = client.submit(small_exits, exc_type, workers=worker)
    with pytest.raises(SerializationError) as info:
        future.result(timeout=10)
    text = str(info.value)
    assert "Exits" in text and exc_type.__name__ in text and "raised while pickling" in text
    # the worker's one thread still runs tasks
    assert client.submit(inc, 1, workers=worker).result(timeout=10) == 2


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt])
def test_large_result_whose_pickling_raises_when_fetched(pclient, exc_type):
    worker = first_worker(pclient)
    big = pclient.submit(large_exits, exc_type, workers=worker)
    with pytest.raises(SerializationError) as info:
        big.result(timeout=20)
    text = str(info.value)
    assert "Exits" in text and exc_type.__name__ in text
    # a peer fetching it gets the same error, and the task that needed it fails with it
    other = sorted(pclient.scheduler_info()["workers"])[1]
    with pytest.raises(SerializationError, match=exc_type.__name__):
        pclient.submit(length, big, workers=other).result(timeout=20)
    # the worker process and its connections live on
    assert pclient.submit(inc, 1, workers=worker).result(timeout=20) == 2
    assert pclient.submit(inc, 2, workers=other).result(timeout=20) == 3
    assert pclient.cluster.restarts == 0


# ---------------------------------------------------------------------- the stdlib's errors
def test_pickling_errors_are_also_the_standard_librarys(client):
    with pytest.raises(pickle.PicklingError) as info:
        client.submit(inc, threading.Lock())
    assert isinstance(info.value, SerializationError) and isinstance(info.value, TypeError)
    with pytest.raises(pickle.PicklingError):
        dumps(threading.Lock())
    with pytest.raises(pickle.UnpicklingError) as info:
        loads(Serialized(b"not a pickle", []))
    assert isinstance(info.value, SerializationError)
    # a result that cannot be pickled: the task's error, caught as the stdlib's too
    with pytest.raises(pickle.PicklingError, match="lock"):
        client.submit(threading.Lock).result(timeout=10)


# ---------------------------------------------------------------------- async def
async def async_inc(x, delay=0.0):
    await asyncio.sleep(delay)
    return x + 1


ASYNC_STARTED = threading.Event()


async def async_forever():
    ASYNC_STARTED.set()
    while True:
        await asyncio.sleep(10)


def test_async_def_functions_run(client):
    assert client.submit(async_inc, 1).result(timeout=10) == 2
    assert client.gather(client.map(async_inc, range(5), delay=0.001)) == [1, 2, 3, 4, 5]
    first = client.submit(async_inc, 10)
    assert client.submit(async_inc, first).result(timeout=10) == 12
    ex = client.get_executor()
    assert ex.submit(async_inc, 5, delay=0.01).result(timeout=10) == 6
    ex.shutdown()


def test_async_task_time_limit_and_cancel(client, inproc_cluster):
    worker = first_worker(client)
    executor = next(w for w in inproc_cluster._inproc_workers if w.address == worker).executor
    with pytest.raises(TaskTimeoutError, match="was stopped"):
        client.submit(async_forever, timeout=0.2, workers=worker).result(timeout=10)
    # stopped at once: the worker's one thread runs the next task (not a replacement thread)
    assert client.submit(async_inc, 1, workers=worker).result(timeout=10) == 2
    assert not executor._abandoned
    ASYNC_STARTED.clear()
    running = client.submit(async_forever, workers=worker)
    assert ASYNC_STARTED.wait(10)
    running.cancel()
    assert running.cancelled()
    assert client.submit(async_inc, 2, workers=worker).result(timeout=10) == 3
    assert not executor._abandoned


# ---------------------------------------------------------------------- threads and state
MB = 2**20


def chatty(x):
    print("line", x)
    print("no newline at the end", end="")
    return x


def block(i, nbytes):
    return bytearray([i % 256]) * nbytes


def spin(seconds):
    end = time.time() + seconds
    while time.time() < end:        # pure Python: an interrupt lands at once
        pass


def test_no_task_thread_touches_the_worker_state(monkeypatch):
    """Every use of a WorkerState, even reading an attribute, happens on the worker's event
    loop, never in a task thread: through starts, ends, failures, time limits, cancels,
    transfers, output and spilled inputs read back."""
    uses: set = set()
    plain = object.__getattribute__

    def watched(self, name):
        uses.add((name, threading.current_thread()))
        return plain(self, name)

    monkeypatch.setattr(WorkerState, "__getattribute__", watched)
    with LocalCluster(n_workers=2, threads_per_worker=2, processes=False,
                      dashboard=False) as cluster, Client(cluster) as client:
        async def spill_over_50_mib():   # in-process workers do not spill unless told
            for w in cluster._inproc_workers:
                w.state.spill_at = 0.25
                w.set_memory_limit(200 * MB)

        cluster._thread.run(spill_over_50_mib())
        a, b = sorted(client.scheduler_info()["workers"])
        assert client.gather(client.map(inc, range(300))) == list(range(1, 301))
        assert client.submit(chatty, 1, workers=a).result(timeout=10) == 1
        with pytest.raises(TaskTimeoutError):
            client.submit(spin, 30, timeout=0.2, workers=a).result(timeout=10)
        running = client.submit(spin, 30, workers=b)
        wait_until(lambda: any(n == "task_started" for n, _ in list(uses)), "a task started")
        running.cancel()
        blocks = [client.submit(block, i, 20 * MB, workers=a) for i in range(4)]  # over 50 MiB
        wait_until(lambda: any(n == "spill_written" for n, _ in list(uses)), "a spilled result")
        lengths = [client.submit(length, blk, workers=w) for blk in blocks for w in (a, b)]
        assert client.gather(lengths) == [20 * MB] * 8
        loop_thread = cluster._thread.thread
    names = {n for n, _ in uses}
    assert {"compute", "free", "task_started", "task_finished", "task_failed", "fetch_done",
            "spill_written", "unspilled"} <= names, names
    elsewhere = {(n, t.name) for n, t in uses if t is not loop_thread}
    assert not elsewhere


def nap(x):
    time.sleep(0.05)   # the task's own run time (tasks overlap in flight), not a wait
    return x


def test_each_task_is_announced_started_at_most_once(client, inproc_cluster):
    """STARTED goes out when a task is handed to an idle thread, or when a thread reports
    the start of one queued ahead, never both; a short task that has ended by the time its
    start is seen needs none."""
    started: collections.Counter = collections.Counter()

    def counting(send):
        def send_counted(msg):
            if type(msg) is m.Started:
                started[msg.key] += 1
            send(msg)
        return send_counted

    for w in inproc_cluster._inproc_workers:
        w.scheduler.send = counting(w.scheduler.send)
    assert client.gather(client.map(inc, range(500))) == list(range(1, 501))
    naps = client.map(nap, range(6))
    assert client.gather(naps) == list(range(6))
    assert max(started.values()) == 1
    assert all(started[f.key] == 1 for f in naps)


def test_a_worker_sends_heartbeats_as_often_as_the_scheduler_says(inproc_cluster):
    """Settings from the scheduler (sent as the cluster grows) set the heartbeat interval."""
    cluster = inproc_cluster
    worker = cluster._inproc_workers[0]
    assert worker.heartbeat_seconds == 1.0

    async def tell():
        cluster.scheduler._send([(worker.address, m.Settings(2.5))])
    asyncio.run_coroutine_threadsafe(tell(), cluster._thread.loop).result(10)
    wait_until(lambda: worker.heartbeat_seconds == 2.5, "the worker took the interval", timeout=10)
