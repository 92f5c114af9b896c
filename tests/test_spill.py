"""Results over a worker's memory target go to disk and come back when needed, for real."""

from __future__ import annotations

import glob
import os

import pytest

from nbcluster import Client, LocalCluster, wait
from nbcluster.testing import wait_until

pytestmark = pytest.mark.timeout(60)

MB = 2**20


def block(i, nbytes):
    return bytearray([i % 256]) * nbytes


def first_and_length(data):
    data[0] = data[0]                     # a spilled input comes back writable
    return data[0], len(data)


class Unpicklable:
    nbytes = 80 * MB                      # what the worker thinks it weighs

    def __reduce__(self):
        raise TypeError("this object refuses to be pickled")


def make_unpicklable():
    return Unpicklable()


class ExitsWhenPickled:
    nbytes = 80 * MB

    def __reduce__(self):
        raise SystemExit("this object ends whoever pickles it")


def make_exiting():
    return ExitsWhenPickled()


def is_unpicklable(x):
    return type(x).__name__ == "Unpicklable"


def spill_files(cluster):
    return glob.glob(os.path.join(cluster.local_directory, "*", "*.spill"))


@pytest.fixture
def spilling():
    with LocalCluster(n_workers=2, memory_limit=100 * MB, memory_spill=0.5, memory_pause=None,
                      memory_terminate=None, dashboard=False) as cluster, \
            Client(cluster) as client:
        yield cluster, client
    assert not os.path.exists(cluster.local_directory), "spill files left after close"


def test_results_beyond_the_target_are_spilled_and_read_back(spilling):
    cluster, client = spilling
    a, b = cluster.workers
    blocks = [client.submit(block, i, 20 * MB, workers=[a]) for i in range(6)]   # 120 MiB on A
    wait(blocks, timeout=30)
    wait_until(lambda: len(spill_files(cluster)) >= 3, "spill files on disk")
    metrics = lambda: client.scheduler_info()["workers"][a]["metrics"]   # noqa: E731
    wait_until(lambda: metrics().get("spilled", 0) >= 60 * MB, "the heartbeat's spilled bytes")
    # used on the worker that spilled them, and fetched by the other worker from disk
    here = client.gather([client.submit(first_and_length, x, workers=[a]) for x in blocks])
    there = client.gather([client.submit(first_and_length, x, workers=[b]) for x in blocks])
    assert here == there == [(i, 20 * MB) for i in range(6)]
    assert client.gather(blocks[0]) == block(0, 20 * MB)          # and to the client
    del blocks
    wait_until(lambda: spill_files(cluster) == [],
               "spill files removed once their futures are released")


def test_a_value_that_cannot_be_pickled_stays_in_memory(spilling):
    cluster, client = spilling
    a = cluster.workers[0]
    odd = client.submit(make_unpicklable, workers=[a])
    assert client.submit(is_unpicklable, odd, workers=[a]).result(timeout=20) is True
    small = client.submit(block, 1, 1 * MB, workers=[a])          # goes to disk instead
    wait_until(lambda: len(spill_files(cluster)) == 1, "the picklable value on disk")
    assert client.submit(len, small, workers=[a]).result(timeout=20) == 1 * MB
    assert client.submit(is_unpicklable, odd, workers=[a]).result(timeout=20) is True


def test_a_value_whose_pickling_raises_system_exit_stays_and_spilling_goes_on(spilling):
    cluster, client = spilling
    a = cluster.workers[0]
    odd = client.submit(make_exiting, workers=[a])
    assert client.submit(type, odd, workers=[a]).result(timeout=20).__name__ == "ExitsWhenPickled"
    small = client.submit(block, 1, 1 * MB, workers=[a])     # the spill thread still writes
    wait_until(lambda: len(spill_files(cluster)) == 1, "the picklable value on disk")
    assert client.submit(len, small, workers=[a]).result(timeout=20) == 1 * MB
