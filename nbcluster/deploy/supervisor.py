"""``nbcluster worker ADDRESS --nworkers N``: one supervisor process running N worker processes.

The supervisor is a :class:`Cluster` kind without a scheduler of its own, so the books and the
replacement of a worker that dies are the ones every cluster shares. A worker killed (by a
signal, the kernel's out-of-memory killer, its own memory limit) or crashed is replaced after a
back-off that doubles while its replacements keep dying young (:func:`backoff`). A worker that
ended for good is not: exit code 0 (it retired, or its scheduler closed it) or
``SCHEDULER_LOST_EXIT_CODE`` (it gave up on a lost scheduler; then no other is replaced either).
The supervisor exits when no worker is left, or on SIGTERM / SIGINT after stopping them all.

Each worker is ``python -m nbcluster worker ADDRESS ... --supervised``, in a session of its own
(a Ctrl-C reaches the supervisor only, which stops them in order). Its token arrives on its
stdin, never in its argv; its stderr passes through the supervisor (its "joined" line says its
address); and when its stdin closes, because the supervisor stopped it or died (even by
SIGKILL), it closes as on SIGTERM: no worker outlives its supervisor.
"""

from __future__ import annotations

import collections
import dataclasses
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable

from ..config import MEMORY_EXIT_CODE, SCHEDULER_LOST_EXIT_CODE
from ..errors import ClusterError, SchedulerLostError
from .cluster import START_TIMEOUT, Cluster, RunningWorker, WorkerSpec

STABLE_SECONDS = 30.0   # a worker that lived this long: its replacement starts at once
FIRST_BACKOFF = 1.0     # seconds before replacing one that died younger, doubling ...
MAX_BACKOFF = 60.0      # ... up to this
CLOSE_SECONDS = 10.0    # a worker has this long to close on SIGTERM before it is killed


def backoff(lived: float, previous: float) -> float:
    """Seconds to wait before replacing a worker that lived ``lived`` s, when the last
    replacement in its place waited ``previous`` s."""
    if lived >= STABLE_SECONDS:
        return 0.0
    return min(MAX_BACKOFF, max(FIRST_BACKOFF, 2 * previous))


def exit_reason(code: int) -> tuple[str, bool]:
    """What a worker process's exit code says happened, and whether to replace it."""
    if code == 0:
        return "ended (it retired, or its scheduler closed it or went away)", False
    if code == SCHEDULER_LOST_EXIT_CODE:
        return "gave up on its scheduler", False
    if code == MEMORY_EXIT_CODE:
        return "went over its memory limit", True
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        oom = " (as the kernel's out-of-memory killer does)" if -code == signal.SIGKILL else ""
        return f"was killed by {name}{oom}", True
    return f"exited with code {code}", True


class _Worker:
    """One supervised worker process and the threads that relay its stderr and see it end."""

    def __init__(self, supervisor: WorkerSupervisor, spec: WorkerSpec, argv: list[str],
                 token: str | None) -> None:
        self.supervisor = supervisor
        self.name = spec.name
        self.address = ""
        self.retired = False              # asked to stop: its exit is no news
        self.born = time.monotonic()
        self.backoff = 0.0                # seconds its replacement waits (set when it dies)
        self.tail: collections.deque[str] = collections.deque(maxlen=5)
        self._settled = threading.Event()    # joined, or ended
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        try:
            if token:
                self._stdin.write(token.encode() + b"\n")
                self._stdin.flush()
        except OSError:
            pass                          # it died at once: wait_ready says how
        threading.Thread(target=self._relay, name=f"nbcluster-relay-{self.name}",
                         daemon=True).start()
        threading.Thread(target=self._watch, name=f"nbcluster-watch-{self.name}",
                         daemon=True).start()

    @property
    def _stdin(self) -> Any:
        assert self.proc.stdin is not None
        return self.proc.stdin

    def _relay(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            sys.stderr.buffer.write(raw)
            sys.stderr.flush()
            line = raw.decode(errors="replace").strip()
            if line:
                self.tail.append(line)
            words = line.split()
            if not self.address and line.startswith("nbcluster worker ") and \
                    " joined " in line and len(words) > 2:
                self.address = words[2]
                self._settled.set()

    def _watch(self) -> None:
        code = self.proc.wait()
        self._settled.set()
        if self.address and not self.retired:
            self.supervisor._exited(self, code)

    def wait_ready(self, deadline: float) -> None:
        self._settled.wait(max(0.0, deadline - time.monotonic()))
        if not self.address:
            self.stop(0)
            last = self.tail[-1] if self.tail else f"exit code {self.proc.returncode}"
            raise ClusterError(f"worker {self.name} did not start: {last}")

    def stop(self, grace: float) -> None:
        """SIGTERM (and its stdin closed), then SIGKILL after ``grace`` seconds."""
        self.retired = True
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self._stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class WorkerSupervisor(Cluster):
    """``n_workers`` worker processes of the scheduler at ``scheduler_address``, each started
    as ``argv(spec)`` (``spec.name`` and ``spec.options["index"]`` tell them apart) with
    ``token`` on its stdin. ``memory_limit``: each worker's ("auto": this machine's memory
    divided among them). ``ended`` is set when no worker is left."""

    @property
    def kind(self) -> str:
        return "supervised processes"

    def __init__(self, scheduler_address: str, n_workers: int,
                 argv: Callable[[WorkerSpec], list[str]], *, token: str | None,
                 memory_limit: int | str | None = "auto", name: str | None = None,
                 ended: threading.Event | None = None, timeout: float = START_TIMEOUT,
                 close_timeout: float = CLOSE_SECONDS) -> None:
        if not isinstance(n_workers, int) or n_workers < 1:
            raise ValueError(f"--nworkers must be at least 1, got {n_workers!r}")
        super().__init__(memory_limit=memory_limit, token=token, timeout=timeout,
                         close_timeout=close_timeout)
        self._address = scheduler_address
        self._token = token               # the base makes one up when None: not for workers
        self._argv = argv
        self._prefix = name or "worker"
        self._gave_up: str | None = None
        self._backoffs: dict[str, float] = {}   # by worker name: the last back-off
        self._stopping = threading.Event()
        self.failed = 0                   # places given up after replacements kept failing
        self.ended = ended or threading.Event()
        self._start(n_workers)

    # ------------------------------------------------------------------ the Cluster hooks
    def _start_scheduler(self, first: list[WorkerSpec]) -> None:
        self.scheduler_address = self._address      # not ours: it runs elsewhere

    def _stop_scheduler(self) -> None:
        pass

    def _new_specs(self, n: int, queues: list[str] | None) -> list[WorkerSpec]:
        out = []
        for _ in range(n):
            i = next(self._names)
            out.append(WorkerSpec(f"{self._prefix}-{i}", None, queues, None, {"index": i}))
        return out

    def _respec(self, spec: WorkerSpec) -> WorkerSpec:
        """A replacement takes the name and index (port, spill directory) of the one it
        replaces."""
        return dataclasses.replace(spec, options=dict(spec.options))

    def _start_worker(self, spec: WorkerSpec, timeout: float) -> _Worker:
        worker = _Worker(self, spec, self._argv(spec), self._token)
        worker.wait_ready(time.monotonic() + timeout)
        return worker

    def _stop_worker(self, handle: _Worker, grace: float) -> None:
        # the base stops (frees) a dead worker just before starting its replacement: the
        # back-off is waited out here (cut short by close)
        if handle.backoff and handle.proc.poll() is not None:
            self._stopping.wait(handle.backoff)
        handle.stop(grace)

    def _scheduler_lost(self) -> str | None:
        return self._gave_up

    def _replace(self, dead: RunningWorker, replace: bool) -> None:
        restarts = self.restarts
        try:
            super()._replace(dead, replace)
        finally:
            with self._lock:
                if replace and self.restarts == restarts and not self.closed \
                        and self._gave_up is None:
                    self.failed += 1
                empty = not self._running and not self._replacing
            if empty:
                self.ended.set()

    # ------------------------------------------------------------------ exits
    def _exited(self, worker: _Worker, code: int) -> None:
        """From the worker's watch thread: it ended without being asked to."""
        why, replace = exit_reason(code)
        if code == SCHEDULER_LOST_EXIT_CODE and self._gave_up is None:
            self._gave_up = f"worker {worker.name} gave up on the scheduler at {self._address}"
        details = ""
        if replace:
            lived = time.monotonic() - worker.born
            worker.backoff = backoff(lived, self._backoffs.get(worker.name, 0.0))
            self._backoffs[worker.name] = worker.backoff
            details = f" in {worker.backoff:g} s" if worker.backoff else ""
        self._worker_exited(worker, f"({worker.address}) {why}", replace, details)

    def close(self) -> None:
        self._stopping.set()              # a replacement waiting out its back-off: none
        super().close()


def run_supervisor(scheduler_address: str, n_workers: int,
                   argv: Callable[[WorkerSpec], list[str]], *, token: str | None,
                   memory_limit: int | str | None, name: str | None) -> int:
    """Start the workers, wait for SIGTERM / SIGINT or for none to be left, stop them. The
    exit code: 0, or 1 when workers died and could not be replaced; raises SchedulerLostError
    when they gave up on the scheduler."""
    wake = threading.Event()
    signalled: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        signalled.append(signum)
        wake.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(sig) is not signal.SIG_IGN:   # nohup: stays ignored
            signal.signal(sig, on_signal)
    supervisor = WorkerSupervisor(scheduler_address, n_workers, argv, token=token,
                                  memory_limit=memory_limit, name=name, ended=wake)
    try:
        print(f"nbcluster worker: supervising {n_workers} worker processes of "
              f"{scheduler_address}: {', '.join(supervisor.workers)}", file=sys.stderr,
              flush=True)
        wake.wait()
    finally:
        supervisor.close()
    if signalled:
        return 0
    if supervisor._gave_up:
        raise SchedulerLostError(supervisor._gave_up)
    return 1 if supervisor.failed else 0
