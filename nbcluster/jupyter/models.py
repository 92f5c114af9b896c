"""Widget models as plain Python: what the progress and cluster widgets show, without ipywidgets.

A model holds counts or a snapshot, is updated from any thread, and tells its listeners about
changes at most ``rate`` times a second (a trailing update is never lost). Views (``widgets.py``)
subscribe and copy the model's state into widget traits; tests drive models directly.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..client import Future, futures_of


def flatten_futures(obj: Any) -> list[Future]:
    """Every Future inside ``obj`` (lists, tuples, sets, dicts, nested), each key once."""
    return futures_of(obj)


def client_closed(client: Any) -> bool:
    """Whether a Client is closed (``client.closed`` when the engine has it)."""
    closed = getattr(client, "closed", None)
    if isinstance(closed, bool):
        return closed
    return bool(getattr(client, "_closed", False))


def remover(listeners: list, fn: Any) -> Callable[[], None]:
    """What ``subscribe`` returns: takes ``fn`` out of ``listeners`` (if still there)."""
    def remove() -> None:
        if fn in listeners:
            listeners.remove(fn)
    return remove


def key_name(key: str) -> str:
    """The function name of a task key: ``"slow_square-1a2b"`` -> ``"slow_square"``."""
    return key.rsplit("-", 1)[0] if "-" in key else key


class Throttle:
    """Calls ``fn`` at most once per ``interval`` seconds; a request inside the interval is
    delivered by a timer at its end, so the last state is always shown."""

    def __init__(self, fn: Callable[[], None], interval: float) -> None:
        self.fn = fn
        self.interval = interval
        self._lock = threading.Lock()
        self._last = 0.0
        self._timer: threading.Timer | None = None

    def request(self) -> None:
        with self._lock:
            if self._timer is not None:
                return
            wait = self._last + self.interval - time.monotonic()
            if wait > 0:
                self._timer = threading.Timer(wait, self._fire)
                self._timer.name = "nbcluster-jupyter-throttle"
                self._timer.daemon = True
                self._timer.start()
                return
            self._last = time.monotonic()
        self.fn()

    def flush(self) -> None:
        """Call ``fn`` now and drop a pending timer."""
        with self._lock:
            timer, self._timer = self._timer, None
            self._last = time.monotonic()
        if timer is not None:
            timer.cancel()
        self.fn()

    def _fire(self) -> None:
        with self._lock:
            if self._timer is None:     # flushed meanwhile
                return
            self._timer = None
            self._last = time.monotonic()
        self.fn()

    def cancel(self) -> None:
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()


@dataclass
class GroupState:
    """Counts for the tasks of one function name."""

    name: str
    total: int = 0
    finished: int = 0
    erred: int = 0
    cancelled: int = 0

    @property
    def done(self) -> int:
        return self.finished + self.erred + self.cancelled

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    @property
    def complete(self) -> bool:
        return self.done >= self.total


class ProgressModel:
    """Progress of a set of futures, grouped by function name.

    ``subscribe(fn)`` calls ``fn(model)`` (from the client's I/O thread or a timer thread) when
    counts change, throttled to ``rate`` per second, and once more when everything is done.
    """

    def __init__(self, futures: Any, rate: float = 10.0) -> None:
        futs = flatten_futures(futures)
        self.groups: dict[str, GroupState] = {}
        for f in futs:
            name = key_name(f.key)
            group = self.groups.get(name)
            if group is None:
                group = self.groups[name] = GroupState(name)
            group.total += 1
        self.total = len(futs)
        self.start = time.monotonic()
        self.end: float | None = None
        self.errors: list[tuple[str, str]] = []      # (key, status) of the first few failures
        self.finished = threading.Event()
        self._lock = threading.Lock()
        self._listeners: list[Callable[["ProgressModel"], None]] = []
        self._throttle = Throttle(self._notify, 1.0 / rate)
        if self.total == 0:
            self.end = self.start
            self.finished.set()
        for f in futs:
            f.add_done_callback(self._one_done)

    # ------------------------------------------------------------------ counting
    def _one_done(self, fut: Future) -> None:
        self.record(fut.key, fut.status)

    def record(self, key: str, status: str) -> None:
        """Count one task as ended with ``status`` (finished, error, cancelled, lost)."""
        with self._lock:
            group = self.groups.get(key_name(key))
            if group is None or group.complete:
                return
            if status == "finished":
                group.finished += 1
            elif status == "cancelled":
                group.cancelled += 1
            else:
                group.erred += 1
                if len(self.errors) < 10:
                    self.errors.append((key, status))
            all_done = self.done >= self.total
            if all_done:
                self.end = time.monotonic()
        if all_done:
            self._throttle.flush()
            self.finished.set()
        else:
            self._throttle.request()

    @property
    def done(self) -> int:
        return sum(g.done for g in self.groups.values())

    @property
    def erred(self) -> int:
        return sum(g.erred for g in self.groups.values())

    @property
    def elapsed(self) -> float:
        return (self.end if self.end is not None else time.monotonic()) - self.start

    def snapshot(self) -> list[GroupState]:
        """A consistent copy of the groups (first-seen order)."""
        with self._lock:
            return [GroupState(g.name, g.total, g.finished, g.erred, g.cancelled)
                    for g in self.groups.values()]

    # ------------------------------------------------------------------ listeners
    def subscribe(self, fn: Callable[["ProgressModel"], None]) -> Callable[[], None]:
        self._listeners.append(fn)
        return remover(self._listeners, fn)

    def _notify(self) -> None:
        for fn in list(self._listeners):
            try:
                fn(self)
            except Exception:   # a broken view must not break the client's I/O thread
                import logging

                logging.getLogger("nbcluster.jupyter").exception("progress listener failed")

    def wait(self, timeout: float | None = None) -> bool:
        return self.finished.wait(timeout)

    def close(self) -> None:
        self._throttle.cancel()
        self._listeners.clear()


# ---------------------------------------------------------------------- cluster
@dataclass
class WorkerRow:
    address: str
    name: str
    nthreads: int
    memory: int            # bytes of results held
    rss: int               # process memory
    memory_limit: int | None
    cpu: float
    processing: int
    keys: int
    status: str = "running"   # "paused": over its memory pause threshold
    spilled: int = 0          # bytes of results on disk (part of ``memory``)


@dataclass
class ClusterSnapshot:
    """What the cluster widget and ``%cluster status`` show, from ``client.scheduler_info()``."""

    scheduler: str = ""
    workers: list[WorkerRow] = field(default_factory=list)
    tasks: dict[str, int] = field(default_factory=dict)
    done_by_prefix: dict[str, int] = field(default_factory=dict)
    dashboard_link: str | None = None
    schedules: dict[str, dict] = field(default_factory=dict)   # client.schedule, by name
    kind: str = ""                  # "processes", "in-process", "remote", "slurm"...
    jobs: dict[str, int] = field(default_factory=dict)   # batch jobs: pending, running
    resources_note: str = ""        # "2 tasks wait for resources no worker has: GPU=2"
    closed: bool = False
    error: str = ""

    @property
    def nthreads(self) -> int:
        return sum(w.nthreads for w in self.workers)

    @property
    def rss(self) -> int:
        return sum(w.rss for w in self.workers)

    @property
    def memory(self) -> int:
        return sum(w.memory for w in self.workers)

    @classmethod
    def from_info(cls, info: dict, dashboard_link: str | None = None,
                  kind: str = "") -> "ClusterSnapshot":
        rows = []
        for addr, w in sorted(info.get("workers", {}).items(),
                              key=lambda kv: str(kv[1].get("name", kv[0]))):
            metrics = w.get("metrics") or {}
            ident = w.get("identity") or {}
            rows.append(WorkerRow(
                address=addr, name=str(w.get("name", ident.get("name", addr))),
                nthreads=int(w.get("nthreads", ident.get("nthreads", 0)) or 0),
                memory=int(w.get("memory", metrics.get("nbytes", 0)) or 0),
                rss=int(metrics.get("rss", 0) or 0),
                memory_limit=ident.get("memory_limit"),
                cpu=float(metrics.get("cpu", 0.0) or 0.0),
                processing=int(w.get("processing", 0) or 0),
                keys=int(w.get("keys", 0) or 0),
                status=str(w.get("status", "running")) + (
                    f": {w['memory_note']}" if w.get("memory_note") else ""),
                spilled=int(metrics.get("spilled", 0) or 0)))
        return cls(scheduler=str(info.get("address", "")), workers=rows,
                   tasks=dict(info.get("tasks", {})),
                   done_by_prefix=dict(info.get("done_by_prefix", {})),
                   schedules=dict(info.get("schedules") or {}),
                   resources_note=str((info.get("resources") or {}).get("note") or ""),
                   dashboard_link=dashboard_link, kind=kind)

    def text(self) -> str:
        """A plain-text report (terminal, logs, ``%cluster status`` outside a notebook)."""
        if self.closed:
            return "nbcluster: no cluster (stopped)"
        lines = [f"Scheduler: {self.scheduler}" + (f" ({self.kind})" if self.kind else "")]
        if self.error:
            lines.append(f"Error: {self.error}")
        if self.jobs:
            lines.append(f"Jobs: {jobs_text(self.jobs)}")
        lines.append(f"Workers: {len(self.workers)}, threads: {self.nthreads}, "
                     f"memory: {format_bytes(self.rss)} (results {format_bytes(self.memory)})")
        for w in self.workers:
            limit = f" / {format_bytes(w.memory_limit)}" if w.memory_limit else ""
            lines.append(f"  {w.name:<10} {w.address:<24} threads {w.nthreads}  "
                         f"memory {format_bytes(w.rss)}{limit}  cpu {w.cpu:.0f}%  "
                         f"processing {w.processing}  keys {w.keys}"
                         + (f"  on disk {format_bytes(w.spilled)}" if w.spilled else "")
                         + ("" if w.status == "running" else f"  ({w.status})"))
        tasks = ", ".join(f"{k}: {v}" for k, v in sorted(self.tasks.items())) or "none"
        lines.append(f"Tasks by state: {tasks}")
        if self.resources_note:
            lines.append(f"Waiting: {self.resources_note}")
        for name, s in sorted(self.schedules.items()):
            lines.append(f"Schedule {name}: {schedule_line(s)}")
        lines.append(f"Dashboard: {self.dashboard_link or 'not available'}")
        return "\n".join(lines)


def jobs_text(jobs: dict[str, int]) -> str:
    """``1 running, 2 pending (queued)``: a batch-system cluster's jobs."""
    return f"{jobs.get('running', 0)} running, {jobs.get('pending', 0)} pending (queued)"


def schedule_line(s: dict) -> str:
    """``every 60 s, next 12:00:00 UTC, last memory`` (and what was skipped, if any)."""
    next_run = time.strftime("%H:%M:%S", time.gmtime(s.get("next") or 0))
    text = f"{s.get('rule')}, next {next_run} UTC, last {s.get('last') or 'none yet'}"
    return text + (f", {s['skipped']} skipped" if s.get("skipped") else "")


def format_bytes(n: float | None) -> str:
    if not n:
        return "0 B"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class ClusterModel:
    """The latest ClusterSnapshot of a session; ``refresh()`` asks the scheduler for a new one."""

    def __init__(self, fetch: Callable[[], ClusterSnapshot]) -> None:
        self._fetch = fetch
        self.snapshot = ClusterSnapshot()
        self._listeners: list[Callable[[ClusterSnapshot], None]] = []
        self._lock = threading.Lock()

    def refresh(self) -> ClusterSnapshot:
        try:
            snap = self._fetch()
        except Exception as e:  # noqa: BLE001 - shown in the widget
            snap = ClusterSnapshot(scheduler=self.snapshot.scheduler, error=str(e) or type(e).__name__,
                                   closed=self.snapshot.closed)
        self.set(snap)
        return snap

    def set(self, snap: ClusterSnapshot) -> None:
        with self._lock:
            self.snapshot = snap
        for fn in list(self._listeners):
            try:
                fn(snap)
            except Exception:
                import logging

                logging.getLogger("nbcluster.jupyter").exception("cluster listener failed")

    def subscribe(self, fn: Callable[[ClusterSnapshot], None]) -> Callable[[], None]:
        self._listeners.append(fn)
        return remover(self._listeners, fn)


class Poller:
    """Calls ``fn`` every ``interval`` seconds on a daemon thread until ``stop()``."""

    def __init__(self, fn: Callable[[], object], interval: float = 1.0,
                 name: str = "nbcluster-jupyter-poll") -> None:
        self.fn = fn
        self.interval = interval
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.fn()
            except Exception:  # noqa: BLE001
                import logging

                logging.getLogger("nbcluster.jupyter").debug("poll failed", exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self.thread:
            self.thread.join(5)

    @property
    def running(self) -> bool:
        return self.thread.is_alive() and not self._stop.is_set()

