"""The Cluster base: a kind that implements only the hooks (here workers are Worker objects
in this process, on a loop of the kind's own) gets scale, add/retire, adapt, restart, the
replacement of dead workers, memory division and close from the base."""

from __future__ import annotations

import logging
import threading
import time
from operator import add

import pytest

from nbcluster import Client
from nbcluster.client.cluster_protocol import ClusterLike
from nbcluster.deploy import Cluster, LocalCluster, WorkerSpec
from nbcluster.errors import ClusterError
from nbcluster.loop_thread import LoopThread
from nbcluster.server.scheduler import Scheduler
from nbcluster.server.worker import Worker
from nbcluster.testing import wait_until

pytestmark = pytest.mark.timeout(60)

GiB = 2**30


def on_loop(loop: LoopThread, fn, *args):
    async def call():
        return fn(*args)
    return loop.run(call())


class ThreadCluster(Cluster):
    """The smallest kind: the four required hooks, plus telling workers a new memory limit
    when ``tell_memory`` (the base asks; a kind that cannot leaves them as they are)."""

    kind = "threads"

    def __init__(self, n_workers: int = 2, host_memory: int = 6 * GiB, tell_memory=True,
                 fail_starts: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.loop = LoopThread("nbcluster-test-kind")
        self.host_memory = host_memory
        self.tell_memory = tell_memory
        self.fail_starts = fail_starts          # the next n worker starts raise
        self.die_at_once: set[str] = set()      # names that end before they are counted
        self.stopped: list[str] = []
        self._start(n_workers)

    def _start_scheduler(self, first: list[WorkerSpec]) -> None:
        self.scheduler = self.loop.run(Scheduler(f"inproc://test-kind-{id(self)}",
                                                 token=self.token).start())
        self.scheduler_address = self.scheduler.address

    def _start_worker(self, spec: WorkerSpec, timeout: float) -> Worker:
        if self.fail_starts:
            self.fail_starts -= 1
            raise RuntimeError(f"{spec.name} could not start")
        w = Worker(self.scheduler_address, nthreads=self.threads_per_worker, name=spec.name,
                   token=self.token, listen_address="inproc://", memory_limit=spec.memory_limit,
                   queues=spec.queues, memory_pause=None, memory_terminate=None,
                   memory_spill=None)
        self.loop.run(w.start(), timeout)
        if spec.name in self.die_at_once:
            self.kill(w)
        return w

    def _stop_worker(self, handle: Worker, grace: float) -> None:
        self.stopped.append(handle.name)
        self.loop.run(handle.close("stopped"))

    def _stop_scheduler(self) -> None:
        try:
            self.loop.run(self.scheduler.close())
        finally:
            self.loop.stop()

    def _host_memory(self, host, n: int) -> int:
        return self.host_memory

    def _set_memory_limits(self, changes: list) -> list:
        if not self.tell_memory:
            return []
        for w, limit in changes:
            on_loop(self.loop, w.set_memory_limit, limit)
        return [w for w, _ in changes]

    # what a kind does when it notices one of its workers died
    def kill(self, w: Worker, why: str = "was killed", replace: bool = True) -> None:
        self.loop.run(w.close("killed"))
        self._worker_exited(w, why, replace=replace)

    def handle(self, address: str) -> Worker:
        return next(e.handle for e in self._running if e.address == address)


def limits(client) -> list:
    return sorted(w["identity"]["memory_limit"]
                  for w in client.scheduler_info()["workers"].values())


def test_the_hooks_are_enough_to_scale_add_retire_and_close():
    with ThreadCluster(n_workers=2, queues=["a"]) as cluster, Client(cluster) as client:
        assert isinstance(cluster, ClusterLike) and cluster.status == "running"
        assert len(cluster.workers) == 2 and cluster.dashboard_link is None
        assert client.submit(add, 1, 2, queue="a").result(timeout=10) == 3
        first = list(cluster.workers)
        cluster.scale(4)
        assert len(cluster.workers) == 4 and cluster.workers[:2] == first
        newest = cluster.workers[2:]
        cluster.scale(2)                               # the newest go first
        assert cluster.workers == first
        assert len(cluster.stopped) == 2
        assert not set(newest) & set(cluster.workers)
        address = cluster.add_worker(queues=["b"])
        assert cluster.handle(address).queues == ["b"]
        assert cluster.wait_for_workers() == 3
        assert client.submit(add, 2, 2, queue="b").result(timeout=10) == 4
        cluster.retire_worker(first[0])
        assert cluster.workers == [first[1], address]
        with pytest.raises(ValueError, match="no worker 'tcp://nowhere:1'"):
            cluster.retire_worker("tcp://nowhere:1")
        with pytest.raises(ValueError, match="scale needs a non-negative int"):
            cluster.scale(-1)
        assert "ThreadCluster" in repr(cluster) and "threads" in repr(cluster)
        assert address in cluster._repr_html_()
    assert cluster.closed and cluster.status == "closed" and not cluster.loop.thread.is_alive()
    cluster.close()                                    # idempotent
    with pytest.raises(ClusterError, match="this ThreadCluster is closed"):
        cluster.scale(1)


def test_auto_memory_is_redivided_and_told_to_running_workers():
    with ThreadCluster(n_workers=2) as cluster, Client(cluster) as client:
        assert limits(client) == [3 * GiB] * 2
        cluster.scale(3)
        wait_until(lambda: limits(client) == [2 * GiB] * 3, "three thirds")
        cluster.retire_worker()
        wait_until(lambda: limits(client) == [3 * GiB] * 2, "two halves again")
        assert "3.00 GiB" in cluster._repr_html_()


def test_a_kind_that_cannot_tell_gives_new_workers_their_share_only():
    with ThreadCluster(n_workers=1, tell_memory=False) as cluster, Client(cluster) as client:
        cluster.scale(3)
        wait_until(lambda: limits(client) == [2 * GiB, 2 * GiB, 6 * GiB], "new shares")


def test_an_explicit_limit_is_each_workers():
    with ThreadCluster(n_workers=1, memory_limit="1GiB") as cluster, Client(cluster) as client:
        cluster.scale(3)
        assert limits(client) == [GiB] * 3


def test_a_dead_worker_is_replaced_from_its_spec(caplog):
    with ThreadCluster(n_workers=2, queues=["q"]) as cluster, Client(cluster) as client:
        victim = cluster.handle(cluster.workers[0])
        with caplog.at_level(logging.WARNING):
            cluster.kill(victim)
            wait_until(lambda: cluster.restarts == 1 and len(cluster.workers) == 2,
                       "the replacement")
        assert f"worker {victim.name} was killed; starting a replacement" in caplog.text
        assert victim.address not in cluster.workers
        assert all(cluster.handle(a).queues == ["q"] for a in cluster.workers)
        wait_until(lambda: len(client.scheduler_info()["workers"]) == 2, "the scheduler to see it")
        assert client.submit(add, 20, 22, queue="q").result(timeout=10) == 42
        cluster.kill(cluster.handle(cluster.workers[0]), replace=False)   # e.g. no scheduler
        wait_until(lambda: len(cluster.workers) == 1 and not cluster._replacing,
                   "the dead worker to be forgotten")
        assert cluster.restarts == 1 and len(cluster.workers) == 1


def test_a_worker_that_dies_before_it_is_counted_is_replaced_too():
    with ThreadCluster(n_workers=1) as cluster:
        cluster.die_at_once.add(f"worker-{1}")           # the next name
        with pytest.raises(ClusterError, match="ended as soon as it started"):
            cluster.add_worker()
        wait_until(lambda: cluster.restarts == 1 and len(cluster.workers) == 2,
                   "the replacement")


def test_replacement_tries_again_then_gives_up(caplog):
    with ThreadCluster(n_workers=1) as cluster:
        cluster.fail_starts = 2
        with caplog.at_level(logging.WARNING):
            cluster.kill(cluster.handle(cluster.workers[0]))
            wait_until(lambda: cluster.restarts == 1, "the third try to start")
        assert caplog.text.count("could not start") == 2
        cluster.fail_starts = 100
        with caplog.at_level(logging.WARNING):
            cluster.kill(cluster.handle(cluster.workers[0]))
            wait_until(lambda: "could not replace worker" in caplog.text, "giving up")
        assert cluster.workers == []


def test_restart_replaces_every_worker_with_the_same_specs():
    with ThreadCluster(n_workers=2, queues=["q"]) as cluster, Client(cluster) as client:
        before = list(cluster.workers)
        future = client.submit(add, 1, 1, queue="q")
        assert future.result(timeout=10) == 2
        client.restart(timeout=20)
        assert len(cluster.workers) == 2 and not set(before) & set(cluster.workers)
        assert all(cluster.handle(a).queues == ["q"] for a in cluster.workers)
        assert client.submit(add, 1, 2, queue="q").result(timeout=10) == 3


def nap(i):
    time.sleep(0.2)   # the task's own run time: work for adaptive scaling to see, not a wait
    return i


def test_adapt_grows_and_shrinks_a_kind_and_scale_ends_it():
    with ThreadCluster(n_workers=1) as cluster, Client(cluster) as client:
        adaptive = cluster.adapt(minimum=1, maximum=3, interval=0.05, wait_count=2)
        futures = client.map(nap, range(30))
        wait_until(lambda: len(cluster.workers) == 3, "growing to 3")
        assert client.gather(futures) == list(range(30))
        del futures
        wait_until(lambda: len(cluster.workers) == 1, "shrinking to 1")
        cluster.scale(2)
        assert not adaptive.running and len(cluster.workers) == 2
        adaptive = cluster.adapt()                     # maximum: the kind's default
        assert adaptive.maximum == 2
    assert not adaptive.running


def test_a_failed_start_stops_what_started_and_raises():
    before = {t for t in threading.enumerate() if t.name == "nbcluster-test-kind"}
    with pytest.raises(RuntimeError, match="could not start"):
        ThreadCluster(n_workers=3, fail_starts=1)
    wait_until(lambda: {t for t in threading.enumerate()
                        if t.name == "nbcluster-test-kind"} <= before, "the loop to stop")


def test_closing_during_a_replacement_leaves_nothing():
    started = threading.Event()
    release = threading.Event()

    class Slow(ThreadCluster):
        block = False

        def _start_worker(self, spec, timeout):
            if self.block:
                started.set()
                release.wait(10)
            return super()._start_worker(spec, timeout)

    cluster = Slow(n_workers=1)
    cluster.block = True
    cluster.kill(cluster.handle(cluster.workers[0]))
    assert started.wait(10)
    closer = threading.Thread(target=cluster.close, name="test-closer")
    closer.start()
    wait_until(lambda: cluster.closed, "close to begin")
    release.set()
    closer.join(20)
    assert not closer.is_alive() and cluster.workers == [] and cluster.restarts == 0
    assert cluster.stopped == ["worker-0", "worker-1"]     # the dead one, then its replacement
    assert not cluster.loop.thread.is_alive()


def test_local_and_ssh_clusters_are_clusters():
    from nbcluster import SSHCluster

    assert issubclass(LocalCluster, Cluster) and issubclass(SSHCluster, Cluster)
    with LocalCluster(n_workers=1, processes=False, dashboard=False) as cluster:
        assert isinstance(cluster, ClusterLike) and cluster.kind == "in-process"
