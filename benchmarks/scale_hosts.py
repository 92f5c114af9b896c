"""Processes of the scale benchmark (issue 14, parts 2-5): a scheduler started from each
system's command line, and worker *host* processes that each run many workers.

``python -m benchmarks.scale_hosts SYSTEM ADDRESS COUNT PREFIX`` is a host: it runs COUNT
workers of SYSTEM (1 thread each, no memory limit), each on a thread of its own with its own
event loop, until its stdin closes. For nbcluster each thread runs the public command line,
``nbcluster.cli.main(["worker", ...])`` (the CLI has no option to run several workers in one
process, and the Worker class is internal). For dask each thread runs a ``distributed.Worker``
(its public class) on its own loop: the same layout for both systems.

Everything here binds 127.0.0.1. Processes are started in the caller's process group (the
benchmark child runs in a session of its own, which its parent kills as a whole) and are
also stopped one by one by :class:`Processes`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import IO

from .systems import HOST, child_env, free_port, wait_for_port

DASK_SCHEDULER_FLAGS = ["--no-dashboard"]


# --------------------------------------------------------------------------- /proc readers
def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def rss(pid: int | None = None) -> int:
    """Resident bytes of ``pid`` (this process if None), from /proc (no psutil needed)."""
    return _status_kb(pid or os.getpid(), "VmRSS") * 1024


def peak_rss(pid: int | None = None) -> int:
    """The high-water mark of the resident bytes (VmHWM) since start or :func:`reset_peak`."""
    return _status_kb(pid or os.getpid(), "VmHWM") * 1024


def reset_peak(pid: int | None = None) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, our own processes); False if refused."""
    try:
        with open(f"/proc/{pid or os.getpid()}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- starting
class Processes:
    """The scheduler and hosts of one measurement; :meth:`stop` ends every one of them."""

    def __init__(self, system: str, log: IO) -> None:
        self.system = system
        self.log = log
        self.env, self.root = child_env()
        # nbcluster: one token for all (no connection file lookup); its connection file goes
        # to a folder of ours, not the user's runtime directory
        self.env["NBCLUSTER_TOKEN"] = os.environ.setdefault("NBCLUSTER_TOKEN",
                                                            os.urandom(16).hex())
        self.runtime_dir = ""   # ours to remove, unless the caller chose one
        if "NBCLUSTER_RUNTIME_DIR" not in self.env:
            self.runtime_dir = self.env["NBCLUSTER_RUNTIME_DIR"] = os.path.join(
                os.environ.get("TMPDIR", "/tmp"), f"nbcluster-scale-run-{os.getpid()}")
        self.procs: list[subprocess.Popen] = []
        self.scheduler: subprocess.Popen | None = None
        self.address = ""

    def _start(self, cmd: list[str], stdin: bool = False) -> subprocess.Popen:
        p = subprocess.Popen(cmd, cwd=self.root, env=self.env, stdout=self.log,
                             stderr=self.log, stdin=subprocess.PIPE if stdin else
                             subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def start_scheduler(self, timeout: float = 60.0) -> str:
        port = free_port()
        if self.system == "dask":
            cmd = [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", HOST,
                   "--port", str(port), *DASK_SCHEDULER_FLAGS]
        else:
            cmd = [sys.executable, "-m", "nbcluster", "scheduler", "--host", HOST,
                   "--port", str(port), "--dashboard-port", "-1"]
        self.scheduler = self._start(cmd)
        wait_for_port(port, timeout, self.scheduler)
        self.address = f"tcp://{HOST}:{port}"
        return self.address

    def start_hosts(self, workers: int, hosts: int) -> list[subprocess.Popen]:
        """``workers`` in-process workers spread over ``hosts`` host processes."""
        started = []
        for h in range(hosts):
            count = workers // hosts + (1 if h < workers % hosts else 0)
            if count:
                started.append(self._start([sys.executable, "-m", "benchmarks.scale_hosts",
                                            self.system, self.address, str(count), f"h{h}"],
                                           stdin=True))
        return started

    def start_worker_processes(self, n: int) -> list[subprocess.Popen]:
        """``n`` worker processes from nbcluster's command line (one worker each)."""
        cmd = [sys.executable, "-m", "nbcluster", "worker", self.address, "--nthreads", "1",
               "--memory-limit", "none"]
        return [self._start(cmd) for _ in range(n)]

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def stop(self, grace: float = 5.0) -> None:
        """Ask each process to go (stdin closed, SIGTERM), then kill what is left."""
        for p in self.procs:
            if p.stdin is not None:
                try:
                    p.stdin.close()
                except OSError:
                    pass
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for p in self.procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()
        if self.runtime_dir:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)


# --------------------------------------------------------------------------- a host process
def _nbcluster_worker(address: str, name: str) -> None:
    from nbcluster.cli import main

    main(["worker", address, "--nthreads", "1", "--name", name, "--memory-limit", "none"])


def _dask_worker(address: str, name: str) -> None:
    import asyncio

    from distributed import Worker

    async def run() -> None:
        # dashboard off and no memory limit, like the nbcluster workers here
        async with Worker(address, nthreads=1, name=name, host=HOST, dashboard=False,
                          memory_limit=0) as w:
            await w.finished()

    asyncio.run(run())


def host_main(argv: list[str]) -> int:
    system, address, count, prefix = argv[0], argv[1], int(argv[2]), argv[3]
    target = _dask_worker if system == "dask" else _nbcluster_worker
    # a worker that fails to join prints why (to the log); the others go on
    for i in range(count):
        threading.Thread(target=target, args=(address, f"{prefix}-{i}"), daemon=True,
                         name=f"worker-{prefix}-{i}").start()
    try:
        sys.stdin.buffer.read()        # until the benchmark closes our stdin (or dies)
    except KeyboardInterrupt:
        pass
    # the threads' loops and executors are daemons: leave without joining them
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(host_main(sys.argv[1:]))
