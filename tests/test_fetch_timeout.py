"""Every wait honours its timeout, fetches included (issue 13, item 4): a value that stays on a
worker is fetched after the task ends, and a holder that never answers must not hold
``result(timeout=)`` or ``gather(timeout=)`` past the deadline."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

import nbcluster
from nbcluster import wait
from nbcluster.comm import listen
from nbcluster.testing import wait_until

BIG = 100_000       # np.arange(BIG) is over the inline limit: it stays on its worker


@pytest.fixture
def silent_holder(client, inproc_cluster):
    """The address of a server that takes connections (with the cluster's token) and never
    answers a request: a worker stuck, or its network gone."""
    comms = []

    def on_comm(comm):
        comms.append(comm)
        comm.start(lambda batch: None, lambda reason: None)

    listener = asyncio.run_coroutine_threadsafe(
        listen("tcp://127.0.0.1:0", on_comm, inproc_cluster.token), client.loop).result(5)
    yield listener.address

    async def stop():
        listener.stop()
        for comm in comms:
            comm.abort("test over")
    asyncio.run_coroutine_threadsafe(stop(), client.loop).result(5)


def held_by(client, holder):
    f = client.submit(np.arange, BIG)
    wait([f])
    f._record.holders = [holder]       # as if DONE had named it
    return f


def pending_requests(client) -> int:
    return len(client._conn.pool._replies._waiting)


def test_result_raises_at_its_timeout_when_the_holder_never_answers(client, silent_holder):
    f = held_by(client, silent_holder)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=f"{f.key}.*0.5 s"):
        f.result(timeout=0.5)
    assert time.monotonic() - start < 3
    # the request given up is not left waiting for an answer
    wait_until(lambda: pending_requests(client) == 0, "the abandoned fetch to be dropped")


def test_gather_raises_at_its_timeout_when_the_holder_never_answers(client, silent_holder):
    f = held_by(client, silent_holder)
    g = client.submit(np.arange, 3)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="0.5 s"):
        client.gather([f, g], timeout="500ms")
    assert time.monotonic() - start < 3
    f._record.holders = []             # the scheduler knows the real holder
    assert len(client.gather([f, g], timeout=5)[0]) == BIG


def test_as_completed_with_results_honours_its_timeout(client, silent_holder):
    f = held_by(client, silent_holder)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        list(nbcluster.as_completed([f], with_results=True, timeout=0.5))
    assert time.monotonic() - start < 3


def test_an_asynchronous_gather_honours_its_timeout(inproc_cluster, silent_holder):
    async def main():
        async with nbcluster.Client(inproc_cluster, asynchronous=True,
                                    set_as_default=False) as c:
            f = c.submit(np.arange, BIG)
            await f
            f._record.holders = [silent_holder]
            f._record.value = nbcluster.client.records.NO_VALUE
            with pytest.raises(TimeoutError, match="0.5 s"):
                await c.gather(f, timeout=0.5)
    asyncio.run(asyncio.wait_for(main(), 10))
