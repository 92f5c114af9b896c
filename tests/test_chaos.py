"""Chaos (issue 13): worker processes SIGKILLed while a graph with dependencies runs; every
result must still come back right (recomputed from lineage on the replacements LocalCluster
starts). ``python -m benchmarks.soak`` does the same for as long as you like."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest

from nbcluster import Client, LocalCluster

pytestmark = pytest.mark.timeout(120)


def step(x, i):
    time.sleep(0.01)       # the task's run time (the work being killed), not a wait
    return x * 3 + i


def total(xs):
    return sum(xs)


def test_results_are_right_while_workers_are_sigkilled():
    rng = random.Random(13)
    chains, length = 100, 15
    expected = []
    for c in range(chains):
        x = c
        for i in range(length):
            x = x * 3 + i
        expected.append(x)
    with LocalCluster(n_workers=3, threads_per_worker=2, dashboard=False) as cluster, \
            Client(cluster) as client:
        stop, killed = threading.Event(), []

        def killer():
            while not stop.wait(rng.uniform(0.3, 0.6)) and len(killed) < 4:
                pids = cluster.worker_pids()
                if len(pids) < 3:
                    continue       # a replacement is on its way: wait for it
                address, pid = rng.choice(sorted(pids.items()))
                os.kill(pid, signal.SIGKILL)
                killed.append(address)

        thread = threading.Thread(target=killer, name="chaos-killer")
        thread.start()
        try:
            ends = []
            for c in range(chains):
                x = client.submit(step, c, 0)
                for i in range(1, length):
                    x = client.submit(step, x, i)
                ends.append(x)
            grand = client.submit(total, ends)
            results = client.gather(ends, timeout=90)
            assert grand.result(timeout=30) == sum(expected)
        finally:
            stop.set()
            thread.join(10)
        assert results == expected
        assert len(killed) >= 2, f"only {len(killed)} workers were killed: too little chaos"
        client.wait_for_workers(3, timeout=30)      # replaced, and the cluster still works
        assert client.submit(step, 1, 1).result(timeout=10) == 4
