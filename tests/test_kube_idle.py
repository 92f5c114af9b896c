"""``nbcluster scheduler --idle-timeout``: a scheduler nobody uses any more exits (what removes a
KubeCluster whose notebook is gone, when no Pod owns it)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nbcluster import Client
from nbcluster.loop_thread import LoopThread
from nbcluster.server.idle import IdleWatch
from nbcluster.server.scheduler import Scheduler
from nbcluster.testing.clock import FakeClock


@pytest.mark.timeout(5)
def test_idle_counts_from_the_last_client_and_from_the_start():
    clock = FakeClock()
    scheduler = Scheduler()
    watch = IdleWatch(scheduler, 10.0, clock=clock)
    clock.advance(9.9)
    assert not watch.due()
    scheduler.state.add_client("c1")
    clock.advance(100)
    assert not watch.due(), "a connected client keeps it, however long"
    scheduler.state.remove_client("c1", clock.now())
    clock.advance(9.9)
    assert not watch.due(), "counted from when the last client left"
    clock.advance(0.2)
    assert watch.due()


@pytest.mark.timeout(5)
def test_idle_timeout_must_be_positive():
    with pytest.raises(ValueError, match="idle timeout"):
        IdleWatch(Scheduler(), 0)


@pytest.mark.timeout(8)
def test_scheduler_closes_once_its_last_client_left():
    thread = LoopThread("nbcluster-test-idle")
    try:
        async def start():
            s = await Scheduler("tcp://127.0.0.1:0", token="t" * 32).start()
            IdleWatch(s, 0.3).start()
            return s
        scheduler = thread.run(start())
        with Client(scheduler.address, token="t" * 32, set_as_default=False) as client:
            assert client.status == "running"
        thread.run(_wait(scheduler.closed), 5)
    finally:
        thread.stop()


async def _wait(event):
    await event.wait()


@pytest.mark.timeout(10)
def test_cli_scheduler_exits_after_idle_timeout(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "nbcluster", "scheduler", "--port", "0", "--dashboard-port", "-1",
         "--idle-timeout", "0.3s", "--connection-file", str(tmp_path / "c.json")],
        capture_output=True, text=True, timeout=8)
    assert proc.returncode == 0, proc.stderr
    assert "no client for 0.3 s" in proc.stdout + proc.stderr
    assert not (tmp_path / "c.json").exists()


@pytest.mark.timeout(10)
def test_cli_rejects_a_bad_idle_timeout():
    proc = subprocess.run([sys.executable, "-m", "nbcluster", "scheduler", "--port", "0",
                           "--dashboard-port", "-1", "--idle-timeout", "soon"],
                          capture_output=True, text=True, timeout=8)
    assert proc.returncode == 1
    assert "--idle-timeout" in proc.stderr
