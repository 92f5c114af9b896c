"""memory_limit="auto" is the machine's memory shared among the workers there are, however
many that becomes: scale() re-divides it (new workers start with their share, the others are
told); an explicit limit is each worker's whatever their number."""

from __future__ import annotations

import psutil
import pytest

from nbcluster import Client, LocalCluster
from nbcluster.protocol import messages as m
from nbcluster.protocol.framing import decode, encode
from nbcluster.state.scheduler_state import SchedulerState
from nbcluster.state.instructions import Send, Spill
from nbcluster.state.worker_state import WorkerState
from nbcluster.testing import wait_until

pytestmark = pytest.mark.timeout(90)

MB = 2**20
TOTAL = psutil.virtual_memory().total


def limits(client) -> list:
    return sorted(w["identity"]["memory_limit"] for w in client.scheduler_info()["workers"].values())


def test_a_new_limit_moves_the_spill_limit_spills_what_is_over_and_tells_the_scheduler():
    w = WorkerState("tcp://me:1", 1, memory_limit=100 * MB, pause_at=None, terminate_at=None,
                    spill_at=0.5)
    w.compute(m.Compute("a", "fn", [1], None, {}, True, 0, None, 0))
    w.task_finished("a", 40 * MB, 1.0, 2.0, False, None, "bytes")
    assert w.spilled == 0                                # 40 MiB under 50 MiB
    out = w.set_memory_limit(60 * MB)                    # spill above 30 MiB now
    assert w.memory_limit == 60 * MB and w.spill_limit == 30 * MB
    assert Send(m.MemoryLimit(60 * MB)) in out
    assert Spill({"a": 40 * MB}) in out and w.spilled == 40 * MB
    assert decode(encode([m.MemoryLimit(60 * MB)])) == [m.MemoryLimit(60 * MB)]   # well typed


def test_the_scheduler_shows_a_workers_new_limit():
    st = SchedulerState()
    st.add_worker("tcp://w:1", 1, "w", {"memory_limit": 100, "pid": 1}, 0.0)
    st.handle("tcp://w:1", [m.MemoryLimit(50)], 1.0)
    assert st.workers["tcp://w:1"].identity == {"memory_limit": 50, "pid": 1}


@pytest.mark.parametrize("start", [2, 0])
def test_scaling_an_in_process_cluster_redivides_auto_memory(start):
    with LocalCluster(n_workers=start, processes=False, dashboard=False) as cluster, \
            Client(cluster) as client:
        cluster.scale(3)
        assert limits(client) == [TOTAL // 3] * 3
        assert cluster.memory_limit == TOTAL // 3
        cluster.scale(1)
        assert limits(client) == [TOTAL]
        cluster.add_worker()
        assert limits(client) == [TOTAL // 2] * 2
        cluster.retire_worker()
        assert limits(client) == [TOTAL]


def test_an_explicit_limit_stays_as_given_when_scaling():
    with LocalCluster(n_workers=1, processes=False, dashboard=False,
                      memory_limit="1GiB") as cluster, Client(cluster) as client:
        cluster.scale(3)
        assert limits(client) == [2**30] * 3
        cluster.scale(2)
        assert limits(client) == [2**30] * 2


def test_scaling_worker_processes_redivides_auto_memory():
    with LocalCluster(n_workers=1, dashboard=False) as cluster, Client(cluster) as client:
        assert limits(client) == [TOTAL]
        cluster.scale(3)
        # each process has applied its share when scale returns (the report to the scheduler
        # comes from the worker's own state); the scheduler hears it over another connection
        wait_until(lambda: limits(client) == [TOTAL // 3] * 3, "three thirds")
        cluster.scale(2)
        wait_until(lambda: limits(client) == [TOTAL // 2] * 2, "two halves")
        survivor = cluster.workers[0]
        cluster.retire_worker()
        wait_until(lambda: limits(client) == [TOTAL], "the whole machine for the last one")
        assert cluster.workers == [survivor]
