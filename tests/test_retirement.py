"""Retiring workers gracefully on a real cluster: their results move to the others (no
recomputation), and a worker with a lifetime retires by itself and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nbcluster import Client, LocalCluster, wait
from nbcluster.testing import wait_until

PAYLOAD = 200_000     # large enough that the result does not ride along with FINISHED


def where_computed(i):
    """Which process computed it (a recompute elsewhere would say another pid)."""
    import os

    return os.getpid(), i, b"x" * PAYLOAD


def _pids(client):
    return {a: w["identity"]["pid"] for a, w in client.scheduler_info()["workers"].items()}


@pytest.fixture
def cluster_client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard=False) as cluster, \
            Client(cluster, set_as_default=False) as client:
        yield cluster, client


def _results_on(client, address, n=4):
    futures = [client.submit(where_computed, i, workers=[address], pure=False)
               for i in range(n)]
    wait(futures)   # done, values still on the worker
    return futures


@pytest.mark.timeout(60)
def test_client_retire_workers_moves_results_and_the_cluster_does_not_replace(cluster_client):
    cluster, client = cluster_client
    leaving, staying = cluster.workers
    pid = _pids(client)[leaving]
    futures = _results_on(client, leaving)
    assert client.retire_workers([leaving]) == [leaving]
    assert cluster.workers == [staying]
    assert set(client.scheduler_info()["workers"]) == {staying}
    for i, f in enumerate(futures):
        got_pid, got_i, payload = f.result(timeout=10)
        assert (got_pid, got_i, len(payload)) == (pid, i, PAYLOAD)   # copied, not recomputed
    assert cluster.restarts == 0


@pytest.mark.timeout(60)
def test_scaling_down_hands_results_over(cluster_client):
    cluster, client = cluster_client
    leaving = cluster.workers[-1]            # scale removes the newest first
    pid = _pids(client)[leaving]
    futures = _results_on(client, leaving)
    cluster.scale(1)
    assert len(cluster.workers) == 1
    assert [f.result(timeout=10)[0] for f in futures] == [pid] * len(futures)


@pytest.mark.timeout(30)
def test_retire_unknown_worker_names_it(cluster_client):
    cluster, client = cluster_client
    with pytest.raises(ValueError, match="tcp://127.0.0.1:1"):
        client.retire_workers(["tcp://127.0.0.1:1"])
    with pytest.raises(TypeError, match="list of addresses"):
        client.retire_workers("tcp://127.0.0.1:1")   # type: ignore[arg-type]
    assert len(cluster.workers) == 2


@pytest.mark.timeout(60)
def test_cli_worker_with_a_lifetime_retires_and_its_results_stay(tmp_path):
    env = dict(os.environ)
    env.pop("NBCLUSTER_TOKEN", None)
    # the worker unpickles this module's function by reference
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), env.get("PYTHONPATH", "")])
    with LocalCluster(n_workers=1, processes=True, dashboard=False) as cluster, \
            Client(cluster, set_as_default=False) as client:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nbcluster", "worker", cluster.scheduler_address,
             "--token-stdin", "--name", "short-lived", "--lifetime", "3s",
             "--lifetime-stagger", "0s"],
            stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            proc.stdin.write(cluster.token.encode() + b"\n")
            proc.stdin.close()
            client.wait_for_workers(2, timeout=20)
            [address] = [a for a, w in client.scheduler_info()["workers"].items()
                         if w["name"] == "short-lived"]
            futures = _results_on(client, address)
            assert proc.wait(20) == 0          # it retired by itself
            err = proc.stderr.read().decode()
            assert "retired" in err and "lifetime" in err, err
            assert [f.result(timeout=10)[0] for f in futures] == [proc.pid] * len(futures)
            wait_until(lambda: len(client.scheduler_info()["workers"]) == 1,
                       "the retired worker to be gone")
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            proc.stderr.close()


def test_lifetime_options_are_checked():
    from nbcluster.server.worker_lifetime import end_of_life

    assert end_of_life(60) == 60
    import random

    times = {end_of_life(60, 10, random.Random(i)) for i in range(20)}
    assert all(50 <= t <= 70 for t in times) and len(times) > 1
    with pytest.raises(ValueError, match="lifetime must be positive"):
        end_of_life(0)
    with pytest.raises(ValueError, match="stagger"):
        end_of_life(10, -1)
    r = subprocess.run([sys.executable, "-m", "nbcluster", "worker", "tcp://127.0.0.1:9",
                        "--lifetime", "soon"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "--lifetime" in r.stderr
