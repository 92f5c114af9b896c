"""Adaptive scaling: the pure decision, and a real cluster growing and shrinking."""

from __future__ import annotations

import time

import pytest

from nbcluster import Client, LocalCluster
from nbcluster.deploy.adaptive import decide
from nbcluster.testing import wait_until

pytestmark = pytest.mark.timeout(60)


def idle_workers(n):
    return {f"w{i}": {"processing": 0, "keys": 0} for i in range(n)}


def test_work_waiting_asks_for_workers_within_the_bounds():
    idle = {}
    wanted, retire = decide({"queued": 100}, 50.0, idle_workers(1), 1, 0, 8, idle, 3)
    assert (wanted, retire) == (8, [])                 # 50 s of work, capped at maximum
    wanted, _ = decide({"queued": 10, "processing": 2}, 0.6, idle_workers(1), 2, 0, 8, {}, 3)
    assert wanted == 1                                 # 0.6 s of work: one worker does it
    wanted, _ = decide({"queued": 30}, 9.0, idle_workers(1), 2, 0, 8, {}, 3)
    assert wanted == 5                                 # 9 s over 2 threads a worker
    wanted, _ = decide({"queued": 3}, 30.0, idle_workers(1), 1, 0, 8, {}, 3)
    assert wanted == 3                                 # never more workers than tasks
    wanted, _ = decide({}, 0.0, {}, 1, 2, 8, {}, 3)
    assert wanted == 2                                 # the minimum, even with nothing to do


def test_only_workers_idle_for_wait_count_checks_and_holding_nothing_retire():
    workers = {"busy": {"processing": 1, "keys": 0}, "holder": {"processing": 0, "keys": 5},
               "idle-a": {"processing": 0, "keys": 0}, "idle-b": {"processing": 0, "keys": 0}}
    idle = {}
    assert decide({}, 0.0, workers, 1, 0, 8, idle, 2)[1] == []     # first idle check
    wanted, retire = decide({}, 0.0, workers, 1, 0, 8, idle, 2)
    assert wanted == 0 and sorted(retire) == ["idle-a", "idle-b"]
    workers["idle-a"]["processing"] = 1                           # busy again: count restarts
    assert decide({}, 0.0, workers, 1, 0, 8, idle, 2)[1] == ["idle-b"]
    assert idle["idle-a"] == 0
    del workers["idle-b"]
    decide({}, 0.0, workers, 1, 0, 8, idle, 2)
    assert "idle-b" not in idle                                   # gone workers are forgotten


def nap(i):
    time.sleep(0.2)
    return i


def test_a_cluster_grows_while_work_waits_and_shrinks_when_idle():
    with LocalCluster(n_workers=1, processes=False, dashboard=False) as cluster, \
            Client(cluster) as client:
        adaptive = cluster.adapt(minimum=1, maximum=3, interval=0.05, wait_count=3)
        futures = client.map(nap, range(40))
        wait_until(lambda: len(cluster.workers) == 3, "the cluster to grow to 3 workers")
        assert client.gather(futures) == list(range(40))
        del futures
        wait_until(lambda: len(cluster.workers) == 1, "idle workers to be retired")
        assert adaptive.running and "1..3" in repr(adaptive)
        cluster.scale(2)                                   # manual control ends adapting
        assert not adaptive.running and len(cluster.workers) == 2


def test_adapt_arguments_are_checked():
    with LocalCluster(n_workers=0, processes=False, dashboard=False) as cluster:
        with pytest.raises(ValueError, match="minimum must be a non-negative int"):
            cluster.adapt(minimum=-1)
        with pytest.raises(ValueError, match="maximum must be an int >= max"):
            cluster.adapt(minimum=3, maximum=2)
        adaptive = cluster.adapt(maximum=2)
    assert not adaptive.running                            # closing the cluster stops it


def test_a_worker_that_joins_takes_queued_long_tasks_from_a_busy_one():
    with LocalCluster(n_workers=1, processes=False, dashboard=False) as cluster, \
            Client(cluster) as client:
        first = cluster.workers[0]
        futures = client.map(nap, range(4))        # all sent to the only worker at first
        wait_until(lambda: len(client.who_has(futures)[futures[0].key]) == 0
                   and client.load()["workers"][first]["processing"] == 4,
                   "the four tasks on the first worker")
        second = cluster.add_worker()
        assert client.gather(futures) == [0, 1, 2, 3]
        holders = client.who_has(futures)
        assert any(holders[f.key] == [second] for f in futures), holders
