"""How tasks move between states, and where they run: the rules SchedulerState applies.

A base class of SchedulerState (split out to keep modules small); it owns no state of its
own, everything lives on the SchedulerState instance, and nothing here does I/O or reads a
clock: ``self.now`` is the time of the event being handled.
"""

from __future__ import annotations

import heapq

from ..errors import CancelledError, FutureLostError, TaskExpiredError
from ..protocol import messages as m
from .model import _EMPTY, FIRE_AND_FORGET, MAX_WINDOW, QUEUED_WORK_SECONDS, STEAL_BANDWIDTH, \
    STEAL_LATENCY, TaskState, \
    WorkerState, error, own, unwant

STEAL_VICTIMS = 8      # busiest workers one stealing pass looks at
STEAL_THIEVES = 64     # idle workers one stealing pass serves
STEAL_EXAMINED = 512   # queued tasks one stealing pass considers


def _load_key(ws: WorkerState) -> tuple:
    return (len(ws.processing) / ws.nthreads, ws.assigned, ws.index)


def _priority(ts: TaskState) -> tuple:
    return ts.priority


def _allowed(queue: str, idle_only: bool, paused_ok: bool):
    """Whether a worker holding an input may run the task (the rule _pick_worker's idlest
    was chosen by: its queue, a free thread if asked, not paused unless all are)."""
    def allowed(ws: WorkerState) -> bool:
        return (queue in ws.queues and (paused_ok or not ws.paused)
                and (not idle_only or len(ws.processing) < ws.nthreads))
    return allowed


class Transitions:
    # ------------------------------------------------------------------ becoming ready
    def _become_ready_or_wait(self, ts: TaskState) -> None:
        """Put a waiting task on its way: wait for deps (recomputing lost ones) or run."""
        ts.waiting_on = _EMPTY
        for dts in ts.deps:
            if dts.state == "memory":
                continue
            if dts.state == "released":
                self._recompute(dts, ts.key)
            if ts.state == "erred":   # an input without lineage was lost: erred with it
                return
            if dts.state == "erred":
                if ts.collect:
                    continue          # it receives the exception in place of the value
                self._set_erred(ts, dts.exception, dts.traceback, dts.blame)
                return
            own(ts, "waiting_on").add(dts)
        if not ts.waiting_on:
            self._become_ready(ts)

    def _recompute(self, ts: TaskState, why) -> None:
        """Bring back a released task from its lineage; scattered data has none: it errs."""
        if not ts.fn:
            self._set_erred(ts, error(FutureLostError, f"{ts.key!r} was scattered data, now "
                            "gone with its worker or released; it cannot be recomputed"),
                            None, ts.key)
            return
        self._record(ts, "recompute", why)
        ts.state = "waiting"
        self._become_ready_or_wait(ts)

    def _rerun_failed(self, ts: TaskState, why) -> None:
        """``client.retry``: run a failed task again, and the failed tasks it depends on (the
        error came from one of them), with their retry budgets restored."""
        stack = [ts]
        while stack:
            t = stack.pop()
            if t.state != "erred" or not t.fn:   # scattered data has no lineage: stays failed
                continue
            t.state = "released"
            t.exception = t.traceback = t.blame = None
            t.suspicious = 0
            t.retries_left = t.options.get("retries", 0) if t.options else 0
            stack.extend(t.deps)
        if ts.state == "released":
            self._recompute(ts, why)
        else:
            self._report_if_final(ts, why)

    def _become_ready(self, ts: TaskState) -> None:
        options = ts.options
        if options:
            not_before = options.get("not_before")
            if not_before is not None and not_before > self.now:
                ts.state = "delayed"       # countdown / eta / retry back-off
                self.timers.add(not_before, "start", ts)
                return
            if self._expired(ts):
                return
            if ts.limit is not None:
                ts.state = "queued"
                heapq.heappush(ts.limit.held, (ts.priority, ts))
                self.limits_held = True
                return
        pinned = options and options.get("workers")
        if ts.deps or pinned:
            ws = self._pick_worker(ts)
            if ws is not None:
                self._assign(ts, ws)
                return
        ts.state = "queued"
        if pinned and not any(a in self.workers for a in pinned):
            self.unrunnable.append(ts)   # waits for one of its workers to join
        else:
            heap = self.queues.get(ts.queue)
            if heap is None:
                heap = self.queues[ts.queue] = []
            heapq.heappush(heap, (ts.priority, ts))

    def _expired(self, ts: TaskState) -> bool:
        expires = ts.options.get("expires") if ts.options else None
        if expires is None or self.now < expires:
            return False
        self._record(ts, "expired", None)
        self._set_erred(ts, error(TaskExpiredError, f"task {ts.key!r} had not started when "
                        f"it expired ({self.now - expires:.3f} s ago)"), None, ts.key)
        return True

    # ------------------------------------------------------------------ placement
    def _eligible(self, ts: TaskState) -> list[WorkerState]:
        pinned = ts.options.get("workers") if ts.options else None
        if pinned:
            workers = [self.workers[a] for a in pinned if a in self.workers]
        else:
            workers = self.workers.values()
        return [w for w in workers if ts.queue in w.queues]

    def _pick_worker(self, ts: TaskState, idle_only: bool = False) -> WorkerState | None:
        """The worker holding most input bytes, unless it is much busier than the idlest."""
        pinned = ts.options.get("workers") if ts.options else None
        if pinned:    # a few named workers: look at each
            candidates = self._eligible(ts)
            if idle_only:
                candidates = [w for w in candidates if len(w.processing) < w.nthreads]
            if not candidates:
                return None
            # a paused worker (out of memory) gets work only when no other may take it: it
            # is run there once the worker resumes
            candidates = [w for w in candidates if not w.paused] or candidates
            idlest = min(candidates, key=_load_key)
            allowed = set(candidates).__contains__
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
                _, ts = heapq.heappop(heap)
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
        self._steal()

    def _steal(self) -> None:
        """Idle threads take tasks queued, not yet started, on workers that have more than
        they can run, when the task's expected run time outweighs moving it (its inputs the
        thief lacks, plus a round trip). The victim is told FREE and drops it unstarted.
        One call looks at a bounded number of thieves, victims and tasks."""
        occupancy = self.occupancy
        if not occupancy.idle or not occupancy.busy:
            return
        victims = occupancy.busiest(STEAL_VICTIMS)
        if not victims:
            return
        durations, default = self.prefix_durations, self.avg_duration
        waiting_on: dict[WorkerState, list] = {}
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
                while waiting and spare > 0 and surplus > 0 and budget > 0:
                    ts = waiting.pop()
                    budget -= 1
                    if ts.processing_on is not victim or ts.queue not in thief.queues:
                        continue
                    pinned = ts.options.get("workers") if ts.options else None
                    if pinned and thief.address not in pinned:
                        continue
                    moved = sum(d.nbytes for d in ts.deps if thief not in d.who_has)
                    if durations.get(ts.prefix, default) < STEAL_LATENCY + moved / STEAL_BANDWIDTH:
                        continue
                    self._unassign(ts)
                    self._assign(ts, thief)
                    self._record(ts, "stolen", thief.address)
                    spare -= 1
                    surplus -= 1

    def _release_limited(self) -> None:
        """Start held tasks whose limit allows it, each on an idle thread."""
        still = False
        for limit in list(self.limits.values()):
            held = limit.held
            while held and limit.can_start(self.now):
                _, ts = held[0]
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
        if ts.fn and ts.fn not in ws.functions:
            ws.functions.add(ts.fn)
            self.out.append((ws.address, [m.FUNCTION, ts.fn, self.functions[ts.fn]]))
        deps = {dts.key: [w.address for w in dts.who_has] for dts in ts.deps
                if dts.state != "erred"}
        self.out.append((ws.address, [m.COMPUTE, ts.key, ts.fn, ts.args, ts.kwargs, deps,
                                      bool(ts.who_wants), ts.priority[0],
                                      self._worker_options(ts), ts.run_id]))

    def _worker_options(self, ts: TaskState) -> dict | None:
        """What the worker needs to know to run a task: limits, retry rules, failed inputs."""
        options = ts.options
        if not options and not ts.collect:
            return None
        out = {}
        for name in ("timeout", "retry_on", "expires"):
            if name in options:
                out[name] = options[name]
        if ts.retries_left > 0:
            out["retries"] = ts.retries_left
        if ts.collect:
            out["errors"] = {d.key: d.exception for d in ts.deps if d.state == "erred"}
        return out or None

    def _unassign(self, ts: TaskState, free: bool = True) -> None:
        ws = ts.processing_on
        ws.processing.discard(ts)
        self.occupancy.changed(ws)
        ts.processing_on = None
        ts.executing = False
        if ts.limited:
            ts.limited = False
            ts.limit.running -= 1
            if ts.limit.held:
                self.limits_held = True
        if free:
            self.out.append((ws.address, [m.FREE, [ts.key]]))

    # ------------------------------------------------------------------ ends
    def _tell(self, ts: TaskState, msg: list) -> None:
        """Send ``msg`` to the clients that want ``ts`` (the fire-and-forget one is no peer)."""
        for client in ts.who_wants:
            if client != FIRE_AND_FORGET:
                self.out.append((client, msg))

    def _add_replica(self, ts: TaskState, ws: WorkerState) -> None:
        if ws not in ts.who_has:
            own(ts, "who_has").add(ws)
            ws.has_what.add(ts)
            ws.nbytes += ts.nbytes

    def _set_erred(self, ts: TaskState, exception, traceback, blame, cancel: str = "") -> None:
        """Fail ``ts`` and, with the same error, every dependent that has not finished.

        With ``cancel`` (the reason), they are cancelled instead: CANCELLED to the clients.
        Dependents that collect errors get the exception as an input instead of failing.
        """
        stack, erred, ready = [ts], [], []
        while stack:
            t = stack.pop()
            if t.state in ("erred", "memory", "released") and t is not ts:
                continue
            if t.processing_on is not None:
                self._unassign(t)
            t.state, t.waiting_on = "erred", _EMPTY
            self._record(t, "cancelled" if cancel else "erred", cancel or blame)
            if cancel:
                exception = error(CancelledError, f"{t.key}: {cancel}")
                self._tell(t, [m.CANCELLED, t.key, cancel])
            else:
                self._tell(t, [m.ERRED, t.key, exception, traceback, blame])
            t.exception, t.traceback, t.blame = exception, traceback, blame
            erred.append(t)
            for d in t.dependents:
                if d.collect and d.state == "waiting" and not cancel:
                    ready.append((d, t))
                else:
                    stack.append(d)
        # Inputs of every erred task (not only the first) may now be unneeded, and a
        # fire-and-forget task that ended this way is let go like one that finished.
        for t in erred:
            for dep in t.deps:
                self._maybe_release_data(dep)
        for t in erred:
            if FIRE_AND_FORGET in t.who_wants:
                unwant(t, FIRE_AND_FORGET)
                self._maybe_forget(t)
        for d, t in ready:
            if t in d.waiting_on:
                d.waiting_on.discard(t)
                if not d.waiting_on and d.state == "waiting":
                    self._become_ready(d)

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
                own(dts, "waiting_on").add(ts)

    def _is_needed(self, ts: TaskState) -> bool:
        if ts.who_wants:
            return True
        for dts in ts.dependents:
            # a released dependent needs nothing until it is recomputed (then it waits)
            if dts.state in ("waiting", "queued", "processing", "delayed"):
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
        ts.who_has = _EMPTY

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
            self._record(t, "forgotten", None)
            del self.tasks[t.key]
            for dep in t.deps:
                if t in dep.dependents:
                    dep.dependents.discard(t)
                if not dep.who_wants:
                    if dep.dependents:
                        self._maybe_release_data(dep)
                    else:
                        stack.append(dep)

    def _report_if_final(self, ts: TaskState, client: str) -> None:
        if ts.state == "memory":
            self.out.append((client, [m.DONE, ts.key, False, None, ts.nbytes,
                                      [w.address for w in ts.who_has]]))
        elif ts.state == "erred":
            self.out.append((client, [m.ERRED, ts.key, ts.exception, ts.traceback, ts.blame]))
        elif ts.state == "released":
            self._recompute(ts, client)

    def _record(self, ts: TaskState, what: str, where) -> None:
        if self.record_stories:
            self.stories.append((ts.key, what, where, self.stimulus, self.now))
