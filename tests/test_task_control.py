"""Task control with real worker processes on 127.0.0.1: queues, rate limits, time limits,
cancellation that stops running code, retries, timers, canvas, and bad values."""

import os
import threading
import time
from operator import add

import pytest

import nbcluster
from nbcluster.errors import (CancelledError, ClusterError, TaskExpiredError,
                              TaskTimeoutError)

pytestmark = pytest.mark.processes    # the cluster and client fixtures: worker processes


def pid(_=None):
    return os.getpid()


def stamp(_=None):
    return os.getpid(), time.time()


def test_two_workers_on_different_queues(cluster, client):
    high = cluster.add_worker(queues=["high"])
    try:
        high_pid = cluster.worker_pids()[high]
        pids = client.gather(client.map(pid, range(10), queue="high"))
        assert set(pids) == {high_pid}
        default_pids = client.gather(client.map(pid, range(10)))
        assert high_pid not in default_pids
        waiting = client.submit(pid, queue="nobody-yet")
        info = client.queues()
        assert info["high"]["workers"] == [high]
        assert info["nobody-yet"]["workers"] == []
        with pytest.raises(TimeoutError):
            waiting.result(timeout=0.3)          # held, not failed
        assert waiting.status == "pending"
        waiting.cancel()
        with pytest.raises(ClusterError, match="did you mean 'high'"):
            cluster.add_worker(queues=["hgih"])
    finally:
        cluster.retire_worker(high)


def test_rate_limit_is_cluster_wide(client):
    start = time.time()
    results = client.gather(client.map(stamp, range(20), rate_limit="10/s"), timeout=30)
    elapsed = time.time() - start
    assert 1.7 <= elapsed <= 5.0, elapsed
    assert len({p for p, _ in results}) == 2          # spread over both workers
    starts = sorted(t for _, t in results)
    assert starts[-1] - starts[0] >= 1.7              # 10 per second over all workers


def test_timeout_stops_a_sleeping_task_and_the_worker_takes_new_work(cluster, client):
    start = time.time()
    f = client.submit(time.sleep, 60, timeout=1)
    with pytest.raises(TaskTimeoutError) as info:
        f.result(timeout=30)
    assert isinstance(info.value, TimeoutError)
    # the worker process did not stop in the grace period: it was replaced
    assert client.gather(client.map(add, range(4), range(4)), timeout=30) == [0, 2, 4, 6]
    assert time.time() - start < 10


def spin(seconds):
    end = time.time() + seconds
    n = 0
    while time.time() < end:        # pure Python: an interrupt lands at once
        n += 1
    return n


def test_timeout_interrupts_python_code_without_losing_the_worker(cluster, client):
    before = dict(cluster.worker_pids())
    kept = client.submit(add, 1, 1)
    assert kept.result() == 2
    f = client.submit(spin, 30, timeout=0.5)
    with pytest.raises(TaskTimeoutError):
        f.result(timeout=20)
    assert cluster.worker_pids() == before            # no process had to go
    assert kept.result() == 2
    assert client.submit(add, kept, 1).result(timeout=10) == 3


def test_cancel_stops_a_running_task(cluster, client):
    f = client.submit(spin, 60)
    started = time.time()
    while client.scheduler_info()["tasks"].get("processing", 0) == 0:
        assert time.time() - started < 10
        threading.Event().wait(0.02)
    threading.Event().wait(0.2)
    f.cancel()
    with pytest.raises(CancelledError):
        f.result()
    # both workers are free again well before the 60 s the task would take
    assert len(set(client.gather(client.map(pid, range(20)), timeout=10))) >= 1
    info = client.scheduler_info()
    assert sum(w["processing"] for w in info["workers"].values()) == 0


def flaky(path, succeed_on):
    n = int(open(path).read()) if os.path.exists(path) else 0
    with open(path, "w") as fh:
        fh.write(str(n + 1))
    if n + 1 < succeed_on:
        raise ConnectionError(f"attempt {n + 1}")
    return n + 1


def test_retries_with_filter_and_attempts(client, tmp_path):
    f = client.submit(flaky, str(tmp_path / "a"), 3, retries=3, retry_on=ConnectionError,
                      retry_backoff=0.05)
    assert f.result(timeout=20) == 3
    attempts = f.attempts
    assert len(attempts) == 3
    assert [a["exception"] for a in attempts] == ["ConnectionError: attempt 1",
                                                  "ConnectionError: attempt 2", None]
    g = client.submit(flaky, str(tmp_path / "b"), 5, retries=3, retry_on=KeyError)
    with pytest.raises(ConnectionError):      # not in retry_on: no retry
        g.result(timeout=20)
    assert len(g.attempts) == 1


def asks_to_retry(path):
    n = int(open(path).read()) if os.path.exists(path) else 0
    with open(path, "w") as fh:
        fh.write(str(n + 1))
    if n == 0:
        raise nbcluster.Retry(delay=0.2)
    return n


def test_retry_raised_inside_a_task(client, tmp_path):
    start = time.time()
    assert client.submit(asks_to_retry, str(tmp_path / "r")).result(timeout=20) == 1
    assert time.time() - start >= 0.2


def test_countdown_and_expires(client):
    start = time.time()
    assert client.submit(add, 1, 2, countdown=0.5).result(timeout=10) == 3
    assert time.time() - start >= 0.5
    blocked = client.submit(time.sleep, 0.1, queue="nobody", expires=0.3)
    with pytest.raises(TaskExpiredError):
        blocked.result(timeout=10)


def test_canvas_chain_group_chord(client):
    total = nbcluster.chain(nbcluster.s(add, 1, 2), nbcluster.s(add, 10), nbcluster.s(add, 100),
                            client=client)
    assert total.result(timeout=10) == 113
    parts = nbcluster.group(nbcluster.s(add, i, i) for i in range(5))
    assert client.gather(parts) == [0, 2, 4, 6, 8]
    assert nbcluster.chord((nbcluster.s(add, i, i) for i in range(10)), nbcluster.s(sum)
                           ).result(timeout=10) == 90


def half(x):
    if x == 3:
        raise ValueError("three")
    return x / 2


def test_chord_errors_first_or_collected(client):
    header = [nbcluster.s(half, i) for i in range(5)]
    with pytest.raises(ValueError, match="three"):
        nbcluster.chord(header, nbcluster.s(sum)).result(timeout=10)
    collected = nbcluster.chord(header, nbcluster.s(lambda xs: [type(x).__name__ for x in xs]),
                                on_error="collect").result(timeout=10)
    assert collected == ["float", "float", "float", "ValueError", "float"]


def test_bad_values_are_named_at_submit(client):
    with pytest.raises(ValueError, match="rate_limit"):
        client.submit(add, 1, 2, rate_limit="ten per second")
    with pytest.raises(ValueError, match="retries"):
        client.submit(add, 1, 2, retries=-1)
    with pytest.raises(ValueError, match="timeout"):
        client.submit(add, 1, 2, timeout=0)
    with pytest.raises(ValueError, match="queue"):
        client.submit(add, 1, 2, queue="has space")
    with pytest.raises(TypeError, match="retry_on"):
        client.submit(add, 1, 2, retries=1, retry_on="ValueError")
    with pytest.raises(ValueError, match="on_error"):
        nbcluster.chord([nbcluster.s(add, 1, 1)], nbcluster.s(sum), on_error="ignore")
    assert client.submit(add, 1, 2).result() == 3     # nothing submitted was lost
