"""Where tasks run: placement on the least-loaded eligible worker (O(log W) through
:class:`~nbcluster.state.occupancy.Occupancy`), filling each worker's window, stealing for idle
threads, and the limits that hold tasks back.

A base class of SchedulerState through Transitions (split out to keep modules small); it owns
no state of its own and reads no clock: ``self.now`` is the time of the event being handled.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ..protocol import messages as m
from . import resources
from .model import MAX_WINDOW, QUEUED_WORK_SECONDS, STEAL_BANDWIDTH, STEAL_LATENCY, Durable, Queued, \
    TaskState, WorkerState

if TYPE_CHECKING:
    from .functions import FunctionRefs
    from .gates import Limit, Timers
    from .occupancy import Occupancy

STEAL_VICTIMS = 8      # busiest workers one stealing pass looks at
STEAL_THIEVES = 64     # idle workers one stealing pass serves
STEAL_EXAMINED = 512   # queued tasks one stealing pass considers


def _load_key(ws: WorkerState) -> tuple[float, int, int]:
    return (len(ws.processing) / ws.nthreads, ws.assigned, ws.index)


def _priority(ts: TaskState) -> tuple[float, int]:
    return ts.priority, ts.order


def _allowed(queue: str, idle_only: bool, paused_ok: bool) -> Callable[[WorkerState], bool]:
    """Whether a worker holding an input may run the task (the rule _pick_worker's idlest
    was chosen by: its queue, a free thread if asked, not paused unless all are)."""
    def allowed(ws: WorkerState) -> bool:
        return (queue in ws.queues and (paused_ok or not ws.paused) and ws.retiring is None
                and (not idle_only or len(ws.processing) < ws.nthreads))
    return allowed


def _not_for(thief: WorkerState, pinned: Any, need: Any) -> bool:
    """Whether a task pinned to ``pinned`` and needing ``need`` may not go to ``thief`` (the
    resources it holds are released on its victim and taken on the thief)."""
    return bool(pinned and thief.address not in pinned) or \
        (need is not None and not resources.fits(thief.free, need))


class Placement:
    # Everything lives on the SchedulerState instance (assigned in its __init__); declared
    # here, where the rules that use it begin, for the type checker.
    tasks: dict[str, TaskState]
    workers: dict[str, WorkerState]
    occupancy: Occupancy
    clients: set[str]
    functions: dict[str, bytes]
    durable: Durable
    fn_refs: FunctionRefs
    queues: dict[str, list[Queued]]   # name -> heap
    unrunnable: list[TaskState]
    limits: dict[str, Limit]
    limits_held: bool
    timers: Timers
    rng: random.Random
    counter: int
    runs: int
    avg_duration: float
    prefix_durations: dict[str, float]
    long_prefixes: set[str]
    out: list[tuple[str, m.Message]]
    now: float
    record_stories: bool
    stories: deque[tuple[str, str, Any, str, float]]
    stimulus: str

    if TYPE_CHECKING:   # defined by Transitions, used here
        def _expired(self, ts: TaskState) -> bool: ...
        def _unassign(self, ts: TaskState, free: bool = True) -> None: ...
        def _record(self, ts: TaskState, what: str, where: Any) -> None: ...

    def _eligible(self, ts: TaskState) -> list[WorkerState]:
        pinned = ts.options.get("workers") if ts.options else None
        workers: Iterable[WorkerState] = \
            [self.workers[a] for a in pinned if a in self.workers] if pinned else \
            self.workers.values()
        return [w for w in workers if ts.queue in w.queues and w.retiring is None]

    def _pick_worker(self, ts: TaskState, idle_only: bool = False) -> WorkerState | None:
        """The worker holding most input bytes, unless it is much busier than the idlest."""
        options = ts.options
        if options:
            if "resources" in options:   # (the slower path of tasks that need resources)
                return resources.pick(self, ts, idle_only)
            pinned = options.get("workers")
        else:
            pinned = None
        if pinned:    # a few named workers: look at each
            candidates = self._eligible(ts)
            if idle_only:
                candidates = [w for w in candidates if len(w.processing) < w.nthreads]
            if not candidates:
                return None
            # a paused worker (out of memory) gets work only when no other may take it: it
            # is run there once the worker resumes
            candidates = [w for w in candidates if not w.paused] or candidates
            idlest: WorkerState | None = min(candidates, key=_load_key)
            allowed: Callable[[WorkerState], bool] = set(candidates).__contains__
        else:
            idlest = self.occupancy.least_loaded(ts.queue)
            if idlest is None or (idle_only and len(idlest.processing) >= idlest.nthreads):
                paused = [w for w in self.occupancy.paused_in(ts.queue)
                          if not idle_only or len(w.processing) < w.nthreads]
                if not paused:
                    return None
                idlest = min(paused, key=_load_key)
            allowed = _allowed(ts.queue, idle_only, idlest.paused)
        if not ts.deps:
            return idlest
        held: dict[WorkerState, int] = {}
        for dts in ts.deps:
            for ws in dts.who_has:
                if allowed(ws):
                    held[ws] = held.get(ws, 0) + dts.nbytes + 1
        if not held or idlest is None:
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
        if not self.durable.placing:
            return
        if self.limits_held:
            self._release_limited()
        if not self.workers:
            return
        least_loaded = self.occupancy.least_loaded
        for name, heap in self.queues.items():
            while heap:
                # every worker's window holds the same tasks per thread: if the least loaded
                # worker has no room, none has
                best = least_loaded(name)
                if best is None or len(best.processing) >= self._window(best):
                    break
                ts = heapq.heappop(heap)[2]
                if ts.state != "queued":
                    continue   # cancelled or forgotten while queued
                if self._expired(ts):
                    continue
                if ts.deps or (ts.options and ts.options.get("workers")):
                    ws = self._pick_worker(ts)
                    if ws is None:
                        self.unrunnable.append(ts)
                        continue
                    best = ws
                self._assign(ts, best)
        if self.occupancy.resources.freed:   # (tasks that need resources wait apart)
            resources.fill(self)
        self._steal()

    def _steal(self) -> None:
        """Idle threads take tasks queued, not yet started, on workers that have more than
        they can run, when the task's expected run time outweighs moving it (its inputs the
        thief lacks, plus a round trip). The victim is told FREE and drops it unstarted.
        One call looks at a bounded number of thieves, victims and tasks."""
        occupancy = self.occupancy
        if not occupancy.idle or not occupancy.busy:
            return
        if not self.long_prefixes and self.avg_duration < STEAL_LATENCY:
            return   # every task's expected run time is below the cost of moving it
        victims = occupancy.busiest(STEAL_VICTIMS)
        if not victims:
            return
        durations, default = self.prefix_durations, self.avg_duration
        waiting_on: dict[WorkerState, list[TaskState]] = {}
        budget = STEAL_EXAMINED
        for thief in occupancy.thieves(STEAL_THIEVES):
            spare = thief.nthreads - len(thief.processing)
            for victim in victims:
                surplus = len(victim.processing) - victim.nthreads   # waiting behind its threads
                if spare <= 0 or budget <= 0:
                    break
                if surplus <= 0 or victim is thief:
                    continue
                waiting = waiting_on.get(victim)
                if waiting is None:    # run last there: stolen first
                    waiting = waiting_on[victim] = sorted(
                        (ts for ts in victim.processing if not ts.executing and not ts.limited),
                        key=_priority)
                passed: list[TaskState] = []   # not for this thief: left for the next
                while waiting and spare > 0 and surplus > 0 and budget > 0:
                    ts = waiting.pop()
                    budget -= 1
                    if ts.processing_on is not victim:
                        continue
                    options = ts.options
                    if ts.queue not in thief.queues or options and (
                            _not_for(thief, options.get("workers"), options.get("resources"))):
                        passed.append(ts)
                        continue
                    moved = sum(d.nbytes for d in ts.deps if thief not in d.who_has)
                    if durations.get(ts.prefix, default) < STEAL_LATENCY + moved / STEAL_BANDWIDTH:
                        continue
                    self._unassign(ts)
                    if options and "resources" in options:
                        resources.assign(self, ts, thief)
                    else:
                        self._assign(ts, thief)
                    self._record(ts, "stolen", thief.address)
                    spare -= 1
                    surplus -= 1
                if passed:
                    waiting.extend(reversed(passed))

    def _release_limited(self) -> None:
        """Start held tasks whose limit allows it, each on an idle thread."""
        still = False
        for limit in list(self.limits.values()):
            held = limit.held
            while held and limit.can_start(self.now):
                ts = held[0][2]
                if ts.state != "queued" or ts.limit is not limit:
                    heapq.heappop(held)
                    continue
                if self._expired(ts):
                    heapq.heappop(held)
                    continue
                ws = self._pick_worker(ts, idle_only=True)
                if ws is None:
                    break
                heapq.heappop(held)
                limit.started(self.now)
                ts.limited = True
                if "resources" in ts.options:   # type: ignore[operator]
                    resources.assign(self, ts, ws)
                else:
                    self._assign(ts, ws)
            still = still or bool(held)
        self.limits_held = still

    def _assign(self, ts: TaskState, ws: WorkerState) -> None:
        self.runs += 1
        ts.run_id = self.runs
        ts.state = "processing"
        ts.processing_on = ws
        ts.executing = False   # until this worker says STARTED
        ws.processing.add(ts)
        ws.assigned += 1
        self.occupancy.changed(ws)
        if self.record_stories:
            self.stories.append((ts.key, "processing", ws.address, self.stimulus, self.now))
        fn = ts.fn
        if fn and fn not in ws.functions:
            ws.functions.add(fn)
            holders = self.fn_refs.workers.get(fn)
            if holders is None:
                holders = self.fn_refs.workers[fn] = set()
            holders.add(ws)
            self.out.append((ws.address, m.Function(fn, self.functions[fn])))
        deps = {dts.key: [w.address for w in dts.who_has] for dts in ts.deps
                if dts.state != "erred"}
        self.out.append((ws.address, m.Compute(ts.key, ts.fn, ts.args, ts.kwargs, deps,
                                      bool(ts.who_wants), ts.priority,
                                      self._worker_options(ts), ts.run_id)))

    def _worker_options(self, ts: TaskState) -> dict[str, Any] | None:
        """What the worker needs to know to run a task: limits, retry rules, failed inputs."""
        if not ts.options and not ts.collect:
            return None
        options = ts.options or {}
        out: dict[str, Any] = {}
        for name in ("timeout", "retry_on", "expires"):
            if name in options:
                out[name] = options[name]
        if ts.retries_left > 0:
            out["retries"] = ts.retries_left
        if ts.collect:
            out["errors"] = {d.key: d.exception for d in ts.deps if d.state == "erred"}
        return out or None
