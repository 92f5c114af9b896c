"""The engine issue's reference block, in process and with real processes."""

from operator import add

import pytest

from nbcluster import Client, LocalCluster


@pytest.mark.parametrize("processes", [False, True], ids=["inproc", "processes"])
def test_reference_block(processes):
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=processes) as cluster, \
            Client(cluster) as client:
        assert client.submit(add, 1, 1).result() == 2
        futures = [client.submit(add, i, i) for i in range(1000)]
        assert client.gather(futures) == [2 * i for i in range(1000)]
        total = client.submit(sum, futures[:100])        # a list of futures is a dependency
        assert total.result() == 9900
        x = client.submit(add, 1, 2)
        y = client.submit(add, x, 3)                     # a future as an argument is a dependency
        assert y.result() == 6
