"""A worker survives its scheduler (issue 15): it joins a scheduler that comes back at the same
address, reporting the results it still holds; it gives up after reconnect_timeout with a
clear message; and it notices a frozen scheduler (issue 13, item 8: keepalive)."""

from __future__ import annotations

import asyncio
import logging
import operator
import os
import signal
import subprocess
import time

import pytest

from fake_scheduler import TOKEN, FakeScheduler
from nbcluster import Client
from nbcluster.loop_thread import LoopThread
from nbcluster.protocol import messages as m
from nbcluster.protocol.serialize import dumps_function
from nbcluster.server.scheduler import Scheduler
from nbcluster.server.worker import Worker
from nbcluster.state.instructions import Stop
from nbcluster.testing import wait_until
from test_cli import free_port, read_line, start, stop
from test_worker_state import Sim

pytestmark = pytest.mark.timeout(30)


def inc(x):
    return x + 1


def slow():
    for _ in range(1000):     # ten seconds unless stopped: the work of a long task
        time.sleep(0.01)


# ---------------------------------------------------------------------- the state machine
def test_reset_keeps_finished_results_and_forgets_every_assignment():
    sim = Sim(nthreads=1)
    sim.run("a")
    sim.done("a", nbytes=10)                              # a result: kept
    sim.run("b")                                          # executing: stopped
    sim.run("c")                                          # ready: dropped
    sim.compute(m.Compute("d", "fn", [1], None, {"e": ["tcp://p:1"]}, True, 0, None, 7))
    assert sim.state("e") == "flight"                     # fetching: dropped
    out = sim.reset()
    assert out == [Stop("b")]
    assert {k: ts.state for k, ts in sim.w.tasks.items()} == {"a": "memory"}
    assert sim.held() == {"a": 10}
    assert sim.w.ready == [] and sim.w.executing == set() and sim.w.to_fetch == {}
    assert sim.w.in_flight == {"tcp://p:1": 1}            # that transfer still runs
    # the stopped task's end, and the transfer's, change nothing the scheduler hears of
    assert not [i for i in sim.task_finished("b", 5, 1.0, 2.0, False, None, "int")
                if type(i).__name__ == "Send"]
    sim.fetch_done("tcp://p:1", {"e": 3}, [])
    assert sim.held() == {"a": 10}
    # a new scheduler's run ids start afresh: the result is reported under the new run
    out = sim.compute(m.Compute("a", "fn", [1], None, {}, True, 0, None, 1))
    assert [i.msg.run for i in out if type(i).__name__ == "Send"] == [1]


# ---------------------------------------------------------------------- against a fake scheduler
@pytest.fixture
def io():
    thread = LoopThread("nbcluster-test-fake-scheduler")
    yield thread
    thread.stop()


def start_worker(io, address, **kwargs) -> Worker:
    worker = Worker(address, token=TOKEN, **kwargs)
    io.run(worker.start())
    return worker


def close_worker(io, worker) -> None:
    io.run(worker.close())


def finished_within(io, worker, seconds) -> float:
    """Seconds until the worker closed itself (an AssertionError after ``seconds``)."""
    start = time.monotonic()
    try:
        io.run(asyncio.wait_for(worker.finished.wait(), seconds))
    except TimeoutError:
        raise AssertionError(f"the worker was still running after {seconds} s") from None
    return time.monotonic() - start


def test_worker_rejoins_a_restarted_scheduler_with_the_results_it_holds(io):
    a = FakeScheduler(io)
    worker = start_worker(io, a.address)
    try:
        comm, identity = a.hello("worker")
        assert identity["held"] == {} and identity["address"] == worker.address
        a.send(comm, m.Function("inc", dumps_function(inc)), m.Function("slow", dumps_function(slow)),
               m.Compute("x", "inc", [1], None, {}, False, 0, None, 5),
               m.Compute("s", "slow", [], None, {}, False, 0, None, 6))
        a.wait_for(lambda x: type(x) is m.Finished and x.key == "x", "FINISHED x")
        a.wait_for(lambda x: type(x) is m.Started and x.key == "s", "STARTED s")
        a.crash()
        b = FakeScheduler(io, port=a.port)     # the scheduler, restarted at the same address
        comm, identity = b.hello("worker")
        assert identity["address"] == worker.address
        assert list(identity["held"]) == ["x"] and identity["held"]["x"] > 0
        # the running task was stopped (its thread ends long before its ten seconds)
        wait_until(lambda: not worker.link._retired or
                   not any(t.is_alive() for t in worker.link._retired),
                   "the stopped task's thread to end", timeout=5)
        assert "s" not in worker.state.tasks and "s" not in worker.data
        # work again, under the new scheduler's run ids; the old task is never reported
        b.send(comm, m.Function("inc", dumps_function(inc)),
               m.Compute("y", "inc", [2], None, {}, True, 0, None, 1))
        _, done = b.wait_for(lambda x: type(x) is m.Finished and x.key == "y", "FINISHED y")
        assert done.run == 1 and done.value == 3
        assert not [x for x in b.messages() if getattr(x, "key", None) == "s"]
        assert worker.data["x"] == 2 and worker.link.rejoined == 1
    finally:
        close_worker(io, worker)


def test_worker_gives_up_after_its_reconnect_timeout(io, caplog):
    a = FakeScheduler(io)
    worker = start_worker(io, a.address, reconnect_timeout=0.5)
    a.crash()
    with caplog.at_level(logging.WARNING, logger="nbcluster.worker"):
        assert finished_within(io, worker, 5) >= 0.5
    said = worker.link.gave_up
    assert said.startswith(f"no scheduler at {a.address} for 0.")
    assert "(reconnect_timeout=0.5 s)" in said
    assert any("gives up" in r.getMessage() for r in caplog.records)
    attempts = [r for r in caplog.records if "no scheduler at" in r.getMessage()
                and "attempt" in r.getMessage()]
    assert 1 <= len(attempts) <= 4, [r.getMessage() for r in attempts]   # not one per attempt


def test_without_a_journal_the_worker_exits_at_once_by_default(io):
    a = FakeScheduler(io, journal=False)
    worker = start_worker(io, a.address)
    a.crash()
    finished_within(io, worker, 5)
    assert worker.link.gave_up == "" and worker.link.rejoined == 0


def test_a_frozen_scheduler_is_noticed_within_the_heartbeat_timeout(io, caplog):
    a = FakeScheduler(io, journal=False, answer_pings=False)   # accepts, then says nothing
    worker = start_worker(io, a.address, heartbeat_timeout=0.5)
    with caplog.at_level(logging.WARNING, logger="nbcluster.worker"):
        took = finished_within(io, worker, 5)
    assert 0.4 <= took < 3
    assert a.messages(m.Request), "the worker asks a silent scheduler before giving it up"
    assert any("no message from the scheduler for" in r.getMessage()
               and "heartbeat_timeout=0.5 s" in r.getMessage() for r in caplog.records)


def test_a_quiet_scheduler_that_answers_is_kept(io):
    scheduler = io.run(Scheduler("tcp://127.0.0.1:0", token=TOKEN).start())   # the real one
    worker = start_worker(io, scheduler.address, heartbeat_timeout=0.6)
    try:
        with pytest.raises(TimeoutError):   # silent for 2.5 timeouts but for the pings
            io.run(asyncio.wait_for(worker.finished.wait(), 1.5))
        assert worker.address in scheduler.state.workers
    finally:
        close_worker(io, worker)
        io.run(scheduler.close())


def test_bad_timeouts_are_refused():
    with pytest.raises(ValueError, match="reconnect_timeout must not be negative"):
        Worker("tcp://127.0.0.1:1", reconnect_timeout=-1)
    with pytest.raises(ValueError, match="heartbeat_timeout must be positive"):
        Worker("tcp://127.0.0.1:1", heartbeat_timeout=0)


# ---------------------------------------------------------------------- real processes
def joined(worker) -> None:
    """Wait for the worker process's line saying it joined (its start is over)."""
    line = worker.stderr.readline().decode()   # the pipe closes if it dies: no hang
    assert " joined " in line, line


@pytest.fixture
def env(tmp_path):
    return dict(os.environ, NBCLUSTER_RUNTIME_DIR=str(tmp_path / "runtime"),
                NBCLUSTER_TOKEN=TOKEN)


def test_cli_worker_rejoins_a_scheduler_restarted_on_its_port(env):
    port = free_port()
    first = start(["scheduler", "--port", str(port), "--dashboard-port", "-1"], env)
    address = read_line(first, "nbcluster scheduler at").split()[-1]
    worker = start(["worker", address, "--reconnect-timeout", "20s"], env,
                   stderr=subprocess.PIPE)
    second = None
    try:
        joined(worker)
        first.kill()
        first.wait()
        second = start(["scheduler", "--port", str(port), "--dashboard-port", "-1"], env)
        read_line(second, "nbcluster scheduler at")
        with Client(address, token=TOKEN) as client:
            client.wait_for_workers(1, timeout=10)
            assert client.submit(operator.add, 1, 1).result(timeout=10) == 2   # by reference
        assert worker.poll() is None
    finally:
        stop(*[p for p in (worker, second) if p is not None])
        first.stdout.close()
        worker.stderr.close()


def test_cli_worker_without_a_scheduler_exits_with_a_clear_message(env):
    port = free_port()
    scheduler = start(["scheduler", "--port", str(port), "--dashboard-port", "-1"], env)
    address = read_line(scheduler, "nbcluster scheduler at").split()[-1]
    worker = start(["worker", address, "--reconnect-timeout", "1s"], env,
                   stderr=subprocess.PIPE)
    try:
        joined(worker)
        scheduler.send_signal(signal.SIGKILL)
        scheduler.wait()
        assert worker.wait(10) == 1
        err = worker.stderr.read().decode()
        assert f"gave up: no scheduler at {address} for 1." in err, err
        assert "(reconnect_timeout=1 s)" in err
    finally:
        stop(worker)
        scheduler.stdout.close()
        worker.stderr.close()


def test_the_scheduler_drops_a_worker_it_has_not_heard_from():
    """A half-open connection or a frozen host: the scheduler closes it after worker_ttl."""
    from nbcluster.comm import connect

    async def main():
        scheduler = await Scheduler("tcp://127.0.0.1:0", worker_ttl=0.3).start()
        comm = await connect(scheduler.address, None, 5.0)
        joined, closed = asyncio.Event(), asyncio.Event()
        comm.start(lambda batch: joined.set(), lambda reason: closed.set())   # its REPLY
        comm.send(m.Hello("worker", {"address": "tcp://127.0.0.1:1", "nthreads": 1}))
        await asyncio.wait_for(joined.wait(), 5)
        assert list(scheduler.state.workers) == ["tcp://127.0.0.1:1"]
        await asyncio.wait_for(closed.wait(), 5)           # no heartbeat ever: dropped
        assert not scheduler.state.workers
        await scheduler.close()

    asyncio.run(main())
