"""The futures API against an in-process cluster."""

import asyncio
import concurrent.futures as cf
import gc
import threading
import time
from operator import add

import numpy as np
import pytest

import nbcluster
from nbcluster import (AsyncClient, CancelledError, Client, FIRST_COMPLETED, as_completed,
                       fire_and_forget, wait)
from nbcluster.errors import SerializationError
from nbcluster.testing import wait_until


def inc(x):
    return x + 1


def boom(x):
    raise ValueError(f"bad input {x}")


# module level: in-process workers share them (functions are pickled by reference)
GATE, HELD = threading.Event(), threading.Event()


def held(value):
    """A task that runs until the test opens GATE; HELD says it started."""
    HELD.set()
    assert GATE.wait(10), "the test never opened the gate"
    return value


@pytest.fixture
def gate():
    GATE.clear()
    HELD.clear()
    yield GATE
    GATE.set()


def test_submit_result_and_status(client):
    f = client.submit(add, 1, 2)
    assert f.result(timeout=5) == 3
    assert f.done() and f.status == "finished" and not f.cancelled()
    assert f.key.startswith("add-")
    assert "finished" in repr(f) and "add-" in f._repr_html_()


def test_map_several_iterables_and_kwargs(client):
    futures = client.map(lambda a, b, c=0: a * b + c, range(5), range(5), c=1)
    assert client.gather(futures) == [a * a + 1 for a in range(5)]
    with pytest.raises(TypeError, match="at least one iterable"):
        client.map(inc)


def test_lambdas_closures_and_main_functions(client):
    k = 10

    def closure(x):
        return x + k

    assert client.submit(closure, 1).result() == 11
    assert client.submit(lambda x: x * k, 3).result() == 30


def test_function_pickled_once(client, monkeypatch):
    from nbcluster.client import functions as client_module

    calls = []
    real = client_module.dumps_function
    monkeypatch.setattr(client_module, "dumps_function", lambda fn: calls.append(fn) or real(fn))

    def f(x):
        return x

    futures = [client.submit(f, i) for i in range(1000)]
    assert client.gather(futures) == list(range(1000))
    assert calls == [f]


def test_nested_futures_are_dependencies(client):
    a = client.submit(add, 1, 1)
    b = client.submit(add, 2, 2)
    f = client.submit(lambda d, t, y=None: d["a"] + t[0][0] + y["z"], {"a": a}, ([b],), y={"z": a})
    assert f.result() == 2 + 4 + 2
    assert client.gather({"x": [a, (b,)], "y": 3}) == {"x": [2, (4,)], "y": 3}
    assert client.submit(sum, [a, b, 10]).result() == 16


def test_exception_type_and_remote_traceback(client):
    f = client.submit(boom, 7)
    with pytest.raises(ValueError, match="bad input 7") as info:
        f.result()
    notes = "".join(getattr(info.value, "__notes__", []))
    assert "Remote traceback" in notes and "boom" in notes
    assert isinstance(f.exception(), ValueError)
    assert f.status == "error"
    # a failed dependency fails its dependents with the same error
    g = client.submit(inc, f)
    with pytest.raises(ValueError, match="bad input 7"):
        g.result()
    # the cluster keeps working
    assert client.submit(inc, 1).result() == 2


def test_unpicklable_argument_names_object(client):
    lock = threading.Lock()
    with pytest.raises(SerializationError, match="lock"):
        client.submit(add, lock, 1)
    with pytest.raises(TypeError):          # SerializationError is a TypeError too
        client.submit(lambda x: x, {"k": [lock]})
    assert client.submit(add, 1, 1).result() == 2


def test_unpicklable_result_is_a_clear_error(inproc_cluster):
    with Client(inproc_cluster) as c:
        f = c.submit(lambda: threading.Lock())
        with pytest.raises(SerializationError, match="lock"):
            f.result()
        assert c.submit(add, 2, 2).result() == 4


def test_large_result_fetched_from_worker(client):
    f = client.submit(np.arange, 1_000_000)
    out = f.result()
    assert out.shape == (1_000_000,) and out[-1] == 999_999
    assert client.submit(np.sum, f).result() == out.sum()


def test_scatter_shapes(client):
    [x] = client.scatter([np.arange(10)])
    assert client.submit(np.sum, x).result() == 45
    d = client.scatter({"k1": 1, "k2": 2})
    assert set(d) == {"k1", "k2"}
    assert client.submit(add, d["k1"], d["k2"]).result() == 3
    single = client.scatter(5)
    assert single.result() == 5


def test_scatter_refuses_the_key_of_a_submitted_task(client, gate):
    running = client.submit(held, 41, key="answer")
    finished = client.submit(inc, 1, key="done-key")
    assert finished.result() == 2
    with pytest.raises(ValueError, match=r"'answer' \(processing\).*'done-key' \(memory\)"):
        client.scatter({"answer": 0, "done-key": 0, "fresh": 1})
    gate.set()
    assert running.result() == 41 and finished.result() == 2
    assert client.submit(inc, finished).result() == 3
    with pytest.raises(TypeError, match="non-empty strings"):
        client.scatter({1: "x"})


def test_scatter_under_the_same_key_replaces_the_value_everywhere(client):
    workers = list(client.run(lambda: 0))
    first = client.scatter({"table": [1, 2]}, broadcast=True)
    assert first["table"].result() == [1, 2]
    second = client.scatter({"table": [3]}, workers=[workers[0]])
    assert second["table"].result() == [3] and first["table"].result() == [3]
    for w in workers:                           # no worker keeps the old copy
        assert client.submit(sum, second["table"], workers=[w]).result() == 3


def test_a_worker_refuses_to_take_data_under_its_task_keys(client, gate):
    workers = list(client.run(lambda: 0))
    running = client.submit(held, "computed", key="busy", workers=[workers[0]])
    assert HELD.wait(5)
    with pytest.raises(ValueError, match="refused the data: 'busy' already name tasks"):
        client._sync(client._conn.pool.put_data(workers[0], {"busy": 1}))
    gate.set()
    assert running.result() == "computed"


def test_restart_of_an_in_process_cluster_forgets_everything_and_keeps_working(client):
    from nbcluster import CancelledError

    held = client.scatter({"data": [1, 2, 3]})["data"]
    total = client.submit(sum, held)
    assert total.result() == 6
    workers_before = len(client.scheduler_info()["workers"])
    client.restart(timeout=20)
    assert total.status == "cancelled" and held.status == "cancelled"
    with pytest.raises(CancelledError, match="restarted"):
        total.result()
    info = client.scheduler_info()
    assert len(info["workers"]) == workers_before and info["tasks"] == {}
    assert all(w["memory"] == 0 for w in info["workers"].values())
    assert client.submit(inc, 41).result() == 42


def test_waits_of_the_main_thread_notice_a_signal_delivered_to_another_thread():
    """Ctrl-C lands in some thread of the process; the main thread's wait must still end."""
    import queue as queue_module
    import signal

    from nbcluster.client.blocking import get_from, wait_event

    def interrupt_from_another_thread():
        time.sleep(0.3)      # the main thread is waiting by now
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)   # delivered to this thread

    for blocking_wait in (lambda: wait_event(threading.Event(), 30),
                          lambda: get_from(queue_module.Queue(), 30)):
        helper = threading.Thread(target=interrupt_from_another_thread)
        helper.start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            blocking_wait()
        helper.join()
        assert time.monotonic() - started < 5        # not the 30 s timeout
    assert wait_event(threading.Event(), 0.05) is False
    with pytest.raises(queue_module.Empty):
        get_from(queue_module.Queue(), 0.05)


def test_gather_errors_skip(client):
    good, bad = client.submit(inc, 1), client.submit(boom, 1)
    assert client.gather([good, bad], errors="skip") == [2]
    with pytest.raises(ValueError):
        client.gather([good, bad])


def test_result_timeout(client):
    f = client.submit(time.sleep, 1)
    with pytest.raises(TimeoutError):
        f.result(timeout=0.05)


def test_wait_and_as_completed(client):
    futures = client.map(inc, range(10))
    done, not_done = wait(futures)
    assert len(done) == 10 and not not_done
    slow = client.submit(time.sleep, 0.5)
    fast = client.submit(inc, 1)
    done, _ = wait([slow, fast], return_when=FIRST_COMPLETED)
    assert fast in done
    results = sorted(r for _, r in as_completed(client.map(inc, range(5)), with_results=True))
    assert results == [1, 2, 3, 4, 5]
    ac = as_completed([client.submit(inc, 1)])
    ac.add(client.submit(inc, 2))
    assert sorted(f.result() for f in ac) == [2, 3]


def test_cancel(client):
    blocker = client.submit(time.sleep, 0.3)
    f = client.submit(lambda x: x, blocker)
    f.cancel()
    assert f.cancelled()
    with pytest.raises(CancelledError):
        f.result()
    with pytest.raises(cf.CancelledError):    # also the standard library's
        f.result()
    assert client.submit(inc, 1).result() == 2


def test_add_done_callback(client):
    seen = []
    event = threading.Event()
    f = client.submit(inc, 1)
    f.add_done_callback(lambda fut: (seen.append(fut.status), event.set()))
    assert event.wait(5)
    assert seen == ["finished"]
    later = []
    f.add_done_callback(lambda fut: later.append(fut.key))   # already done: called at once
    assert later == [f.key]


def test_release_frees_worker_memory(client):
    futures = client.map(lambda i: np.ones(1000) * i, range(20))
    client.gather(futures)
    holders = client.run(lambda: 0)
    assert len(holders) == 2
    wait_until(lambda: client.scheduler_info()["tasks"].get("memory", 0) == 20,
               "20 results in memory")
    del futures
    gc.collect()
    wait_until(lambda: client.scheduler_info()["tasks"].get("memory", 0) == 0,
               "no result in memory")
    wait_until(lambda: sum(w["keys"] for w in client.scheduler_info()["workers"].values()) == 0,
               "the workers to drop every key")


def test_fire_and_forget(client):
    event_key = []
    f = client.submit(inc, 41)
    key = f.key
    fire_and_forget(f)
    del f
    gc.collect()
    event_key.append(key)
    wait_until(lambda: client.scheduler_info()["tasks"] == {} or
               sum(client.scheduler_info()["tasks"].values()) == 0,
               "the fire-and-forget task to be forgotten")
    assert client.scheduler_info()["done_by_prefix"].get("inc") == 1


def test_run_on_every_worker(client, inproc_cluster):
    out = client.run(lambda: "hi")
    assert set(out) == set(inproc_cluster.workers)
    assert set(out.values()) == {"hi"}
    with pytest.raises(ZeroDivisionError):
        client.run(lambda: 1 / 0)


def test_executor_with_stdlib_wait_and_as_completed(client):
    ex = client.get_executor()
    futures = [ex.submit(add, i, 1) for i in range(10)]
    assert all(isinstance(f, cf.Future) for f in futures)
    done, not_done = cf.wait(futures)
    assert len(done) == 10 and not not_done
    assert sorted(f.result() for f in cf.as_completed(futures)) == list(range(1, 11))
    assert list(ex.map(inc, range(3))) == [1, 2, 3]
    big = ex.submit(np.arange, 100_000)
    assert big.result().sum() == np.arange(100_000).sum()
    err = ex.submit(boom, 1)
    assert isinstance(err.exception(timeout=5), ValueError)
    ex.shutdown()


def test_delayed(client):
    total = nbcluster.delayed(add)(nbcluster.delayed(inc)(1), 10)
    assert total.compute() == 12
    assert client.compute(total).result() == 12
    x, y = nbcluster.compute(nbcluster.delayed(inc)(1), nbcluster.delayed(inc)(2))
    assert (x, y) == (2, 3)


def test_delayed_without_client_runs_locally():
    assert nbcluster.delayed(add)(1, 2).compute() == 3


def test_async_client(inproc_cluster):
    async def main():
        async with AsyncClient(inproc_cluster) as c:
            f = c.submit(add, 1, 2)
            assert await f == 3
            futures = c.map(inc, range(100))
            assert await c.gather(futures) == list(range(1, 101))
            big = c.submit(np.arange, 100_000)
            assert (await big).sum() == np.arange(100_000).sum()
            with pytest.raises(ValueError):
                await c.submit(boom, 1)

    asyncio.run(main())


def test_async_client_closed_inside_its_block(inproc_cluster):
    async def main():
        async with AsyncClient(inproc_cluster) as c:
            assert await c.submit(add, 1, 2) == 3
            await c.close()
        await c.close()          # closing again is awaitable too

    asyncio.run(main())


def test_await_future_from_sync_client(client):
    f = client.submit(add, 5, 5)

    async def main():
        return await f

    assert asyncio.run(main()) == 10


def test_bad_arguments_are_named(client):
    with pytest.raises(TypeError, match="callable"):
        client.submit(3, 4)
    with pytest.raises(TypeError, match="priority"):
        client.submit(inc, 1, priority="high")
    with pytest.raises(TypeError, match="workers"):
        client.submit(inc, 1, workers=[1])
    with pytest.raises(ValueError, match="errors"):
        client.gather([], errors="ignore")


def test_pinned_to_worker(client, inproc_cluster):
    target = inproc_cluster.workers[1]
    futures = [client.submit(inc, i, workers=[target]) for i in range(10)]
    client.gather(futures)
    assert all(client.who_has([f])[f.key] == [target] for f in futures)


def test_client_closed_errors(inproc_cluster):
    c = Client(inproc_cluster)
    c.close()
    with pytest.raises(nbcluster.errors.ClusterError, match="closed"):
        c.submit(inc, 1)
