"""The client API behaves as documented and as users of dask and concurrent.futures expect:
key prefixes, scatter shapes, pure keys, durations as text, clear errors for misuse,
wait_for_workers, retry, and as_completed's batches."""

from __future__ import annotations

import collections
import queue
import threading

import pytest

from nbcluster import Client, LocalCluster, as_completed, wait

pytestmark = pytest.mark.timeout(60)


GATE = threading.Event()   # in-process workers share this module: tasks wait on it


def inc(x):
    return x + 1


def blocked():
    return GATE.wait(30)


@pytest.fixture
def gate():
    GATE.clear()
    yield GATE
    GATE.set()


# ---------------------------------------------------------------------- keys
def test_map_key_is_a_prefix_of_every_key(client):
    futures = client.map(inc, range(3), key="load")
    assert all(f.key.startswith("load-") for f in futures)
    assert len({f.key for f in futures}) == 3
    assert client.gather(futures) == [1, 2, 3]
    assert client.scheduler_info()["done_by_prefix"].get("load") == 3


def test_map_with_a_list_of_keys_needs_one_per_task(client):
    futures = client.map(inc, [1, 2], key=["a-1", "b-2"])
    assert [f.key for f in futures] == ["a-1", "b-2"]
    assert client.gather(futures) == [2, 3]
    with pytest.raises(ValueError, match="3 keys for 2 tasks"):
        client.map(inc, [1, 2], key=["c-1", "c-2", "c-3"])
    with pytest.raises(TypeError, match="key must be a name"):
        client.map(inc, [1], key=7)


calls: list = []


def counted(x):
    calls.append(x)
    return x * 10


def test_pure_true_gives_the_same_task_for_the_same_call(client):
    calls.clear()
    a = client.submit(counted, 4, pure=True)
    b = client.submit(counted, 4, pure=True)
    c = client.submit(counted, 5, pure=True)
    assert a.key == b.key != c.key and a.key.startswith("counted-")
    assert client.gather([a, b, c]) == [40, 40, 50]
    assert sorted(calls) == [4, 5]                  # the repeated call ran once
    assert [f.key for f in client.map(counted, [4, 5], pure=True)] == [a.key, c.key]
    d, e = client.submit(counted, 4), client.submit(counted, 4, pure=False)
    assert len({a.key, d.key, e.key}) == 3          # by default every call is a task of its own
    with pytest.raises(TypeError, match="pure must be True or False"):
        client.submit(counted, 4, pure="yes")


# ---------------------------------------------------------------------- scatter shapes
Point = collections.namedtuple("Point", "x y")


@pytest.mark.parametrize("data", [[1, 2], (1, 2), {1, 2}, frozenset({1, 2}), Point(1, 2),
                                  range(3), {"a-1": 1, "b-1": 2}])
def test_scatter_returns_the_shape_it_was_given(client, data):
    futures = client.scatter(data)
    expected_type = list if isinstance(data, range) else type(data)
    assert type(futures) is expected_type
    assert client.gather(futures) == (list(data) if isinstance(data, range) else data)


# ---------------------------------------------------------------------- misuse
def test_wait_with_two_futures_says_to_pass_a_list(client):
    x, y = client.submit(inc, 1), client.submit(inc, 2)
    with pytest.raises(TypeError, match=r"wait\(\[x, y\]\)"):
        wait(x, y)
    with pytest.raises(TypeError, match="takes futures.*int 3"):
        wait([x, 3])
    assert wait([x, y]).not_done == set()


def test_as_completed_of_plain_values_is_refused(client):
    with pytest.raises(TypeError, match="as_completed takes futures.*int 1"):
        as_completed([1, 2])
    with pytest.raises(TypeError, match="as_completed takes a future or a collection"):
        as_completed(5)


def test_map_over_a_queue_or_a_non_iterable_says_what_to_pass(client):
    q: queue.Queue = queue.Queue()
    q.put(1)
    with pytest.raises(TypeError, match="does not consume queues; pass a list"):
        client.map(inc, q)
    with pytest.raises(TypeError, match="int, which is not iterable: pass a list"):
        client.map(inc, 5)
    with pytest.raises(TypeError, match="at least one iterable"):
        client.map(inc)
    assert client.gather(client.map(inc, [1])) == [2]    # nothing was broken by the refusals


# ---------------------------------------------------------------------- durations as text
def test_timeouts_take_durations_as_text(client, gate):
    slow = client.submit(blocked)
    with pytest.raises(TimeoutError, match="within 0.05 s"):
        slow.result(timeout="50 ms")
    with pytest.raises(TimeoutError):
        client.gather([slow], timeout="10ms")
    with pytest.raises(TimeoutError):
        wait([slow], timeout="0.01s")
    with pytest.raises(TimeoutError):
        next(as_completed([slow], timeout="10 ms"))
    with pytest.raises(ValueError, match="timeout must be seconds or a duration.*'soon'"):
        slow.result(timeout="soon")
    gate.set()
    assert slow.result(timeout="5 s") is True


# ---------------------------------------------------------------------- wait_for_workers
def test_wait_for_workers():
    with LocalCluster(n_workers=0, processes=False) as cluster, Client(cluster) as client:
        with pytest.raises(TimeoutError, match="0 of 1 workers connected within 0.1 s"):
            client.wait_for_workers(1, timeout="100 ms")
        cluster.scale(2)
        assert client.wait_for_workers(2, timeout=30) == 2
        assert client.wait_for_workers(0) == 2
        with pytest.raises(ValueError, match="n_workers"):
            client.wait_for_workers(-1)


# ---------------------------------------------------------------------- retry
attempts: list = []


def flaky(x):
    attempts.append(x)
    if len(attempts) == 1:
        raise ValueError("first attempt fails")
    return x


def test_future_retry_runs_a_failed_task_and_its_failed_inputs_again(client):
    attempts.clear()
    a = client.submit(flaky, 3)
    b = client.submit(inc, a)
    with pytest.raises(ValueError, match="first attempt fails"):
        b.result()
    assert a.status == b.status == "error"
    b.retry()
    assert b.status == "pending"
    assert b.result() == 4 and a.result() == 3
    assert attempts == [3, 3]
    done = client.submit(inc, 1)
    done.result()
    done.retry()                                 # not failed: nothing happens
    assert done.status == "finished" and done.result() == 2


# ---------------------------------------------------------------------- as_completed batches
def test_as_completed_has_ready_and_next_batch(client, gate):
    fast = client.map(inc, range(3))
    slow = client.submit(blocked)
    wait(fast)
    ac = as_completed(fast + [slow])
    assert ac.has_ready()
    assert sorted(f.key for f in ac.next_batch()) == sorted(f.key for f in fast)
    assert not ac.has_ready()
    assert ac.next_batch(block=False) == []
    gate.set()
    assert ac.next_batch() == [slow]
    assert ac.is_empty() and ac.next_batch() == []


def test_task_options_take_durations_as_text(client, gate):
    from nbcluster.errors import TaskTimeoutError

    stopped = client.submit(blocked, timeout="100 ms")
    with pytest.raises(TaskTimeoutError, match="its timeout"):
        stopped.result(timeout=20)
    gate.set()
    later = client.submit(inc, 1, countdown="50ms", expires="1 minute")
    assert later.result(timeout=20) == 2
    assert client.submit(inc, 2, retries=1, retry_backoff="1s").result(timeout=20) == 3
    with pytest.raises(ValueError, match="countdown must be a non-negative number of seconds "
                                         "or a duration.*'in a while'"):
        client.submit(inc, 1, countdown="in a while")
