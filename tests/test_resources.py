"""Worker resources end to end: LocalCluster(resources=), add_worker(resources=),
submit/map(resources=), the scheduler's report of requests no worker can satisfy, the
``--resources`` flag of a real worker process; and client.replicate / client.rebalance."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from nbcluster import Client, LocalCluster
from nbcluster.jupyter.html import snapshot_html
from nbcluster.jupyter.models import ClusterSnapshot
from nbcluster.testing import wait_until

from test_cli import read_line, start, stop

pytestmark = pytest.mark.timeout(30)

_lock = threading.Lock()
_running = {"now": 0, "most": 0}


def on_gpu(x):
    """Counts how many run at once (in-process cluster: one process, shared counters)."""
    with _lock:
        _running["now"] += 1
        _running["most"] = max(_running["most"], _running["now"])
    time.sleep(0.01)            # (work: gives two at once the chance to overlap)
    with _lock:
        _running["now"] -= 1
    return x


def make(n):
    return b"x" * n


@pytest.fixture
def gpu_cluster():
    """Two in-process workers of two threads each; only the second has a GPU."""
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard=False) as cluster:
        gpu_worker = cluster.add_worker(resources={"GPU": 1})
        with Client(cluster) as client:
            yield client, gpu_worker


def test_gpu_tasks_all_run_on_the_gpu_worker_never_two_at_once(gpu_cluster):
    client, gpu_worker = gpu_cluster
    _running.update(now=0, most=0)
    futures = client.map(on_gpu, range(12), resources={"GPU": 1})
    plain = client.map(abs, range(-20, 0))
    assert client.gather(futures) == list(range(12))
    assert client.gather(plain) == list(range(20, 0, -1))
    assert _running["most"] == 1
    holders = client.who_has(futures)
    assert {w for ws in holders.values() for w in ws} == {gpu_worker}
    info = client.scheduler_info()["workers"][gpu_worker]
    assert info["resources"] == info["free_resources"] == {"GPU": 1.0}


def test_a_request_no_worker_can_satisfy_waits_is_shown_and_runs_when_one_joins(gpu_cluster):
    client, _ = gpu_cluster
    fut = client.submit(abs, -3, resources={"GPU": 2})
    note = "1 task waits for resources no worker has: GPU=2"
    wait_until(lambda: client.scheduler_info()["resources"]["note"] == note, "the report")
    assert client.snapshot()["resources"]["impossible"] == {"GPU=2": 1}
    snap = ClusterSnapshot.from_info(client.scheduler_info())   # %cluster status
    assert f"Waiting: {note}" in snap.text() and note in snapshot_html(snap)
    assert fut.status == "pending"
    client.cluster.add_worker(resources="GPU=2")
    assert fut.result(timeout=10) == 3
    assert client.scheduler_info()["resources"]["note"] == ""


def test_bad_requests_are_refused_at_submit_naming_the_problem(gpu_cluster):
    client, _ = gpu_cluster
    with pytest.raises(ValueError, match="the amount of 'GPU' must be a positive number"):
        client.submit(abs, 1, resources={"GPU": 0})
    with pytest.raises(TypeError, match="resources must be a dict"):
        client.map(abs, [1], resources=["GPU"])
    with pytest.raises(ValueError, match="bad resource name"):
        LocalCluster(n_workers=0, processes=False, resources={"G PU": 1})


def test_every_worker_process_of_a_local_cluster_has_its_resources():
    with LocalCluster(n_workers=1, processes=True, dashboard=False,
                      resources={"GPU": 2, "MEM": 16e9}) as cluster, Client(cluster) as client:
        [info] = client.scheduler_info()["workers"].values()
        assert info["resources"] == {"GPU": 2.0, "MEM": 16e9}
        assert client.submit(abs, -1, resources={"GPU": 2, "MEM": 1e9}).result(timeout=10) == 1


def test_the_resources_flag_of_a_worker_process(tmp_path, monkeypatch):
    cli_env = dict(os.environ, NBCLUSTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    cli_env.pop("NBCLUSTER_TOKEN", None)
    bad = subprocess.run([sys.executable, "-m", "nbcluster", "worker", "tcp://127.0.0.1:9",
                          "--resources", "GPU=1,MEM"], capture_output=True, text=True,
                         env=cli_env, timeout=20)
    assert bad.returncode == 1 and "--resources: 'MEM'" in bad.stderr
    assert "NAME=AMOUNT" in bad.stderr and "Traceback" not in bad.stderr
    scheduler = start(["scheduler", "--port", "0", "--dashboard-port", "-1"], cli_env)
    worker = None
    try:
        address = read_line(scheduler, "nbcluster scheduler at").rsplit(" ", 1)[1]
        worker = start(["worker", address, "--resources", "GPU=1,MEM=16e9"], cli_env)
        monkeypatch.setenv("NBCLUSTER_RUNTIME_DIR", cli_env["NBCLUSTER_RUNTIME_DIR"])
        with Client(address) as client:
            client.wait_for_workers(1, timeout=20)
            [info] = client.scheduler_info()["workers"].values()
            assert info["resources"] == {"GPU": 1.0, "MEM": 16e9}
            assert client.submit(abs, -2, resources={"GPU": 1}).result(timeout=10) == 2
    finally:
        stop(*[p for p in (worker, scheduler) if p is not None])


def test_replicate_and_rebalance_on_a_cluster():
    with LocalCluster(n_workers=3, processes=False, dashboard=False) as cluster, \
            Client(cluster) as client:
        workers = sorted(client.scheduler_info()["workers"])
        first = workers[0]
        futures = client.map(make, [100_000 + i for i in range(6)], workers=[first])
        client.gather(futures)
        result = client.replicate(futures[:2])
        assert result["copied"] == 4 and result["failed"] == 0
        assert all(sorted(ws) == workers for ws in client.who_has(futures[:2]).values())
        assert client.replicate(futures[:2], n=1)["freed"] == 4
        assert all(len(ws) == 1 for ws in client.who_has(futures).values())
        result = client.rebalance()
        assert result["freed"] == result["copied"] > 0
        memory = [w["memory"] for w in client.scheduler_info()["workers"].values()]
        assert max(memory) - min(memory) <= 100_010     # within one result of even
        assert client.gather(futures)[3] == b"x" * 100_003
        with pytest.raises(ValueError, match="n must be a positive int"):
            client.replicate(futures, n=0)
