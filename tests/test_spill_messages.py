"""What a worker says about results it keeps in memory instead of spilling: a plain value is
no problem (INFO, once); a real failure is a warning once per reason, not once per key. And
reading spilled values back does not outrun the disk (so the demo notebook's worker stays
under its limit)."""

from __future__ import annotations

import glob
import logging
import os

import pytest

from nbcluster.protocol import messages as m
from nbcluster import Client, LocalCluster, wait
from nbcluster.server.spill import SpillStore
from nbcluster.state.instructions import Spill, Unspill
from nbcluster.state.worker_state import WorkerState
from nbcluster.testing import wait_until

pytestmark = pytest.mark.timeout(60)

MB = 2**20


def test_plain_values_are_not_written_and_said_once_at_info(tmp_path, caplog):
    store = SpillStore(str(tmp_path))
    try:
        assert store.write("x", 1.5, 24) is None          # travels inline: no file
        assert os.listdir(tmp_path) == []
        caplog.set_level(logging.DEBUG, logger="nbcluster.worker.spill")
        for i in range(50):
            store.kept_in_memory(f"x-{i}", None)
        for i in range(3):
            store.kept_in_memory(f"odd-{i}", TypeError("refuses to be pickled"))
        store.kept_in_memory("full", OSError(28, "No space left on device"))
        by_level = {}
        for r in caplog.records:
            by_level.setdefault(r.levelname, []).append(r.getMessage())
        assert len(by_level["INFO"]) == 1 and "plain values" in by_level["INFO"][0]
        assert len(by_level["WARNING"]) == 2           # one per reason
        assert "odd-0" in by_level["WARNING"][0] and "No space" in by_level["WARNING"][1]
        assert len(by_level["DEBUG"]) == 49 + 2
    finally:
        store.close()


def plain(i):
    return i / 7


def block(i, nbytes):
    return bytearray([i % 256]) * nbytes


def test_a_worker_over_its_spill_limit_with_plain_results_warns_nothing(capfd):
    with LocalCluster(n_workers=1, memory_limit=100 * MB, memory_spill=0.5, memory_pause=None,
                      memory_terminate=None, dashboard=False) as cluster, \
            Client(cluster) as client:
        floats = client.map(plain, range(40))           # the least recently used results
        wait(floats, timeout=20)
        blocks = [client.submit(block, i, 20 * MB) for i in range(3)]   # 60 MiB: over 50
        wait(blocks, timeout=20)
        files = lambda: glob.glob(os.path.join(cluster.local_directory, "*", "*.spill"))  # noqa
        wait_until(lambda: len(files()) >= 1, "a block on disk")
        # a round trip through the worker's loop: the outcomes of the floats came before
        assert client.submit(plain, 7).result(timeout=20) == 1.0
        assert client.gather(floats) == [i / 7 for i in range(40)]
    err = capfd.readouterr().err
    assert "WARNING" not in err and "not worth spilling" not in err, err


def test_a_value_read_back_stays_on_disk_while_others_are_still_being_written():
    w = WorkerState("tcp://me:1", 1, memory_limit=100 * MB, pause_at=None, terminate_at=None,
                    spill_at=0.5)                      # spill above 50 MiB in memory

    def result(key):
        w.compute(m.Compute(key, "fn", [1], None, {}, True, 0, None, 0))
        return w.task_finished(key, 20 * MB, 1.0, 2.0, False, None, "bytes")

    result("a"), result("b")
    assert Spill({"a": 20 * MB}) in result("c") and w.writing == {"a"}
    w.spill_written("a")
    assert w.unspilled("a") == [Unspill("a"), Spill({"b": 20 * MB})]   # a back, b pushed out
    assert Spill({"c": 20 * MB}) in result("d") and w.writing == {"b", "c"}
    w.spill_written("c")
    assert w.unspilled("c") == [] and w.tasks["c"].spilled   # b still in memory, being written
    w.spill_written("b")
    assert w.unspilled("c")[0] == Unspill("c")               # the disk caught up
