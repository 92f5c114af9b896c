"""What a worker does with what a task returns: a result that cannot be pickled (even by
raising SystemExit) fails the task and the worker carries on; a coroutine is run to its end;
pickling errors are also the standard library's."""

import asyncio
import pickle
import threading

import pytest

from nbcluster.errors import SerializationError, TaskTimeoutError
from nbcluster.protocol.serialize import Serialized, dumps, loads

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
