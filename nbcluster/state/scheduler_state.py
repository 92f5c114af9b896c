"""The scheduler's decisions: a pure, synchronous state machine.

``SchedulerState.handle(peer, batch, now)`` takes a batch of messages that arrived from one peer
(a client id or a worker address) and returns the messages to send, as ``(peer, message)``
pairs. It does no I/O and reads no clock: time arrives as ``now``.

Task states::

    waiting -> queued -> processing -> memory -> released (data freed, lineage kept) -> forgotten
                                   \\-> erred

``waiting``: some dependency is not in memory. ``queued``: ready, waiting for a worker slot.
A task stays known while a client wants it or a dependent still needs it (lineage), so results
lost with a worker can be recomputed.
"""

from __future__ import annotations

import heapq
from collections import defaultdict, deque

from ..errors import CancelledError, FutureLostError, KilledWorkerError
from ..protocol import messages as m
from ..protocol.serialize import dumps

FIRE_AND_FORGET = "@fire-and-forget"   # a pseudo client that lets go once the task ends
KILLED_WORKER_LIMIT = 3
QUEUED_WORK_SECONDS = 0.005   # aim to keep this much work queued on each thread
TASK_LOG_LENGTH = 10_000
MAX_WINDOW = 256               # tasks queued on a worker per thread, at most


class BadBatch(m.ProtocolError):
    """A message in a batch was malformed; ``out`` holds what the earlier ones produced."""

    def __init__(self, message: str, out: list) -> None:
        super().__init__(message)
        self.out = out


def _error(cls, message: str):
    """An nbcluster error as it travels to clients (pickled, like a task's own exception)."""
    return dumps(cls(message))


class TaskState:
    __slots__ = (
        "key", "prefix", "state", "fn", "args", "kwargs", "options", "deps", "dependents",
        "waiting_on", "who_has", "nbytes", "processing_on", "executing", "who_wants",
        "exception", "traceback", "blame", "priority", "suspicious", "story",
    )

    def __init__(self, key: str, fn: str, args, kwargs, options, priority: tuple) -> None:
        self.key, self.prefix, self.state = key, key.rsplit("-", 1)[0], "new"
        self.fn, self.args, self.kwargs, self.options = fn, args, kwargs, options
        self.deps: list[TaskState] = []
        self.dependents: set[TaskState] = set()
        self.waiting_on: set[TaskState] = set()
        self.who_has: set[WorkerState] = set()
        self.nbytes = 0
        self.processing_on: WorkerState | None = None
        self.executing = False   # the worker it is on said STARTED
        self.who_wants: set[str] = set()
        self.exception = self.traceback = self.blame = None
        self.priority = priority
        self.suspicious = 0
        self.story: list | None = None

    def __lt__(self, other: "TaskState") -> bool:
        return self.priority < other.priority

    def __repr__(self) -> str:
        return f"<Task {self.key!r} {self.state}>"


class WorkerState:
    __slots__ = ("address", "nthreads", "name", "processing", "has_what", "nbytes",
                 "functions", "identity", "metrics", "last_seen", "pinned")

    def __init__(self, address: str, nthreads: int, name: str, identity: dict) -> None:
        self.address, self.nthreads, self.name, self.identity = address, nthreads, name, identity
        self.processing: set[TaskState] = set()
        self.has_what: set[TaskState] = set()
        self.functions: set[str] = set()
        self.metrics: dict = {}
        self.nbytes, self.last_seen, self.pinned = 0, 0.0, 0

    def __repr__(self) -> str:
        return f"<Worker {self.address} {len(self.processing)} processing>"


class SchedulerState:
    """Tasks, workers and clients, and the rules that move tasks between states."""

    def __init__(self) -> None:
        self.tasks: dict[str, TaskState] = {}
        self.workers: dict[str, WorkerState] = {}
        self.clients: set[str] = set()
        self.functions: dict[str, bytes] = {}
        self.queue: list[TaskState] = []          # heap of queued root tasks
        self.unrunnable: list[TaskState] = []     # queued, pinned to workers not connected
        self.counter = 0
        self.avg_duration = 0.001
        self.counts: dict[str, int] = defaultdict(int)   # finished / erred totals by prefix
        self.out: list = []
        self.now = 0.0
        self.record_stories = False
        # (key, worker, start, stop, ok) of recent tasks, for observers such as the dashboard
        self.task_log: deque = deque(maxlen=TASK_LOG_LENGTH)
        self.task_log_total = 0       # entries ever appended: observers keep a cursor

    # ------------------------------------------------------------------ entry points
    def handle(self, peer: str, batch: list, now: float) -> list:
        """Apply a batch of messages from ``peer``; return ``[(peer, message), ...]`` to send."""
        self._check_batch(peer, batch)   # a malformed message is refused before any is applied
        self.now = now
        out = self.out = []
        handlers = self._handlers
        try:
            for msg in batch:
                handlers[msg[0]](self, peer, *msg[1:])
        except Exception as e:
            # What the messages before the bad one decided must still go out, or other
            # peers would wait forever for it; the shell closes the offending connection.
            self._fill_workers()
            self.out = []
            raise BadBatch(f"bad message from {peer}: {e!r}", out) from e
        self._fill_workers()
        self.out = []
        return out

    def _check_batch(self, peer: str, batch) -> None:
        """Raise ProtocolError unless every message in ``batch`` can be applied."""
        if type(batch) is not list:
            raise m.ProtocolError(f"a batch must be a list, got {type(batch).__name__}")
        role = "worker" if peer in self.workers else "client" if peer in self.clients else None
        defined: set = set()   # functions sent earlier in this batch
        for msg in batch:
            op = m.check_fields(msg)
            if op not in self._handlers or (role and op not in m.TO_SCHEDULER[role]):
                raise m.ProtocolError(f"{op!r} is not accepted from {role or 'peer'} {peer!r} "
                                      "by the scheduler's state (requests go to its shell)")
            if op == m.FUNCTION:
                defined.add(msg[1])
            elif op == m.SUBMIT:
                for spec in msg[1]:
                    m.check_task(spec)
                    fn = spec[1]
                    if spec[0] not in self.tasks and fn not in self.functions and fn not in defined:
                        raise m.ProtocolError(f"task {spec[0]!r} names unknown function {fn!r}")

    def add_client(self, client_id: str) -> None:
        self.clients.add(client_id)

    def remove_client(self, client_id: str, now: float = 0.0) -> list:
        self.now = now
        out = self.out = []
        self.clients.discard(client_id)
        for ts in [ts for ts in self.tasks.values() if client_id in ts.who_wants]:
            ts.who_wants.discard(client_id)
            self._maybe_forget(ts)
        self._fill_workers()
        self.out = []
        return out

    def add_worker(self, address: str, nthreads: int, name: str, identity: dict,
                   now: float = 0.0) -> list:
        self.now = now
        out = self.out = []
        if address in self.workers:
            raise ValueError(f"worker {address} is already registered")
        ws = WorkerState(address, max(1, int(nthreads)), name, identity)
        ws.last_seen = now
        self.workers[address] = ws
        pinned, self.unrunnable = self.unrunnable, []
        for ts in dict.fromkeys(pinned):
            if ts.state == "queued":
                self._become_ready(ts)   # back to unrunnable unless one of its workers is here
        self._fill_workers()
        self.out = []
        return out

    def remove_worker(self, address: str, now: float = 0.0) -> list:
        """A worker left or died: reschedule its tasks, recompute what only it held."""
        self.now = now
        out = self.out = []
        ws = self.workers.pop(address, None)
        if ws is None:
            return out
        lost = []
        for ts in ws.has_what:
            ts.who_has.discard(ws)
            if not ts.who_has and ts.state == "memory":
                # Marked before its dependents are rescheduled below, so that they wait for a
                # recompute instead of being sent to fetch it from nobody.
                ts.state = "released"
                lost.append(ts)
        ws.has_what, ws.nbytes = set(), 0
        for ts in list(ws.processing):
            executing = ts.executing
            self._unassign(ts, free=False)
            if executing:
                ts.suspicious += 1
                if ts.suspicious >= KILLED_WORKER_LIMIT:
                    self._record(ts, "killed-worker", address)
                    self._set_erred(ts, _error(KilledWorkerError, f"task {ts.key!r} was running "
                        f"on {ts.suspicious} workers that died; it is not retried again. Look "
                        "for a crash (memory, segfault, os._exit) in that function."), None, ts.key)
                    continue
            self._record(ts, "rescheduled", address)
            ts.state = "waiting"
            self._become_ready_or_wait(ts)
        for ts in lost:
            self._lost_data(ts)
        self._fill_workers()
        self.out = []
        return out

    # ------------------------------------------------------------------ client messages
    def _on_function(self, peer, token, blob) -> None:
        self.functions.setdefault(token, blob)

    def _on_submit(self, peer, specs) -> None:
        tasks = self.tasks
        for spec in specs:
            key, fn, args, kwargs, deps, options = spec
            ts = tasks.get(key)
            if ts is not None:
                ts.who_wants.add(peer)
                self._report_if_final(ts, peer)
                continue
            self.counter += 1
            prio = -(options.get("priority", 0) or 0) if options else 0
            ts = TaskState(key, fn, args, kwargs, options, (prio, self.counter))
            tasks[key] = ts
            ts.who_wants.add(peer)
            self._record(ts, "submitted", peer)
            failed_dep = None
            for dkey in dict.fromkeys(deps):
                dts = tasks.get(dkey)
                if dts is None:
                    failed_dep = dkey
                    continue
                ts.deps.append(dts)
                dts.dependents.add(ts)
            if failed_dep is not None:
                ts.state = "waiting"
                self._set_erred(ts, _error(FutureLostError,
                    f"task {key!r} depends on {failed_dep!r}, which the scheduler does not know "
                    "(its future was released before this task was submitted)"), None, key)
                continue
            ts.state = "waiting"
            self._become_ready_or_wait(ts)

    def _on_release(self, peer, keys) -> None:
        tasks = self.tasks
        for key in keys:
            ts = tasks.get(key)
            if ts is not None and peer in ts.who_wants:
                ts.who_wants.discard(peer)
                if not ts.who_wants:
                    self._maybe_forget(ts)

    def _on_want(self, peer, keys) -> None:
        for key in keys:
            ts = self.tasks.get(key)
            if ts is None:
                self.out.append((peer, [m.CANCELLED, key, "the scheduler does not know this key"]))
                continue
            ts.who_wants.add(peer)
            self._report_if_final(ts, peer)

    def _on_cancel(self, peer, keys) -> None:
        for key in keys:
            ts = self.tasks.get(key)
            if ts is None or ts.state in ("memory", "erred", "released"):
                continue
            self._set_erred(ts, None, None, key, cancel=f"cancelled by {peer}")

    def _on_fire_and_forget(self, peer, keys) -> None:
        for key in keys:
            ts = self.tasks.get(key)
            if ts is not None and ts.state not in ("memory", "erred", "released"):
                ts.who_wants.add(FIRE_AND_FORGET)

    def _on_update_data(self, peer, nbytes, worker) -> None:
        ws = self.workers.get(worker)
        for key, size in nbytes.items():
            ts = self.tasks.get(key)
            if ts is None:
                self.counter += 1
                ts = TaskState(key, "", None, None, None, (0, self.counter))
                self.tasks[key] = ts
            ts.who_wants.add(peer)
            if ws is None:
                if ts.state != "memory":   # else another copy (broadcast) is still there
                    self._set_erred(ts, _error(FutureLostError, f"{key!r} was scattered to "
                        f"{worker}, which is gone; scattered data cannot be recomputed"), None, key)
                continue
            if ts.state != "memory":   # replicas already counted keep their size
                ts.nbytes = size
            ts.state = "memory"
            self._add_replica(ts, ws)
            self.out.append((peer, [m.DONE, key, False, None, size]))

    # ------------------------------------------------------------------ worker messages
    def _on_started(self, peer, key, start) -> None:
        ts = self.tasks.get(key)
        if ts is not None and ts.processing_on is not None and ts.processing_on.address == peer:
            ts.executing = True

    def _on_finished(self, peer, key, nbytes, start, stop, has_value, value, typ) -> None:
        ws = self.workers.get(peer)
        if ws is None:
            return
        ts = self.tasks.get(key)
        if ts is None or ts.processing_on is not ws:
            # Not (or no longer) this worker's to run: it was freed, cancelled, erred or moved
            # elsewhere, and the worker was sent FREE for it, so it drops the value. Counting
            # it would record a replica that is gone.
            if ts is None or ws not in ts.who_has:
                self.out.append((peer, [m.FREE, [key]]))
            return
        ws.last_seen = self.now
        self.task_log.append((key, peer, start, stop, True))
        self.task_log_total += 1
        self._unassign(ts, free=False)
        self.avg_duration = 0.9 * self.avg_duration + 0.1 * max(stop - start, 1e-6)
        self.counts[ts.prefix] += 1
        ts.nbytes = nbytes
        ts.state = "memory"
        self._add_replica(ts, ws)
        self._record(ts, "memory", peer)
        self._tell(ts, [m.DONE, key, has_value, value if has_value else None, nbytes])
        ts.who_wants.discard(FIRE_AND_FORGET)
        for dts in ts.dependents:
            if ts in dts.waiting_on:
                dts.waiting_on.discard(ts)
                if not dts.waiting_on and dts.state == "waiting":
                    self._become_ready(dts)
        for dep in ts.deps:
            self._maybe_release_data(dep)
        if not ts.who_wants:
            self._maybe_release_data(ts)

    def _on_failed(self, peer, key, exception, traceback, start, stop) -> None:
        ts = self.tasks.get(key)
        ws = self.workers.get(peer)
        if ts is None or ws is None or ts.processing_on is not ws:
            return
        self.task_log.append((key, peer, start, stop, False))
        self.task_log_total += 1
        self._unassign(ts, free=False)
        self.counts[ts.prefix + " erred"] += 1
        self._record(ts, "erred", peer)
        self._set_erred(ts, exception, traceback, key)

    def _on_missing(self, peer, key, dep_key, holder) -> None:
        """A worker could not fetch ``dep_key`` from ``holder``: fix who_has, retry ``key``."""
        ts = self.tasks.get(key)
        dts = self.tasks.get(dep_key)
        hws = self.workers.get(holder)
        if dts is not None and hws is not None and hws in dts.who_has:
            dts.who_has.discard(hws)
            hws.has_what.discard(dts)
            hws.nbytes -= dts.nbytes
            if not dts.who_has and dts.state == "memory":
                self._lost_data(dts)
        if ts is not None and ts.processing_on is not None and ts.processing_on.address == peer:
            self._unassign(ts, free=False)
            ts.state = "waiting"
            self._record(ts, "missing-dep", dep_key)
            self._become_ready_or_wait(ts)

    def _on_output(self, peer, key, stream, text) -> None:
        """What a task printed: to the clients that hold its future."""
        ts = self.tasks.get(key)
        if ts is not None:
            self._tell(ts, [m.OUTPUT, key, stream, text])

    def _on_heartbeat(self, peer, metrics) -> None:
        ws = self.workers.get(peer)
        if ws is not None:
            ws.metrics = metrics
            ws.last_seen = self.now

    _handlers = {
        m.FUNCTION: _on_function, m.SUBMIT: _on_submit, m.RELEASE: _on_release, m.WANT: _on_want,
        m.CANCEL: _on_cancel, m.FIRE_AND_FORGET: _on_fire_and_forget,
        m.UPDATE_DATA: _on_update_data, m.STARTED: _on_started, m.FINISHED: _on_finished,
        m.FAILED: _on_failed, m.MISSING: _on_missing, m.HEARTBEAT: _on_heartbeat,
        m.OUTPUT: _on_output,
    }

    # ------------------------------------------------------------------ transitions
    def _become_ready_or_wait(self, ts: TaskState) -> None:
        """Put a waiting task on its way: wait for deps (recomputing lost ones) or run."""
        ts.waiting_on = set()
        for dts in ts.deps:
            if dts.state == "memory":
                continue
            if dts.state == "released":
                self._recompute(dts, ts.key)
            if ts.state == "erred":   # an input without lineage was lost: erred with it
                return
            if dts.state == "erred":
                self._set_erred(ts, dts.exception, dts.traceback, dts.blame)
                return
            ts.waiting_on.add(dts)
        if not ts.waiting_on:
            self._become_ready(ts)

    def _recompute(self, ts: TaskState, why) -> None:
        """Bring back a released task from its lineage; scattered data has none: it errs."""
        if not ts.fn:
            self._set_erred(ts, _error(FutureLostError, f"{ts.key!r} was scattered data, now "
                            "gone with its worker or released; it cannot be recomputed"),
                            None, ts.key)
            return
        self._record(ts, "recompute", why)
        ts.state = "waiting"
        self._become_ready_or_wait(ts)

    def _become_ready(self, ts: TaskState) -> None:
        pinned = ts.options and ts.options.get("workers")
        if ts.deps or pinned:
            ws = self._pick_worker(ts)
            if ws is not None:
                self._assign(ts, ws)
                return
        ts.state = "queued"
        if pinned:   # none of its workers is here; _fill_workers would send it to any worker
            self.unrunnable.append(ts)
        else:
            heapq.heappush(self.queue, ts)

    def _pick_worker(self, ts: TaskState) -> WorkerState | None:
        """The worker holding most input bytes, unless it is much busier than the idlest."""
        workers = self.workers
        if not workers:
            return None
        options = ts.options
        if options and options.get("workers"):
            allowed = [workers[a] for a in options["workers"] if a in workers]
            if not allowed:
                return None
            return min(allowed, key=lambda w: len(w.processing) / w.nthreads)
        held: dict[WorkerState, int] = {}
        for dts in ts.deps:
            for ws in dts.who_has:
                held[ws] = held.get(ws, 0) + dts.nbytes + 1
        idlest = min(workers.values(), key=lambda w: len(w.processing) / w.nthreads)
        if not held:
            return idlest
        best = max(held, key=held.__getitem__)
        idle_load = len(idlest.processing) / idlest.nthreads
        best_load = len(best.processing) / best.nthreads
        # moving inputs costs less than idling: go elsewhere only for small inputs
        if best_load > 2 * idle_load + 2 and held[best] < 1_000_000:
            return idlest
        return best

    def _window(self, ws: WorkerState) -> int:
        per_thread = int(QUEUED_WORK_SECONDS / self.avg_duration)
        return ws.nthreads * (1 + max(1, min(MAX_WINDOW, per_thread)))

    def _fill_workers(self) -> None:
        queue = self.queue
        if not queue or not self.workers:
            return
        workers = list(self.workers.values())
        while queue:
            best = best_load = None
            for ws in workers:
                n = len(ws.processing)
                if n < self._window(ws):
                    load = n / ws.nthreads
                    if best is None or load < best_load:
                        best, best_load = ws, load
            if best is None:
                return
            ts = heapq.heappop(queue)
            if ts.state != "queued":
                continue   # cancelled or forgotten while queued
            self._assign(ts, best)

    def _assign(self, ts: TaskState, ws: WorkerState) -> None:
        ts.state = "processing"
        ts.processing_on = ws
        ts.executing = False   # until this worker says STARTED
        ws.processing.add(ts)
        if ts.fn and ts.fn not in ws.functions:
            ws.functions.add(ts.fn)
            self.out.append((ws.address, [m.FUNCTION, ts.fn, self.functions[ts.fn]]))
        deps = {dts.key: [w.address for w in dts.who_has] for dts in ts.deps}
        self.out.append((ws.address, [m.COMPUTE, ts.key, ts.fn, ts.args, ts.kwargs, deps,
                                      bool(ts.who_wants), ts.priority[0]]))

    def _unassign(self, ts: TaskState, free: bool = True) -> None:
        ws = ts.processing_on
        ws.processing.discard(ts)
        ts.processing_on = None
        ts.executing = False
        if free:
            self.out.append((ws.address, [m.FREE, [ts.key]]))

    def _tell(self, ts: TaskState, msg: list) -> None:
        """Send ``msg`` to the clients that want ``ts`` (the fire-and-forget one is no peer)."""
        for client in ts.who_wants:
            if client != FIRE_AND_FORGET:
                self.out.append((client, msg))

    def _add_replica(self, ts: TaskState, ws: WorkerState) -> None:
        if ws not in ts.who_has:
            ts.who_has.add(ws)
            ws.has_what.add(ts)
            ws.nbytes += ts.nbytes

    def _set_erred(self, ts: TaskState, exception, traceback, blame, cancel: str = "") -> None:
        """Fail ``ts`` and, with the same error, every dependent that has not finished.

        With ``cancel`` (the reason), they are cancelled instead: CANCELLED to the clients.
        """
        stack, erred = [ts], []
        while stack:
            t = stack.pop()
            if t.state in ("erred", "memory", "released") and t is not ts:
                continue
            if t.processing_on is not None:
                self._unassign(t)
            t.state, t.waiting_on = "erred", set()
            if cancel:
                exception = _error(CancelledError, f"{t.key}: {cancel}")
                self._tell(t, [m.CANCELLED, t.key, cancel])
            else:
                self._tell(t, [m.ERRED, t.key, exception, traceback, blame])
            t.exception, t.traceback, t.blame = exception, traceback, blame
            erred.append(t)
            stack.extend(t.dependents)
        # Inputs of every erred task (not only the first) may now be unneeded, and a
        # fire-and-forget task that ended this way is let go like one that finished.
        for t in erred:
            for dep in t.deps:
                self._maybe_release_data(dep)
        for t in erred:
            if FIRE_AND_FORGET in t.who_wants:
                t.who_wants.discard(FIRE_AND_FORGET)
                self._maybe_forget(t)

    def _lost_data(self, ts: TaskState) -> None:
        """The last copy of ``ts`` is gone: recompute it if anyone still needs it."""
        if ts.state in ("memory", "released"):
            ts.state = "released"
            if not self._is_needed(ts):
                self._maybe_forget(ts)
                return
            self._recompute(ts, "lost")
        # (else a rescheduled dependent has already started its recompute)
        if ts.state in ("erred", "forgotten"):
            return
        for dts in list(ts.dependents):
            if dts.state == "processing":   # its worker can no longer fetch ts
                self._unassign(dts)
                dts.state = "waiting"
                self._become_ready_or_wait(dts)
            elif dts.state in ("waiting", "queued") and ts not in dts.waiting_on:
                if dts.state == "queued":
                    dts.state = "waiting"
                dts.waiting_on.add(ts)

    def _is_needed(self, ts: TaskState) -> bool:
        if ts.who_wants:
            return True
        for dts in ts.dependents:
            # a released dependent needs nothing until it is recomputed (then it waits)
            if dts.state in ("waiting", "queued", "processing"):
                return True
        return False

    def _maybe_release_data(self, ts: TaskState) -> None:
        """Free the data of a task nobody needs any more (its lineage stays)."""
        if ts.state != "memory" or self._is_needed(ts):
            return
        ts.state = "released"
        self._free_replicas(ts)
        if not ts.dependents:
            self._forget(ts)

    def _free_replicas(self, ts: TaskState) -> None:
        for ws in ts.who_has:
            ws.has_what.discard(ts)
            ws.nbytes -= ts.nbytes
            self.out.append((ws.address, [m.FREE, [ts.key]]))
        ts.who_has = set()

    def _maybe_forget(self, ts: TaskState) -> None:
        """Called when a task lost its last wanter."""
        if ts.who_wants:
            return
        if ts.dependents:
            if ts.state == "memory":
                self._maybe_release_data(ts)
            return
        self._forget(ts)

    def _forget(self, ts: TaskState) -> None:
        stack = [ts]
        while stack:
            t = stack.pop()
            if t.who_wants or t.dependents or self.tasks.get(t.key) is not t:
                continue
            if t.processing_on is not None:
                self._unassign(t)
            self._free_replicas(t)
            t.state = "forgotten"
            del self.tasks[t.key]
            for dep in t.deps:
                dep.dependents.discard(t)
                if not dep.who_wants:
                    if dep.dependents:
                        self._maybe_release_data(dep)
                    else:
                        stack.append(dep)

    def _report_if_final(self, ts: TaskState, client: str) -> None:
        if ts.state == "memory":
            self.out.append((client, [m.DONE, ts.key, False, None, ts.nbytes]))
        elif ts.state == "erred":
            self.out.append((client, [m.ERRED, ts.key, ts.exception, ts.traceback, ts.blame]))
        elif ts.state == "released":
            self._recompute(ts, client)

    # ------------------------------------------------------------------ helpers
    def _record(self, ts: TaskState, what: str, where) -> None:
        if self.record_stories:
            if ts.story is None:
                ts.story = []
            ts.story.append((self.now, what, where))

    def story(self, key: str) -> list:
        ts = self.tasks.get(key)
        return list(ts.story or ()) if ts is not None else []

    # ------------------------------------------------------------------ views
    def counts_by_state(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for ts in self.tasks.values():
            out[ts.state] += 1
        return dict(out)
