"""client.get_executor() keeps the concurrent.futures contract; submitted functions are
pickled once while they live and are not kept alive by the client."""

import concurrent.futures as cf
import gc
import operator
import threading
import time
import weakref

import pytest

from nbcluster import Client, LocalCluster
from nbcluster.errors import TaskTimeoutError
from nbcluster.protocol import messages as m

pytestmark = pytest.mark.timeout(60)

# module level: in-process workers share them (functions are pickled by reference)
GATE, BUSY = threading.Event(), threading.Event()
RAN: list = []


def echo(*args, **kwargs):
    return args, kwargs


def inc(x):
    return x + 1


def occupy():
    """Holds the only worker thread until the test opens GATE (and stops when cancelled)."""
    BUSY.set()
    while not GATE.wait(0.01):
        pass
    return "done"


def spin():
    """Runs until it is stopped (a time limit or a cancel)."""
    while True:
        time.sleep(0.01)


def record(x):
    RAN.append(x)
    return x


def nap(x, seconds=0.2):
    time.sleep(seconds)
    return x


class Box:
    def __init__(self, value):
        self.value = value


def box(x):
    return Box(x)


@pytest.fixture
def one_thread():
    """A client of one in-process worker with one thread, its thread free."""
    GATE.clear()
    BUSY.clear()
    RAN.clear()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as cluster, \
            Client(cluster) as client:
        yield client
        GATE.set()


def hold_the_thread(client):
    """Occupy the one worker thread; what is submitted next waits in the queue."""
    held = client.submit(occupy)
    assert BUSY.wait(10)
    return held


def barrier(client):
    """Messages sent before reached the scheduler and, through it, the worker."""
    client.run(lambda: None)


# ---------------------------------------------------------------------- submit's keywords
def test_executor_submit_passes_every_keyword_to_the_function(client):
    ex = client.get_executor()
    kwargs = dict(self=1, fn=2, timeout=3, priority=4, key=5, queue="q q", workers=6, pure=7,
                  retries="x", countdown=-1)
    assert ex.submit(echo, 0, **kwargs).result(timeout=10) == ((0,), kwargs)
    ex.shutdown()


def test_executor_task_options_are_given_once_to_get_executor(client):
    with pytest.raises(TypeError, match="'foo'"):
        client.get_executor(foo=1)
    with pytest.raises(TypeError, match="'key'"):
        client.get_executor(key="k")
    with pytest.raises(ValueError, match="retries"):
        client.get_executor(retries=-1)
    ex = client.get_executor(timeout=0.3)
    # the function's own timeout= goes to it; the executor's stops the task
    assert ex.submit(echo, timeout=123).result(timeout=10) == ((), {"timeout": 123})
    with pytest.raises(TaskTimeoutError):
        ex.submit(spin).result(timeout=10)
    ex.shutdown()


# ---------------------------------------------------------------------- cancel
def test_executor_cancel_of_a_queued_future(one_thread):
    held = hold_the_thread(one_thread)
    ex = one_thread.get_executor()
    queued = ex.submit(record, 1)
    assert queued.cancel() is True
    assert queued.cancelled() and queued.done()
    assert queued.cancel() is True        # again: still cancelled
    with pytest.raises(cf.CancelledError):
        queued.result(timeout=0)
    done, not_done = cf.wait([queued], timeout=5)
    assert done == {queued} and not not_done
    barrier(one_thread)
    GATE.set()
    assert held.result(timeout=10) == "done"
    assert ex.submit(inc, 1).result(timeout=10) == 2     # ran after the cancelled one's turn
    assert RAN == []                                     # cancelled on the cluster: never ran
    ex.shutdown()


def test_executor_cancel_of_a_started_task_stops_it(one_thread):
    # The client is not told when a task starts (a message per task), so a future is pending
    # until it is done: cancel() returns True and the cluster stops the task.
    ex = one_thread.get_executor()
    running = ex.submit(occupy)
    assert BUSY.wait(10)
    assert not running.running()
    assert running.cancel() is True
    assert running.cancelled()
    assert ex.submit(inc, 1).result(timeout=10) == 2    # the thread was freed, GATE is shut
    finished = ex.submit(inc, 2)
    assert finished.result(timeout=10) == 3
    assert finished.cancel() is False and not finished.cancelled()
    ex.shutdown()


def test_executor_shutdown_cancel_futures_leaves_them_cancelled(one_thread):
    held = hold_the_thread(one_thread)
    ex = one_thread.get_executor()
    queued = [ex.submit(record, i) for i in range(5)]
    ex.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    done, not_done = cf.wait(queued, timeout=5)
    assert done == set(queued) and not not_done
    assert list(cf.as_completed(queued, timeout=5)) != []
    with pytest.raises(RuntimeError, match="shutdown"):
        ex.submit(inc, 1)
    barrier(one_thread)
    GATE.set()
    assert held.result(timeout=10) == "done"
    assert one_thread.submit(inc, 1).result(timeout=10) == 2
    assert RAN == []


# ---------------------------------------------------------------------- map
def test_executor_map_timeout_counts_from_the_call_to_map(one_thread):
    ex = one_thread.get_executor()
    start = time.monotonic()
    # ten naps of 0.2 s in a row: each next result comes within 0.5 s, all of them do not
    results = ex.map(nap, range(10), timeout=0.5)
    got = []
    with pytest.raises(cf.TimeoutError):
        for value in results:
            got.append(value)
    assert time.monotonic() - start < 1.5
    assert got == list(range(len(got))) and len(got) < 10
    ex.shutdown(wait=True)


def test_closing_the_map_iterator_cancels_what_has_not_run(one_thread):
    held = hold_the_thread(one_thread)
    ex = one_thread.get_executor()
    results = ex.map(record, range(5))
    results.close()
    dropped = ex.map(record, range(5, 10))
    del dropped
    gc.collect()
    barrier(one_thread)
    GATE.set()
    assert held.result(timeout=10) == "done"
    assert list(ex.map(inc, [1])) == [2]
    assert RAN == []
    ex.shutdown()


def test_map_iterator_does_not_keep_yielded_results(client):
    ex = client.get_executor()
    results = ex.map(box, range(3))
    first = next(results)
    assert first.value == 0
    ref = weakref.ref(first)
    del first
    gc.collect()
    assert ref() is None
    assert [b.value for b in results] == [1, 2]
    ex.shutdown()


# ---------------------------------------------------------------------- functions
def count_functions_sent(client):
    sent = []
    post = client._conn.post

    def counting(msg):
        if type(msg) is m.Function:
            sent.append(msg.token)
        post(msg)

    client._conn.post = counting
    return sent


class Adder:
    def __init__(self, n):
        self.n = n
        self.payload = bytearray(1000)

    def add(self, x):
        return x + self.n


class Slotted:
    __slots__ = ()

    def twice(self, x):
        return 2 * x


def test_a_function_is_pickled_once_while_it_lives(client):
    sent = count_functions_sent(client)
    futures = [client.submit(inc, i) for i in range(1000)]
    futures += client.map(inc, range(1000))
    adder = Adder(5)
    futures += [client.submit(adder.add, i) for i in range(1000)]   # a new method object each
    futures += client.map(adder.add, range(10))
    assert client.gather(futures[-10:]) == list(range(5, 15))
    assert len(sent) == 2
    other = Adder(6)
    assert client.submit(other.add, 1).result(timeout=10) == 7       # another object: its own
    assert len(sent) == 3
    # callables that cannot be weakly referenced: held (the last few), pickled once too
    first, slotted = operator.itemgetter(0), Slotted()
    futures = [client.submit(first, (i,)) for i in range(100)]
    futures += [client.submit(slotted.twice, i) for i in range(100)]
    assert client.gather(futures[-2:]) == [196, 198]
    assert len(sent) == 5
    del futures


def test_submitted_functions_are_not_kept_alive(client):
    def make_closure():
        big = bytearray(1000)
        return lambda x: x + len(big)

    fn = make_closure()
    adder = Adder(1)
    method_refs = weakref.ref(adder)
    fn_ref = weakref.ref(fn)
    ex = client.get_executor()
    futures = [client.submit(fn, 1), client.submit(adder.add, 1), ex.submit(fn, 2),
               ex.submit(adder.add, 2)]
    futures += client.map(fn, [3])
    assert [f.result(timeout=10) for f in futures] == [1001, 2, 1002, 3, 1003]
    del futures, fn, adder
    ex.shutdown()
    gc.collect()
    assert fn_ref() is None, gc.get_referrers(fn_ref())
    assert method_refs() is None, gc.get_referrers(method_refs())
    # a new function may take the freed one's id: it gets its own token, and runs
    assert client.submit(lambda x: x * 10, 3).result(timeout=10) == 30
