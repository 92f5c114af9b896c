"""When the scheduler of a LocalCluster dies, its workers exit with it; that is not a worker
failure to repair (issue 13, item 8): no replacement is started, the log says once why, and
the cluster's status says so."""

from __future__ import annotations

import logging

import pytest

from nbcluster import LocalCluster
from nbcluster.errors import ClusterError
from nbcluster.testing import wait_until

pytestmark = pytest.mark.timeout(30)


def test_workers_are_not_replaced_once_the_scheduler_is_gone(caplog):
    caplog.set_level(logging.INFO, logger="nbcluster.deploy")
    with LocalCluster(n_workers=2, processes=True, dashboard=False) as cluster:
        spawned = []       # every worker process started from now on
        spawn = cluster._spawn_worker
        cluster._spawn_worker = lambda spec: spawned.append(spec) or spawn(spec)
        assert cluster.status == "running"
        cluster._scheduler_proc.kill()
        wait_until(lambda: not cluster.workers, "the workers to exit with their scheduler")
        wait_until(lambda: not cluster._replacing, "replacements to give up", timeout=8)
        assert spawned == [] and cluster.restarts == 0
        assert cluster.status == "failed"
        assert "scheduler exited" in repr(cluster)
        said = [r.getMessage() for r in caplog.records if "scheduler" in r.getMessage()]
        assert len(said) == 1 and "not replaced" in said[0], said
        assert not [r for r in caplog.records if "replacement" in r.getMessage()]
        with pytest.raises(ClusterError, match="scheduler exited"):
            cluster.scale(3)
    assert cluster.status == "closed"
