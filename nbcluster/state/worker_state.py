"""The worker's decisions: a pure, synchronous state machine.

Events come in as method calls with plain data (messages from the scheduler, outcomes reported
by the worker's shell); each returns a list of instructions for the shell:

- ``("execute", key)``          run the task in a thread
- ``("fetch", worker, [keys])`` get these keys from a peer worker
- ``("send", message)``         send to the scheduler
- ``("drop", [keys])``          delete these values from the data store
- ``("stop", key)``             interrupt the running task (it was freed)
- ``("terminate", reason)``     memory is over the limit: end this worker process
- ``("spill", [keys])``         write these values to disk (least recently used first)
- ``("unspill", key)``          a spilled value read back by a task stays in memory

The shell reports back ``spill_written`` / ``spill_failed`` for every key it was told to spill.

Task states on a worker::

    waiting (for inputs) -> ready -> executing -> memory
    fetch -> flight -> memory        (an input held by a peer)
"""

from __future__ import annotations

import heapq
import random

from ..protocol import messages as m

FETCHES_PER_PEER = 2    # concurrent transfers from one peer
FETCH_BATCH = 50        # keys per transfer request
PREFETCH_SECONDS = 0.002  # work handed to the executor ahead of time, for short tasks
MAX_PREFETCH = 64
SPILL_AT = 0.60        # of the memory limit: results beyond this go to disk
PAUSE_AT = 0.80        # of the memory limit: start no new task above this
TERMINATE_AT = 0.95    # of the memory limit: the process asks to be replaced above this


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


class WorkerTask:
    __slots__ = ("key", "state", "fn", "args", "kwargs", "deps", "waiting_on", "want",
                 "priority", "order", "who_has", "dependents", "nbytes", "cancelled", "fetched",
                 "options", "scattered", "spilled", "unspillable", "run_id")

    def __init__(self, key: str) -> None:
        self.key = key
        self.state = "new"
        self.fn = None
        self.args = None
        self.kwargs = None
        self.deps: list[str] = []
        self.waiting_on: set[str] = set()
        self.want = False
        self.priority = 0
        self.order = 0
        self.who_has: list[str] = []
        self.dependents: set[str] = set()
        self.nbytes = 0
        self.cancelled = False
        self.options: dict | None = None
        self.fetched = False   # a copy of a peer's result: the scheduler does not count it
        self.scattered = False  # put here by a client (scatter), not computed
        self.spilled = False    # its value is on disk (still here, loaded when needed)
        self.unspillable = False  # writing it to disk failed: it stays in memory
        self.run_id = 0         # the scheduler's id of this assignment, echoed in reports

    def __lt__(self, other: "WorkerTask") -> bool:
        return (self.priority, self.order) < (other.priority, other.order)

    def __repr__(self) -> str:
        return f"<WorkerTask {self.key!r} {self.state}>"


class WorkerState:
    """What this worker holds, runs, waits for and fetches."""

    def __init__(self, address: str, nthreads: int, memory_limit: int | None = None,
                 pause_at: float | None = PAUSE_AT, terminate_at: float | None = TERMINATE_AT,
                 spill_at: float | None = None) -> None:
        self.address = address
        self.nthreads = nthreads
        self.memory_limit = memory_limit or None
        self.pause_at = pause_at              # fractions of memory_limit; None: never
        self.terminate_at = terminate_at
        self.spill_at = spill_at
        self.paused = False                   # no new task starts while paused
        # results held in memory beyond spill_limit bytes go to disk, least recently used first
        self.spill_limit = int(memory_limit * spill_at) if memory_limit and spill_at else None
        self.spilled = 0                      # bytes of results on disk (part of nbytes)
        self.lru: dict[str, None] = {}        # spillable results in memory, oldest use first
        self.writing: set[str] = set()        # spilled, but still in memory until written
        self.tasks: dict[str, WorkerTask] = {}
        self.ready: list[WorkerTask] = []
        self.executing: set[str] = set()
        self.to_fetch: dict[str, set[str]] = {}     # peer -> keys to fetch from it
        self.in_flight: dict[str, int] = {}         # peer -> transfers running
        self.nbytes = 0
        self.counter = 0
        self.rng = random.Random(0)
        self.avg_duration = 0.01          # seconds, moving average of task run times
        self.prefetch = 0                 # tasks handed to the executor beyond nthreads

    # ------------------------------------------------------------------ scheduler messages
    def compute(self, key, fn, args, kwargs, deps: dict, want: bool, priority: int,
                options: dict | None = None, run: int = 0) -> list:
        out: list = []
        ts = self.tasks.get(key)
        if ts is not None and ts.state in ("memory", "ready", "executing", "waiting"):
            ts.run_id = run
            if ts.state == "memory":
                ts.fetched = False
                out.append(("send", [m.FINISHED, key, ts.nbytes, 0.0, 0.0, False, None, "",
                                     run]))
            # freed while running, then given back: the running call delivers the result
            ts.cancelled = False
            ts.want = ts.want or want
            return out
        if ts is None:
            ts = self.tasks[key] = WorkerTask(key)
        self.counter += 1
        ts.fn, ts.args, ts.kwargs, ts.want, ts.options = fn, args, kwargs, want, options
        ts.priority, ts.order, ts.cancelled, ts.fetched = priority, self.counter, False, False
        ts.scattered = False
        ts.run_id = run
        ts.deps = list(deps)
        ts.waiting_on = set()
        to_fetch = []
        for dkey, holders in deps.items():
            dts = self.tasks.get(dkey)
            if dts is None:
                dts = self.tasks[dkey] = WorkerTask(dkey)
            dts.dependents.add(key)
            if dts.state == "memory":
                continue
            ts.waiting_on.add(dkey)
            if dts.state in ("new", "fetch", "missing"):
                peers = [h for h in holders if h != self.address]
                dts.who_has = peers
                if dts.state != "fetch":
                    dts.state = "fetch"
                    dts.fetched = True
                    # listed as a holder, yet it is not here: tell the scheduler so
                    to_fetch.append((dts, self.address if len(peers) < len(holders) else ""))
        if ts.waiting_on:
            ts.state = "waiting"
        else:
            self._make_ready(ts)
        # Queued only now: an input with no holder reports the task MISSING, which needs it
        # to be waiting (before, the report was skipped and the task waited forever).
        for dts, gone in to_fetch:
            if dts.state == "fetch":
                self._queue_fetch(dts, out, gone)
        self._run_ready(out)
        self._start_fetches(out)
        return out

    def free(self, keys) -> list:
        out: list = []
        drop = []
        for key in keys:
            ts = self.tasks.get(key)
            if ts is None:
                continue
            if ts.state == "executing":
                ts.cancelled = True   # the result is dropped when the thread returns
                out.append(("stop", key))   # and a running call is interrupted
                continue
            if ts.dependents and any(self._is_pending(d) for d in ts.dependents):
                ts.fetched = True   # no longer counted by the scheduler: drop after use
                continue
            self._forget(ts, drop)
        if drop:
            out.append(("drop", drop))
        self._run_ready(out)
        return out

    # ------------------------------------------------------------------ shell outcomes
    def _observe_duration(self, seconds: float) -> None:
        self.avg_duration = 0.9 * self.avg_duration + 0.1 * max(seconds, 0.0)
        # up to PREFETCH_SECONDS of queued work per thread, none for tasks of 1 ms or more
        per_thread = int(PREFETCH_SECONDS / max(self.avg_duration, 1e-6))
        self.prefetch = 0 if self.avg_duration >= 1e-3 else self.nthreads * min(per_thread, MAX_PREFETCH)

    def task_finished(self, key, nbytes, start, stop, has_value, value, typ) -> list:
        out: list = []
        self.executing.discard(key)
        self._observe_duration(stop - start)
        ts = self.tasks.get(key)
        if ts is None or (ts.cancelled and not any(map(self._is_pending, ts.dependents))):
            if ts is not None:
                drop: list = []
                self._forget(ts, drop)
                out.append(("drop", drop + [key]))
            else:
                out.append(("drop", [key]))
            self._run_ready(out)
            return out
        ts.state = "memory"
        ts.nbytes = nbytes
        self.nbytes += nbytes
        if ts.cancelled:
            # freed by the scheduler while running, but a task here needs it since: keep it
            # as an uncounted copy, dropped after use (dropping it would leave that task stuck)
            ts.cancelled, ts.fetched = False, True
        else:
            ts.fetched = False
            out.append(("send", [m.FINISHED, key, nbytes, start, stop, has_value, value, typ,
                                 ts.run_id]))
            if self.spill_limit is not None:
                self.lru[key] = None
                self._maybe_spill(out)
        self._input_arrived(ts, out)
        self._release_inputs(ts, out)
        self._run_ready(out)
        return out

    def task_failed(self, key, exception, traceback, start, stop, retry=None) -> list:
        out: list = []
        self.executing.discard(key)
        ts = self.tasks.get(key)
        if ts is not None:
            if not ts.cancelled:
                out.append(("send", [m.FAILED, key, exception, traceback, start, stop, retry,
                                     ts.run_id]))
            else:   # tasks here that wait for it must get it elsewhere: hand them back
                for dkey in list(ts.dependents):
                    self._report_missing(dkey, key, "", out)
            drop: list = []
            self._release_inputs(ts, out)
            ts.dependents.clear()
            self._forget(ts, drop)
            if drop:
                out.append(("drop", drop))
        self._run_ready(out)
        return out

    def fetch_done(self, peer: str, nbytes: dict, missing: list) -> list:
        """A transfer from ``peer`` ended: ``nbytes`` for keys received, ``missing`` not had."""
        out: list = []
        self.in_flight[peer] = self.in_flight.get(peer, 1) - 1
        for key, size in nbytes.items():
            ts = self.tasks.get(key)
            if ts is None:   # forgotten while it travelled: the shell stored it anyway
                out.append(("drop", [key]))
                continue
            if ts.state != "flight":   # here already, or now computed here
                continue
            ts.state = "memory"
            ts.nbytes = size
            self.nbytes += size
            if not any(self._is_pending(d) for d in ts.dependents):
                # everyone who needed it went away while it travelled
                drop: list = []
                self._forget(ts, drop)
                out.append(("drop", drop))
                continue
            self._input_arrived(ts, out)
        for key in missing:
            self._fetch_failed(key, peer, out)
        if nbytes and self.spill_limit is not None:
            self._maybe_spill(out)
        self._run_ready(out)
        self._start_fetches(out)
        return out

    def fetch_failed(self, peer: str, keys: list) -> list:
        """The peer could not be reached at all."""
        out: list = []
        self.in_flight[peer] = self.in_flight.get(peer, 1) - 1
        queued = self.to_fetch.pop(peer, ())
        for key in keys:
            self._fetch_failed(key, peer, out)
        for ts in self.tasks.values():
            if ts.state == "fetch" and peer in ts.who_has:
                ts.who_has.remove(peer)
        for key in queued:   # they waited for this peer: another holder, or MISSING
            ts = self.tasks.get(key)
            if ts is not None and ts.state == "fetch":
                self._queue_fetch(ts, out, peer)
        self._start_fetches(out)
        return out

    def fetch_errored(self, key: str, error: tuple) -> list:
        """An input arrived but cannot be used (it does not unpickle): fail who needs it."""
        out: list = []
        exception, text = error
        ts = self.tasks.get(key)
        if ts is None:
            return out
        for dkey in list(ts.dependents):
            dts = self.tasks.get(dkey)
            if dts is not None and dts.state == "waiting":
                out.append(("send", [m.FAILED, dkey, exception, text, 0.0, 0.0, None,
                                     dts.run_id]))
                drop: list = []
                self._forget(dts, drop)
                if drop:
                    out.append(("drop", drop))
        if not ts.dependents and key in self.tasks:
            self._forget(ts, [])
        return out

    def refuses_data(self, keys) -> list[str]:
        """The keys a client may not put here: tasks this worker runs, waits on or computed.
        A scattered value, or a copy fetched from a peer, may be replaced."""
        refused = []
        for key in keys:
            ts = self.tasks.get(key)
            if ts is not None and (self._is_pending(key) or (
                    ts.state == "memory" and not ts.scattered and not ts.fetched)):
                refused.append(key)
        return refused

    def data_added(self, nbytes: dict) -> list:
        """Values were put here directly (scatter)."""
        out: list = []
        for key, size in nbytes.items():
            ts = self.tasks.get(key) or self.tasks.setdefault(key, WorkerTask(key))
            if ts.state == "memory":
                self.nbytes -= ts.nbytes      # a scattered value replaced
                if ts.spilled:
                    self.spilled -= ts.nbytes
            ts.state = "memory"
            ts.scattered = True
            ts.fetched = ts.spilled = ts.unspillable = False
            if self.spill_limit is not None:
                self.lru.pop(key, None)
                self.lru[key] = None
            ts.nbytes = size
            self.nbytes += size
            self._input_arrived(ts, out)
        if self.spill_limit is not None:
            self._maybe_spill(out)
        self._run_ready(out)
        return out

    def unspilled(self, key: str) -> list:
        """A task read ``key`` back from disk: keep it in memory again (as the most recently
        used result) unless it is large next to the spill limit, which would only churn, or
        results pushed out earlier are still being written: each value kept would push out
        another before the last one has left memory, and tasks reading spilled inputs faster
        than the disk takes them would grow the process past its limit."""
        self.writing.discard(key)      # read from its file: the file is complete
        ts = self.tasks.get(key)
        limit = self.spill_limit
        if ts is None or not ts.spilled or limit is None or ts.nbytes > limit // 2 \
                or self.writing:
            return []
        ts.spilled = False
        self.spilled -= ts.nbytes
        self.lru[key] = None
        out: list = [("unspill", key)]
        self._maybe_spill(out)
        return out

    def spill_failed(self, key: str) -> list:
        """Writing ``key`` to disk failed (it cannot be pickled, or the disk is full): it
        stays in memory and is not tried again."""
        self.writing.discard(key)
        ts = self.tasks.get(key)
        if ts is not None and ts.spilled:
            ts.spilled = False
            ts.unspillable = True
            self.spilled -= ts.nbytes
        return []

    def spill_written(self, key: str) -> list:
        """``key``'s file is complete (or the key went meanwhile): its memory is free."""
        self.writing.discard(key)
        return []

    def set_memory_limit(self, limit: int | None) -> list:
        """A new memory limit (its cluster re-divided the machine's memory): the spill limit
        follows, results over it go to disk, and the scheduler hears of it."""
        self.memory_limit = limit or None
        spill_at = self.spill_at
        self.spill_limit = int(limit * spill_at) if limit and spill_at else None
        out: list = [("send", [m.MEMORY_LIMIT, self.memory_limit])]
        if self.spill_limit is not None:
            self._maybe_spill(out)
        return out

    def memory_used(self, rss: int) -> list:
        """The process's memory was measured: pause above ``pause_at`` of the limit (running
        tasks go on, new ones wait), resume below it, and ask to be terminated (the process
        is replaced and its results recomputed) above ``terminate_at``."""
        out: list = []
        limit = self.memory_limit
        if not limit:
            return out
        share = rss / limit
        if self.terminate_at is not None and share >= self.terminate_at:
            out.append(("terminate", f"process memory {_mib(rss)} is {share:.0%} of the worker's "
                        f"limit of {_mib(limit)} (terminates at {self.terminate_at:.0%})"))
            return out
        if self.pause_at is None:
            return out
        if not self.paused and share >= self.pause_at:
            self.paused = True
            out.append(("send", [m.STATUS, "paused", f"process memory {_mib(rss)} is "
                                 f"{share:.0%} of the worker's limit of {_mib(limit)} (pauses "
                                 f"at {self.pause_at:.0%})"]))
        elif self.paused and share < self.pause_at:
            self.paused = False
            out.append(("send", [m.STATUS, "running", f"process memory {_mib(rss)}, "
                                 f"{share:.0%} of the limit"]))
            self._run_ready(out)
        return out

    def _maybe_spill(self, out: list) -> None:
        """Results in memory over ``spill_limit``: send the least recently used to disk."""
        limit = self.spill_limit
        in_memory = self.nbytes - self.spilled
        if in_memory <= limit:
            return
        chosen, gone = [], []
        tasks = self.tasks
        for key in self.lru:
            if in_memory <= limit:
                break
            ts = tasks.get(key)
            if ts is None or ts.state != "memory" or ts.fetched or ts.unspillable or ts.spilled:
                gone.append(key)
                continue
            chosen.append(ts)
            in_memory -= ts.nbytes
        for key in gone:
            del self.lru[key]
        for ts in chosen:
            del self.lru[ts.key]
            ts.spilled = True
            self.spilled += ts.nbytes
            self.writing.add(ts.key)
        if chosen:
            out.append(("spill", [ts.key for ts in chosen]))

    # ------------------------------------------------------------------ internals
    def _is_pending(self, key: str) -> bool:
        ts = self.tasks.get(key)
        return ts is not None and ts.state in ("waiting", "ready", "executing")

    def _make_ready(self, ts: WorkerTask) -> None:
        ts.state = "ready"
        heapq.heappush(self.ready, ts)

    def _run_ready(self, out: list) -> None:
        if self.paused:
            return
        ready = self.ready
        # Short tasks: hand the executor a few more than it has threads, so a thread moves on
        # to the next task without waiting for the event loop (completions then batch up).
        limit = self.nthreads + self.prefetch
        lru = self.lru if self.spill_limit is not None else None
        while ready and len(self.executing) < limit:
            ts = heapq.heappop(ready)
            if ts.state != "ready":
                continue
            ts.state = "executing"
            self.executing.add(ts.key)
            out.append(("execute", ts.key))
            if lru is not None:
                for dkey in ts.deps:      # used now: the last to go to disk
                    if dkey in lru:
                        del lru[dkey]
                        lru[dkey] = None

    def _input_arrived(self, ts: WorkerTask, out: list) -> None:
        for dkey in ts.dependents:
            dts = self.tasks.get(dkey)
            if dts is not None and dts.state == "waiting" and ts.key in dts.waiting_on:
                dts.waiting_on.discard(ts.key)
                if not dts.waiting_on:
                    self._make_ready(dts)

    def _release_inputs(self, ts: WorkerTask, out: list) -> None:
        """After ``ts`` ran, inputs fetched only for it can go (the scheduler may still free)."""
        drop: list = []
        for dkey in ts.deps:
            dts = self.tasks.get(dkey)
            if dts is None:
                continue
            dts.dependents.discard(ts.key)
            if dts.fetched and dts.state == "memory" and not dts.dependents:
                # a fetched copy: the scheduler never counted it as ours, so drop it
                self._forget(dts, drop)
        ts.deps = []
        ts.fn = ts.args = ts.kwargs = None
        if drop:
            out.append(("drop", drop))

    def _forget(self, ts: WorkerTask, drop: list) -> None:
        if ts.state == "memory":
            self.nbytes -= ts.nbytes
            if ts.spilled:
                self.spilled -= ts.nbytes
                ts.spilled = False
            self.lru.pop(ts.key, None)
            drop.append(ts.key)
        ts.state = "forgotten"
        self.tasks.pop(ts.key, None)
        for dkey in ts.deps:
            dts = self.tasks.get(dkey)
            if dts is not None:
                dts.dependents.discard(ts.key)
                if dts.fetched and not dts.dependents and dts.state in ("memory", "fetch",
                                                                        "missing"):
                    self._forget(dts, drop)

    def _queue_fetch(self, dts: WorkerTask, out: list, gone: str = "") -> None:
        """Queue a transfer from a holder; with none left, report MISSING (``gone`` failed)."""
        if not dts.who_has:
            dts.state = "missing"
            for dkey in list(dts.dependents):
                self._report_missing(dkey, dts.key, gone, out)
            return
        peer = self.rng.choice(dts.who_has)
        self.to_fetch.setdefault(peer, set()).add(dts.key)

    def _start_fetches(self, out: list) -> None:
        for peer in list(self.to_fetch):
            while self.in_flight.get(peer, 0) < FETCHES_PER_PEER and self.to_fetch.get(peer):
                keys = self.to_fetch[peer]
                batch = [keys.pop() for _ in range(min(FETCH_BATCH, len(keys)))]
                batch = [k for k in batch if k in self.tasks and self.tasks[k].state == "fetch"]
                if not batch:
                    continue
                for k in batch:
                    self.tasks[k].state = "flight"
                self.in_flight[peer] = self.in_flight.get(peer, 0) + 1
                out.append(("fetch", peer, batch))
            if not self.to_fetch.get(peer):
                self.to_fetch.pop(peer, None)

    def _fetch_failed(self, key: str, peer: str, out: list) -> None:
        ts = self.tasks.get(key)
        if ts is None or ts.state != "flight":   # not this transfer's any more
            return
        if peer in ts.who_has:
            ts.who_has.remove(peer)
        ts.state = "fetch"
        self._queue_fetch(ts, out, peer)

    def _report_missing(self, key: str, dep: str, peer: str, out: list) -> None:
        """Give the task back to the scheduler: one of its inputs cannot be had."""
        ts = self.tasks.get(key)
        if ts is None or ts.state != "waiting":
            return
        out.append(("send", [m.MISSING, key, dep, peer]))
        drop: list = []
        self._forget(ts, drop)
        if drop:
            out.append(("drop", drop))
