"""Real processes and real TCP on 127.0.0.1: worker death, recovery, replacement."""

import os
import signal
import threading
import time
from operator import add

import pytest

from nbcluster import Client
from nbcluster.errors import KilledWorkerError
from nbcluster.testing import wait_until


def slow_inc(x, delay=0.01):
    time.sleep(delay)
    return x + 1


def test_sigkill_worker_loses_nothing(proc_cluster, pclient):
    # 100 independent tasks and a chain of 100, all in flight when a worker dies
    independent = pclient.map(slow_inc, range(100))
    x = pclient.submit(slow_inc, 0)
    chain = [x]
    for _ in range(99):
        x = pclient.submit(slow_inc, x)
        chain.append(x)
    started = threading.Event()
    independent[10].add_done_callback(lambda f: started.set())
    assert started.wait(20)
    victim = proc_cluster.workers[0]
    os.kill(proc_cluster.worker_pids()[victim], signal.SIGKILL)
    assert pclient.gather(independent, timeout=60) == list(range(1, 101))
    assert pclient.gather(chain, timeout=60) == list(range(1, 101))
    # LocalCluster started a replacement process
    wait_until(lambda: len(proc_cluster.workers) == 2 and victim not in proc_cluster.workers,
               "the cluster to replace the killed worker")
    wait_until(lambda: len(pclient.scheduler_info()["workers"]) == 2,
               "the scheduler to see two workers")
    assert proc_cluster.restarts == 1
    assert pclient.submit(add, 1, 1).result(timeout=10) == 2


def test_results_held_by_dead_worker_are_recomputed(proc_cluster, pclient):
    futures = pclient.map(lambda i: list(range(i * 1000)), range(20))
    pclient.gather(futures)   # all in memory, spread over both workers
    who = pclient.who_has(futures)
    victim = proc_cluster.workers[0]
    on_victim = [f for f in futures if who[f.key] == [victim]]
    assert on_victim, "expected some results on the first worker"
    os.kill(proc_cluster.worker_pids()[victim], signal.SIGKILL)
    wait_until(lambda: victim not in pclient.scheduler_info()["workers"],
               "the scheduler to see the killed worker go")
    total = pclient.submit(lambda parts: sum(len(p) for p in parts), futures)
    assert total.result(timeout=60) == sum(i * 1000 for i in range(20))


def crash():
    os._exit(1)


def test_task_that_kills_workers_fails_after_three(proc_cluster, pclient):
    f = pclient.submit(crash)
    with pytest.raises(KilledWorkerError, match="3 workers"):
        f.result(timeout=60)
    wait_until(lambda: len(pclient.scheduler_info()["workers"]) == 2,
               "the scheduler to see two workers again")
    assert pclient.submit(add, 2, 3).result(timeout=20) == 5


def test_client_starts_machine_sized_cluster():
    with Client() as client:
        assert client.submit(add, 1, 1).result(timeout=10) == 2
        n = len(client.scheduler_info()["workers"])
        assert n == (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    assert client.cluster.closed


def test_scale_up_and_down(proc_cluster, pclient):
    proc_cluster.scale(3)
    wait_until(lambda: len(pclient.scheduler_info()["workers"]) == 3, "three workers")
    proc_cluster.scale(1)
    wait_until(lambda: len(pclient.scheduler_info()["workers"]) == 1, "one worker")
    assert pclient.gather(pclient.map(slow_inc, range(5))) == [1, 2, 3, 4, 5]
    assert proc_cluster.restarts == 0


def test_worker_to_worker_transfer_of_numpy(proc_cluster, pclient):
    np = pytest.importorskip("numpy")
    a, b = proc_cluster.workers
    x = pclient.submit(np.ones, 5_000_000, workers=[a])
    s = pclient.submit(np.sum, x, workers=[b])
    assert s.result(timeout=30) == 5_000_000
    assert pclient.who_has([s])[s.key] == [b]


def test_restart_replaces_worker_processes_and_cancels_every_future(proc_cluster, pclient):
    from nbcluster import CancelledError

    kept = pclient.submit(add, 1, 2)
    assert kept.result() == 3
    stuck = pclient.submit(time.sleep, 60)          # a task that would hold a worker for a minute
    with Client(proc_cluster) as other:
        theirs = other.submit(add, 2, 2)
        assert theirs.result() == 4
        old_pids = set(proc_cluster.worker_pids().values())
        started = time.monotonic()
        pclient.restart(timeout=30)
        assert time.monotonic() - started < 15      # the sleeping worker is killed after 2 s
        assert len(proc_cluster.workers) == 2
        assert not old_pids & set(proc_cluster.worker_pids().values())
        for future in (kept, stuck, theirs):
            assert future.status == "cancelled"
            with pytest.raises(CancelledError, match="restarted"):
                future.result(timeout=5)
        assert pclient.scheduler_info()["tasks"] == {}
        assert pclient.gather(pclient.map(add, range(10), range(10))) == list(range(0, 20, 2))
        assert other.submit(add, 5, 5).result(timeout=10) == 10
