"""Large results: DONE names their holders, so the client fetches straight from one; who_has is
the fallback. And the pieces the client is made of: one wait routine, gather without a hop for
values already here, Future on the client's public interface, request/reply by id."""

import asyncio
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest

import nbcluster
from nbcluster import delayed, wait
from nbcluster.comm.pool import Replies
from nbcluster.errors import CommError
from nbcluster.testing import wait_until

BIG = 100_000       # np.arange(BIG) is 800 kB: over the inline limit, it stays on its worker


def inc(x):
    return x + 1


def requests_made(client) -> list:
    """Names of the requests the client sends the scheduler from now on."""
    names: list = []
    request = client._conn.request

    async def recording(name, **args):
        names.append(name)
        return await request(name, **args)

    client._conn.request = recording
    return names


def test_a_large_result_is_fetched_from_its_holder_without_asking_the_scheduler(client):
    asked = requests_made(client)
    f = client.submit(np.arange, BIG)
    wait([f])
    assert f._record.holders and f._record.holders[0] in client.scheduler_info()["workers"]
    assert (f.result() == np.arange(BIG)).all()
    assert (client.gather([f])[0] == np.arange(BIG)).all()
    big = client.map(np.arange, [BIG, BIG + 1, BIG + 2])
    assert [len(v) for v in client.gather(big)] == [BIG, BIG + 1, BIG + 2]
    assert "who_has" not in asked


def test_a_holder_without_the_value_falls_back_to_who_has(client, inproc_cluster):
    a, b = inproc_cluster.workers[:2]
    f = client.submit(np.arange, BIG, workers=[a])
    wait([f])
    assert list(f._record.holders) == [a]
    f._record.holders = [b]                 # as if DONE named a worker that lost it since
    asked = requests_made(client)
    assert (f.result() == np.arange(BIG)).all()
    assert asked == ["who_has"]


def test_an_unreachable_holder_falls_back_to_who_has(client):
    f = client.submit(np.arange, BIG)
    wait([f])
    f._record.holders = ["tcp://127.0.0.1:1"]      # nobody listens there
    asked = requests_made(client)
    assert len(f.result()) == BIG
    assert asked == ["who_has"]


def test_a_large_result_lost_with_its_holder_is_recomputed_then_fetched(proc_cluster, pclient):
    f = pclient.submit(np.arange, BIG)
    wait([f])
    (victim,) = f._record.holders
    os.kill(proc_cluster.worker_pids()[victim], signal.SIGKILL)
    wait_until(lambda: victim not in pclient.scheduler_info()["workers"],
               "the scheduler to see the killed worker go")
    assert (f.result(timeout=60) == np.arange(BIG)).all()
    assert victim not in f._record.holders


def test_large_results_through_await_and_the_executor(client):
    f = client.submit(np.arange, BIG)

    async def main():   # another loop than the client's: the fetch must not block it
        return await f

    assert len(asyncio.run(main())) == BIG
    with client.get_executor() as ex:
        assert len(ex.submit(np.arange, BIG + 1).result(timeout=30)) == BIG + 1


def test_gather_of_values_already_here_stays_on_the_calling_thread(client):
    futures = client.map(inc, range(50))
    wait(futures)

    def no_hop(coro, timeout=None):
        coro.close()
        raise AssertionError("gather went through the I/O thread")

    client._sync = no_hop
    try:
        assert client.gather(futures) == list(range(1, 51))
        assert [f.result() for f in futures] == list(range(1, 51))
    finally:
        del client._sync


def test_future_uses_only_the_public_interface_of_its_client():
    source = (Path(nbcluster.__file__).parent / "client" / "future.py").read_text()
    assert not re.findall(r"client\._\w+", source)


def test_delayed_pure_gives_the_same_task_for_the_same_call(client):
    pure = delayed(inc, pure=True)
    a, b = client.compute(pure(1)), client.compute(pure(1))
    assert a.key == b.key and a.result() == 2
    impure = delayed(inc)
    assert client.compute(impure(1)).key != client.compute(impure(1)).key
    assert client.compute(pure(1), pure=False).key != a.key   # compute's pure= wins
    with pytest.raises(TypeError, match="pure"):
        delayed(inc, pure="yes")


def test_replies_by_id():
    async def main():
        replies = Replies()
        rid1, one = replies.expect("tcp://a")
        rid2, two = replies.expect("tcp://b")
        _, hello = replies.expect(request_id=0)
        assert rid1 != rid2 and 0 not in (rid1, rid2)
        replies.resolve(rid1, ["reply", rid1, True, 1])
        replies.resolve(rid1, ["reply", rid1, True, 2])     # a second answer is ignored
        replies.resolve(99, ["reply", 99, True, 3])         # so is one nobody waits for
        assert (await one)[3] == 1
        replies.fail(lambda: CommError("a gone"), "tcp://a")
        assert not two.done()
        replies.fail(lambda: CommError("all gone"))
        for fut in (two, hello):
            with pytest.raises(CommError, match="all gone"):
                await fut

    asyncio.run(main())
