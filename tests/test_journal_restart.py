"""A scheduler SIGKILLed in the middle of 10,000 fire-and-forget tasks and started again on its
journal runs every one of them, at least once (issue 15's proof, with real processes)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from nbcluster import Client, fire_and_forget
from nbcluster.testing import wait_until

pytestmark = pytest.mark.timeout(120)
TOKEN = "journal-test-token-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Processes:
    def __init__(self, tmp_path):
        self.env = dict(os.environ, NBCLUSTER_TOKEN=TOKEN,
                        NBCLUSTER_RUNTIME_DIR=str(tmp_path / "runtime"))
        self.procs: list[subprocess.Popen] = []
        self.logs = tmp_path / "logs"
        self.logs.mkdir()

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}-{len(self.procs)}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "nbcluster", *args],
                                stdout=log, stderr=subprocess.STDOUT, env=self.env)
        log.close()
        self.procs.append(proc)
        return proc

    def scheduler(self, port: int, journal: str) -> subprocess.Popen:
        proc = self.start("scheduler", "scheduler", "--port", str(port), "--dashboard-port",
                          "-1", "--journal", journal)
        wait_until(lambda: _listening(port) or proc.poll() is not None, "the scheduler")
        assert proc.poll() is None, self.log_text()
        return proc

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-2000:] for p in self.logs.iterdir())

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait(10)


@pytest.fixture
def processes(tmp_path):
    procs = Processes(tmp_path)
    yield procs
    procs.stop()


def test_every_fire_and_forget_task_runs_after_a_scheduler_sigkill(processes, tmp_path):
    port, journal, out = _free_port(), str(tmp_path / "journal.sqlite"), tmp_path / "out.txt"
    address = f"tcp://127.0.0.1:{port}"
    n = 10_000

    def append(i, path):
        with open(path, "a") as f:
            f.write(f"{i}\n")

    def lines() -> list[str]:
        return out.read_text().split() if out.exists() else []

    scheduler = processes.scheduler(port, journal)
    workers = [processes.start("worker", "worker", address) for _ in range(2)]
    with Client(address, timeout=30) as client:
        client.wait_for_workers(2, timeout=30)
        futures = client.map(append, range(n), path=str(out))
        fire_and_forget(futures)
        client.scheduler_info()       # answered after the submits: all accepted, on disk
        del futures
        wait_until(lambda: len(lines()) >= n // 10, "a tenth of the tasks to run", timeout=60)
        scheduler.send_signal(signal.SIGKILL)
        scheduler.wait(10)
    ran_before = len(lines())
    assert ran_before < n, "the scheduler should die in the middle"
    assert all(w.poll() is None for w in workers)   # they wait for their scheduler

    processes.scheduler(port, journal)              # the same workers come back to it
    wait_until(lambda: len(set(lines())) == n, "every task to run", timeout=90)
    ran = lines()
    twice = len(ran) - n
    print(f"\n{n:,} fire-and-forget tasks: {ran_before:,} ran before the SIGKILL, "
          f"{twice:,} ran twice (at least once is the promise)")
    assert sorted(set(map(int, ran))) == list(range(n))


def test_a_waiting_client_gets_every_result_across_a_scheduler_sigkill(processes, tmp_path):
    port, journal = _free_port(), str(tmp_path / "journal.sqlite")
    address = f"tcp://127.0.0.1:{port}"
    marks = tmp_path / "marks"
    marks.mkdir()

    def work(i):
        import time
        time.sleep(0.002)      # the task's run time, not a wait
        return i * 2

    def add(a, b):
        return a + b

    def flaky(i, folder):      # fails its first attempt, then succeeds
        import os
        mark = os.path.join(folder, str(i))
        if not os.path.exists(mark):
            open(mark, "w").close()
            raise ValueError(f"first attempt of {i}")
        return -i

    scheduler = processes.scheduler(port, journal)
    workers = [processes.start("worker", "worker", address) for _ in range(2)]
    with Client(address, timeout=30) as client:
        client.wait_for_workers(2, timeout=30)
        plain = client.map(work, range(600))
        pairs = [client.submit(add, plain[i], plain[i + 1]) for i in range(200)]
        later = client.map(work, range(1000, 1100), countdown=1.5)
        retried = client.map(flaky, range(100), folder=str(marks), retries=2)
        everything = plain + pairs + later + retried
        assert len(everything) == 1000
        client.scheduler_info()   # all accepted
        wait_until(lambda: sum(f.done() for f in everything) >= 150, "some results", timeout=60)
        scheduler.send_signal(signal.SIGKILL)
        scheduler.wait(10)
        done_before = sum(f.done() for f in everything)
        processes.scheduler(port, journal)
        results = client.gather(everything, timeout=60)
    assert done_before < 1000
    assert results[:600] == [i * 2 for i in range(600)]
    assert results[600:800] == [4 * i + 2 for i in range(200)]
    assert results[800:900] == [i * 2 for i in range(1000, 1100)]
    assert results[900:] == [-i for i in range(100)]
    assert all(w.poll() is None for w in workers)      # the same workers throughout
