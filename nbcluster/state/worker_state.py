"""The worker's decisions: a pure, synchronous state machine.

Events come in as method calls with plain data (messages from the scheduler, outcomes reported
by the worker's shell); each returns a list of instructions for the shell, the records of
:mod:`.instructions` (``Execute``, ``Send``, ``Fetch``, ``Drop``, ``Stop``, ``Resume``,
``Terminate``, ``Spill``, ``Unspill``, ``Log``). Transfers from peers are decided in
:mod:`.worker_transfers`, memory limits and spilling in :mod:`.worker_memory`: methods of this
class, written there to keep each module small.

Task states on a worker::

    waiting (for inputs) -> ready -> executing -> memory
    fetch -> flight -> memory        (an input held by a peer)
"""

from __future__ import annotations

import heapq
import random
from typing import Any, Iterable

from ..protocol import messages as m
from . import worker_memory, worker_reset, worker_secede, worker_transfers
from .instructions import Drop, Execute, Instruction, Resume, Send, Stop
from .worker_task import WorkerTask as WorkerTask
from .worker_transfers import FETCH_BATCH as FETCH_BATCH, FETCHES_PER_PEER as FETCHES_PER_PEER

PREFETCH_SECONDS = 0.002  # work handed to the executor ahead of time, for short tasks
MAX_PREFETCH = 64
SPILL_AT = 0.60        # of the memory limit: results beyond this go to disk
PAUSE_AT = 0.80        # of the memory limit: start no new task above this
TERMINATE_AT = 0.95    # of the memory limit: the process asks to be replaced above this


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
        self.memory_high = False              # process memory over the line where it spills
        self.memory_note = ""                 # why it stays paused, once it cannot spill
        # results held in memory beyond spill_limit bytes go to disk, least recently used first
        self.spill_limit = int(memory_limit * spill_at) if memory_limit and spill_at else None
        self.spilled = 0                      # bytes of results on disk (part of nbytes)
        self.lru: dict[str, None] = {}        # spillable results in memory, oldest use first
        self.writing: set[str] = set()        # spilled, but still in memory until written
        self.tasks: dict[str, WorkerTask] = {}
        self.ready: list[WorkerTask] = []
        self.executing: set[str] = set()
        self.seceded: set[str] = set()        # executing, on a thread that counts for none
        self.setups = 0                       # setups running: no task starts meanwhile
        self.to_fetch: dict[str, set[str]] = {}     # peer -> keys to fetch from it
        self.in_flight: dict[str, int] = {}         # peer -> transfers running
        self.nbytes = 0
        self.counter = 0
        self.rng = random.Random(0)
        self.avg_duration = 0.01          # seconds, moving average of task run times
        self.prefetch = 0                 # tasks handed to the executor beyond nthreads

    # ------------------------------------------------------------------ scheduler messages
    def compute(self, msg: m.Compute) -> list[Instruction]:
        """The scheduler assigns a task here (or gives back one it freed, or one whose
        result is here already)."""
        key, want, run = msg.key, msg.want, msg.run
        out: list[Instruction] = []
        ts = self.tasks.get(key)
        if ts is not None and ts.state in ("memory", "ready", "executing", "waiting"):
            ts.run_id = run
            if ts.state == "memory":
                ts.fetched = False
                out.append(Send(m.Finished(key, ts.nbytes, 0.0, 0.0, False, None, "", run)))
            if ts.cancelled:
                # freed while with the executor, then given back: the call delivers the result
                ts.cancelled = False
                out.append(Resume(key))
            ts.want = ts.want or want
            return out
        if ts is None:
            ts = self.tasks[key] = WorkerTask(key)
        self.counter += 1
        ts.fn, ts.args, ts.kwargs, ts.want, ts.options = msg.fn, msg.args, msg.kwargs, want, \
            msg.options
        ts.priority, ts.order, ts.cancelled, ts.fetched = msg.priority, self.counter, False, False
        ts.scattered = False
        ts.run_id = run
        deps = msg.deps
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
        # Queued only now that the task waits: an input with no holder reports the task
        # MISSING, and only a waiting task is reported (or it would wait forever).
        for dts, gone in to_fetch:
            if dts.state == "fetch":
                self._queue_fetch(dts, out, gone)
        self._run_ready(out)
        self._start_fetches(out)
        return out

    def free(self, keys: list[str], runs: list[int] | None = None) -> list[Instruction]:
        """The scheduler let go of ``keys``. ``runs`` (per key, the scheduler's latest run id
        when it did): a key it assigned here again since, by a later run, is kept: that
        COMPUTE overtook this FREE. None: whatever run holds them."""
        if runs is not None and len(runs) != len(keys):
            raise m.ProtocolError(f"FREE of {len(keys)} keys but {len(runs)} run ids")
        out: list[Instruction] = []
        drop: list[str] = []
        for i, key in enumerate(keys):
            ts = self.tasks.get(key)
            if ts is None or (runs is not None and ts.run_id > runs[i]):
                continue
            if ts.state == "executing":
                ts.cancelled = True   # the result is dropped when the thread returns
                out.append(Stop(key))   # and a running call is interrupted
                continue
            if ts.dependents and any(self._is_pending(d) for d in ts.dependents):
                ts.fetched = True   # no longer counted by the scheduler: drop after use
                continue
            self._forget(ts, drop)
        if drop:
            out.append(Drop(drop))
        self._run_ready(out)
        return out

    # ------------------------------------------------------------------ shell outcomes
    def _observe_duration(self, seconds: float) -> None:
        self.avg_duration = 0.9 * self.avg_duration + 0.1 * max(seconds, 0.0)
        # up to PREFETCH_SECONDS of queued work per thread, none for tasks of 1 ms or more
        per_thread = int(PREFETCH_SECONDS / max(self.avg_duration, 1e-6))
        self.prefetch = 0 if self.avg_duration >= 1e-3 else self.nthreads * min(per_thread, MAX_PREFETCH)

    def task_started(self, key: str, start: float) -> list[Instruction]:
        """A thread began to run ``key``: the scheduler hears STARTED, unless it was told when
        the task went to an idle thread, or the task has ended (its end, reported in the same
        batch, is handled first: the scheduler then needs no STARTED)."""
        ts = self.tasks.get(key)
        if ts is None or ts.state != "executing" or ts.announced:
            return []
        ts.announced = True
        return [Send(m.Started(key, start, ts.run_id))]

    def task_finished(self, key: str, nbytes: int, start: float, stop: float, has_value: bool,
                      value: Any, typ: str) -> list[Instruction]:
        out: list[Instruction] = []
        self.executing.discard(key)
        if self.seceded:
            self.seceded.discard(key)
        self._observe_duration(stop - start)
        ts = self.tasks.get(key)
        if ts is None or (ts.cancelled and not any(map(self._is_pending, ts.dependents))):
            if ts is not None:
                drop: list[str] = []
                self._forget(ts, drop)
                out.append(Drop(drop + [key]))
            else:
                out.append(Drop([key]))
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
            out.append(Send(m.Finished(key, nbytes, start, stop, has_value, value, typ,
                             ts.run_id)))
            if self.spill_limit is not None:
                self.lru[key] = None
                self._maybe_spill(out)
        self._input_arrived(ts, out)
        self._release_inputs(ts, out)
        self._run_ready(out)
        return out

    def task_failed(self, key: str, exception: Any, traceback: str, start: float, stop: float,
                    retry: dict[str, Any] | None = None) -> list[Instruction]:
        out: list[Instruction] = []
        self.executing.discard(key)
        self.seceded.discard(key)
        ts = self.tasks.get(key)
        if ts is not None:
            if not ts.cancelled:
                out.append(Send(m.Failed(key, exception, traceback, start, stop, retry,
                                 ts.run_id)))
            else:   # tasks here that wait for it must get it elsewhere: hand them back
                for dkey in list(ts.dependents):
                    self._report_missing(dkey, key, "", out)
            drop: list[str] = []
            self._release_inputs(ts, out)
            ts.dependents.clear()
            self._forget(ts, drop)
            if drop:
                out.append(Drop(drop))
        self._run_ready(out)
        return out

    def refuses_data(self, keys: Iterable[str]) -> list[str]:
        """The keys a client may not put here: tasks this worker runs, waits on or computed.
        A scattered value, or a copy fetched from a peer, may be replaced."""
        refused = []
        for key in keys:
            ts = self.tasks.get(key)
            if ts is not None and (self._is_pending(key) or (
                    ts.state == "memory" and not ts.scattered and not ts.fetched)):
                refused.append(key)
        return refused

    def data_added(self, nbytes: dict[str, int]) -> list[Instruction]:
        """Values were put here directly (scatter)."""
        out: list[Instruction] = []
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

    # inputs held by peers: decided in worker_transfers.py, bound here as methods
    fetch_done = worker_transfers.fetch_done
    fetch_failed = worker_transfers.fetch_failed
    fetch_errored = worker_transfers.fetch_errored
    replicate = worker_transfers.replicate
    _queue_fetch = worker_transfers.queue_fetch
    _start_fetches = worker_transfers.start_fetches
    _fetch_failed = worker_transfers.holder_failed

    # memory limits and spilling: decided in worker_memory.py, bound here as methods
    memory_used = worker_memory.memory_used
    set_memory_limit = worker_memory.set_memory_limit
    unspilled = worker_memory.unspilled
    spill_failed = worker_memory.spill_failed
    spill_written = worker_memory.spill_written
    _maybe_spill = worker_memory.maybe_spill
    reset = worker_reset.reset
    held = worker_reset.held

    # tasks that give up their thread, setups before tasks: decided in worker_secede.py
    task_seceded = worker_secede.task_seceded
    task_rejoined = worker_secede.task_rejoined
    setup_started = worker_secede.setup_started
    setup_done = worker_secede.setup_done

    # ------------------------------------------------------------------ internals
    def _is_pending(self, key: str) -> bool:
        ts = self.tasks.get(key)
        return ts is not None and ts.state in ("waiting", "ready", "executing")

    def _make_ready(self, ts: WorkerTask) -> None:
        ts.state = "ready"
        heapq.heappush(self.ready, ts)

    def _run_ready(self, out: list[Instruction]) -> None:
        if self.paused or self.setups:
            return
        ready = self.ready
        executing = self.executing
        nthreads = self.nthreads
        # Short tasks: hand the executor a few more than it has threads, so a thread moves on
        # to the next task without waiting for the event loop (completions then batch up).
        limit = nthreads + self.prefetch
        lru = self.lru if self.spill_limit is not None else None
        while ready and len(executing) < limit:
            ts = heapq.heappop(ready)
            if ts.state != "ready":
                continue
            # A thread is free for it (or is about to be): STARTED goes out with this batch,
            # before a thread can run it. Tasks queued behind busy threads are announced when
            # a thread reports their start, unless they ended by then (task_started).
            announce = len(executing) < nthreads
            ts.state = "executing"
            ts.announced = announce
            executing.add(ts.key)
            fn = ts.fn
            assert fn is not None     # a ready task was computed here
            out.append(Execute(ts.key, fn, ts.args, ts.kwargs, ts.want, ts.options, ts.run_id,
                               announce))
            if lru is not None:
                for dkey in ts.deps:      # used now: the last to go to disk
                    if dkey in lru:
                        del lru[dkey]
                        lru[dkey] = None

    def _input_arrived(self, ts: WorkerTask, out: list[Instruction]) -> None:
        for dkey in ts.dependents:
            dts = self.tasks.get(dkey)
            if dts is not None and dts.state == "waiting" and ts.key in dts.waiting_on:
                dts.waiting_on.discard(ts.key)
                if not dts.waiting_on:
                    self._make_ready(dts)

    def _release_inputs(self, ts: WorkerTask, out: list[Instruction]) -> None:
        """After ``ts`` ran, inputs fetched only for it can go (the scheduler may still free)."""
        drop: list[str] = []
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
            out.append(Drop(drop))

    def _forget(self, ts: WorkerTask, drop: list[str]) -> None:
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

    def _report_missing(self, key: str, dep: str, peer: str, out: list[Instruction]) -> None:
        """Give the task back to the scheduler: one of its inputs cannot be had."""
        ts = self.tasks.get(key)
        if ts is None or ts.state != "waiting":
            return
        out.append(Send(m.Missing(key, dep, peer)))
        drop: list[str] = []
        self._forget(ts, drop)
        if drop:
            out.append(Drop(drop))
