"""Queue, Variable, Event, Lock, Semaphore and publish end to end (issue 17): two clients of
one LocalCluster, as two notebooks would be."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid

import pytest

from nbcluster import AsyncClient, Client, Event, Lock, Queue, Semaphore, Variable

pytestmark = pytest.mark.timeout(20)


def inc(x):
    return x + 1


def stamp(x):
    """Who computed it: a recompute would give another token."""
    return {"x": x, "pid": os.getpid(), "token": uuid.uuid4().hex}


@pytest.fixture
def two(inproc_cluster):
    with Client(inproc_cluster) as a, Client(inproc_cluster) as b:
        yield a, b


def test_a_queue_carries_futures_and_values_from_a_producer_to_a_consumer(two):
    a, b = two
    got: list = []

    def consume():
        q = Queue("jobs", client=b)
        for _ in range(6):
            x = q.get(timeout=10)
            got.append(x.result(timeout=10) if hasattr(x, "result") else x)

    consumer = threading.Thread(target=consume)
    consumer.start()
    q = Queue("jobs", client=a, maxsize=2)     # the producer waits while two are queued
    for i in range(3):
        q.put(a.submit(inc, i), timeout=10)
        q.put(f"value {i}", timeout=10)
    consumer.join(10)
    assert not consumer.is_alive()
    assert got == [1, "value 0", 2, "value 1", 3, "value 2"]
    assert q.qsize() == 0


def test_a_future_taken_from_a_queue_works_after_its_producer_closed(inproc_cluster, client):
    with Client(inproc_cluster) as producer:
        future = producer.submit(stamp, 1)
        first = future.result()
        Queue("handoff", client=producer).put(future)
    x = Queue("handoff", client=client).get(timeout=5)
    assert x.result(timeout=5) == first                        # the same result, not redone
    assert client.scheduler_info()["done_by_prefix"].get("stamp") == 1


def test_batches_timeouts_and_a_withdrawn_get(two):
    a, b = two
    q = Queue(client=a)
    assert q.get(batch=True) == []
    with pytest.raises(TimeoutError, match="stayed empty"):
        q.get(timeout=0.05)
    for i in range(3):
        q.put(i)
    assert q.get(batch=2) == [0, 1] and q.get(batch=True) == [2]
    with pytest.raises(ValueError, match="batch"):
        q.get(batch=0)

    async def give_up():
        async with AsyncClient(a.cluster) as c:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(Queue(q.name, client=c).get(), 0.05)
            await Queue(q.name, client=c).put("kept")
            return await Queue(q.name, client=c).qsize()

    # the cancelled get was withdrawn: the put after it stays in the queue
    assert asyncio.run(give_up()) == 1
    assert Queue(q.name, client=b).get(timeout=5) == "kept"


def test_a_lock_lets_one_holder_in_at_a_time_across_clients(two):
    entries: list = []

    def work(c, who):
        lock = Lock("section", client=c)
        for _ in range(5):
            with lock:
                entries.append(("in", who))
                assert lock.locked()                           # a round trip inside
                entries.append(("out", who))

    threads = [threading.Thread(target=work, args=(c, i)) for i, c in enumerate(two)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert len(entries) == 20
    for i in range(0, 20, 2):                                   # never two inside
        assert entries[i][0] == "in" and entries[i + 1] == ("out", entries[i][1])
    assert not Lock("section", client=two[0]).locked()


def test_a_lock_held_by_a_client_that_closes_goes_to_the_next(inproc_cluster, client):
    holder = Client(inproc_cluster)
    assert Lock("L", client=holder).acquire()
    waiter = Lock("L", client=client)
    assert waiter.acquire(blocking=False) is False
    assert waiter.acquire(timeout=0.05) is False
    result: list = []
    t = threading.Thread(target=lambda: result.append(waiter.acquire(timeout=10)))
    t.start()
    holder.close()
    t.join(10)
    assert result == [True]
    waiter.release()
    with pytest.raises(RuntimeError, match="released more often"):
        waiter.release()


def test_semaphore_variable_and_event(two):
    a, b = two
    sem = Semaphore(2, "slots", client=a)
    assert sem.acquire() and sem.acquire() and sem.get_value() == 2
    assert Semaphore(2, "slots", client=b).acquire(timeout=0.05) is False
    with pytest.raises(ValueError, match="max_leases=2"):
        Semaphore(3, "slots", client=b).acquire()
    sem.release()
    with Semaphore(2, "slots", client=b):
        assert sem.get_value() == 2
    sem.release()
    assert sem.get_value() == 0

    var = Variable("model", client=a)
    future = a.submit(inc, 41)
    var.set(future)
    del future                                                   # the variable keeps it
    assert Variable("model", client=b).get(timeout=5).result(timeout=5) == 42
    var.set({"plain": "value"})
    assert Variable("model", client=b).get() == {"plain": "value"}
    var.delete()
    with pytest.raises(TimeoutError):
        Variable("model", client=b).get(timeout=0.05)

    ev = Event("go", client=a)
    waited: list = []
    t = threading.Thread(target=lambda: waited.append(Event("go", client=b).wait(10)))
    t.start()
    assert not ev.is_set()
    ev.set()
    t.join(10)
    assert waited == [True] and ev.is_set() and ev.wait(0) is True
    ev.clear()
    assert ev.wait(0.05) is False


def test_primitives_work_with_an_asynchronous_client(inproc_cluster):
    async def main():
        async with AsyncClient(inproc_cluster) as c:
            q = Queue("aq", client=c)
            await q.put(c.submit(inc, 1))
            await q.put(5)
            assert await (await q.get()) == 2 and await q.get() == 5
            lock = Lock("al", client=c)
            async with lock:
                assert await lock.locked()
            assert not await lock.locked()
            await c.publish(answer=c.submit(inc, 2))
            assert await c.list_published() == ["answer"]
            assert await (await c.get_published("answer")) == 3
            await c.unpublish("answer")

    asyncio.run(main())


def test_handles_pickle_by_name():
    import pickle

    q = pickle.loads(pickle.dumps(Queue("q", maxsize=3)))
    s = pickle.loads(pickle.dumps(Semaphore(4, "s")))
    assert (q.name, q.maxsize, s.name, s.max_leases) == ("q", 3, "s", 4)
    assert isinstance(pickle.loads(pickle.dumps(Lock("l"))), Lock)
    with pytest.raises(ValueError, match="maxsize"):
        Queue(maxsize=-1)
    with pytest.raises(TypeError, match="name"):
        Lock(name=3)


@pytest.mark.processes
def test_publish_then_close_then_another_client_gets_it_without_recompute(proc_cluster):
    with Client(proc_cluster) as first:
        future = first.submit(stamp, 7)
        computed = future.result(timeout=10)
        first.publish(result=future, note="plain values too")
        with pytest.raises(ValueError, match="published already"):
            first.publish(result=1)
    with Client(proc_cluster) as second:                       # the first notebook closed
        assert second.list_published() == ["note", "result"]
        again = second.get_published("result")
        assert again.result(timeout=10) == computed             # same pid, same token
        assert computed["pid"] != os.getpid()
        assert second.scheduler_info()["done_by_prefix"].get("stamp") == 1
        assert second.get_published("note") == "plain values too"
        assert second.get_published("missing", default=None) is None
        with pytest.raises(KeyError, match="nothing is published as 'missing'"):
            second.get_published("missing")
        second.publish(overwrite=True, note="replaced")
        assert second.get_published("note") == "replaced"
        second.unpublish("result")
        second.unpublish("note")
        assert second.list_published() == []
        with pytest.raises(KeyError):
            second.unpublish("result")


def test_published_futures_come_back_with_a_scheduler_restarted_from_its_journal(tmp_path):
    from nbcluster import LocalCluster

    path = str(tmp_path / "j.sqlite")
    with LocalCluster(n_workers=1, processes=False, dashboard=False, journal=path) as cluster, \
            Client(cluster) as client:
        client.publish(answer=client.submit(inc, 41), note="plain")
        Variable("v", client=client).set(client.submit(inc, 1))
        Queue("q", client=client).put(client.submit(inc, 2))
    with LocalCluster(n_workers=1, processes=False, dashboard=False, journal=path) as cluster, \
            Client(cluster) as client:
        assert client.list_published() == ["answer"]           # plain values are not kept
        assert client.get_published("answer").result(timeout=10) == 42
        assert Variable("v", client=client).get(timeout=5).result(timeout=10) == 2
        assert Queue("q", client=client).qsize() == 0           # queues are not kept
