"""Tasks that submit tasks (issue 17): nbcluster.get_client() in a task, secede/rejoin, the
automatic secede of a task waiting on its client, futures returned from tasks."""

from __future__ import annotations

import threading

import pytest

import nbcluster
from nbcluster import Client, LocalCluster
from nbcluster.errors import ClusterError

pytestmark = pytest.mark.timeout(30)

CUTOFF = 16     # below this, fib is computed directly: fib(25) is 9 levels of real recursion


def fib(n: int) -> int:
    if n < CUTOFF:
        a, b = 0, 1
        for _ in range(n):
            a, b = b, a + b
        return a
    client = nbcluster.get_client()
    a, b = client.gather([client.submit(fib, n - 1), client.submit(fib, n - 2)])
    return a + b


@pytest.fixture(scope="module")
def two_workers():
    """2 single-thread worker processes: without secede, 2 waiting tasks would hold both."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster, \
            Client(cluster) as client:
        yield client


@pytest.fixture
def no_leftovers():    # the module's cluster outlives each test (the autouse check's own)
    yield


def test_fib_by_recursive_submits_on_two_single_thread_workers(two_workers):
    assert two_workers.submit(fib, 25).result(timeout=20) == 75025
    # every worker's threads are free again: seceded threads ended, none waits to rejoin
    info = two_workers.scheduler_info()["workers"]
    assert all(w["processing"] == 0 for w in info.values())


def search(path: tuple, depth: int, width: int) -> list:
    """A tree search: each node spawns a search of each child and collects the leaves whose
    digits sum to a multiple of 3."""
    if depth == 0:
        return [path] if sum(path) % 3 == 0 else []
    client = nbcluster.get_client()
    futures = [client.submit(search, path + (i,), depth - 1, width) for i in range(width)]
    found = []
    for part in client.gather(futures):
        found.extend(part)
    return found


def test_a_tree_search_spawns_sub_searches(two_workers):
    found = two_workers.submit(search, (), 3, 4).result(timeout=20)
    import itertools

    expected = [p for p in itertools.product(range(4), repeat=3) if sum(p) % 3 == 0]
    assert sorted(found) == expected


def make_futures(n: int) -> list:
    client = nbcluster.get_client()
    return [client.submit(pow, i, 2) for i in range(n)]


def test_futures_made_in_a_task_come_back_to_the_notebook(two_workers):
    outer = two_workers.submit(make_futures, 5)
    inner = outer.result(timeout=10)
    assert all(isinstance(f, nbcluster.Future) and f.client is two_workers for f in inner)
    del outer     # the task's client lets go of them with its result: the notebook holds them
    import gc

    gc.collect()
    assert two_workers.gather(inner, timeout=10) == [i * i for i in range(5)]


def one_client_per_worker(_):
    return id(nbcluster.get_client()), nbcluster.get_client().id


def test_one_client_per_worker_reused_by_its_tasks(two_workers):
    ids = two_workers.gather(two_workers.map(one_client_per_worker, range(20)), timeout=10)
    by_worker = dict(ids)
    assert 1 <= len(by_worker) <= 2 and len(set(by_worker.values())) == len(by_worker)


def waits_after_secede(event_key: str) -> str:
    nbcluster.secede()
    nbcluster.secede()          # twice: nothing more
    nbcluster.rejoin()
    nbcluster.rejoin()          # not seceded any more: nothing
    return threading.current_thread().name


def test_secede_and_rejoin_by_hand(two_workers):
    assert two_workers.submit(waits_after_secede, "x").result(timeout=10).startswith(
        "nbcluster-task")


def test_get_client_outside_a_task_without_a_client_says_what_to_do():
    from nbcluster.client import client as client_module

    saved = list(client_module._current)
    client_module._current.clear()
    try:
        with pytest.raises(ClusterError, match="create one with nbcluster.Client"):
            nbcluster.get_client()
    finally:
        client_module._current[:] = saved
    with pytest.raises(ClusterError, match="inside a task"):
        nbcluster.secede()


def produce(n: int) -> int:
    """A pipeline's first stage, as a task: results go into a Queue the next stage reads."""
    queue = nbcluster.Queue("stage-1")
    client = nbcluster.get_client()
    for i in range(n):
        queue.put(client.submit(pow, i, 2))     # futures: their results stay on the workers
    return n


def count_under_lock(name: str) -> int:
    with nbcluster.Lock(name):                   # the task's own client holds the lease
        variable = nbcluster.Variable(name)
        value = variable.get(timeout=5) + 1
        variable.set(value)
    return value


def test_coordination_primitives_work_inside_tasks(two_workers):
    client = two_workers
    assert client.submit(produce, 5).result(timeout=20) == 5
    queue = nbcluster.Queue("stage-1", client=client)
    got = [queue.get(timeout=10) for _ in range(5)]
    assert sorted(f.result(timeout=10) for f in got) == [0, 1, 4, 9, 16]
    nbcluster.Variable("count", client=client).set(0)
    done = client.gather(client.map(count_under_lock, ["count"] * 6), timeout=20)
    assert sorted(done) == [1, 2, 3, 4, 5, 6]   # each saw the last one's write: no lost update
