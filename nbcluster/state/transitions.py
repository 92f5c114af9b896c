"""How tasks move between states: the rules SchedulerState applies (where they run: placement).

A base class of SchedulerState (split out to keep modules small); it owns no state of its
own, everything lives on the SchedulerState instance, and nothing here does I/O or reads a
clock: ``self.now`` is the time of the event being handled.
"""

from __future__ import annotations

import heapq
from typing import Any

from ..errors import CancelledError, FutureLostError, TaskExpiredError
from ..protocol import messages as m
from .model import (_EMPTY, FIRE_AND_FORGET, TaskState, WorkerState, add_holder, error,
                    stop_waiting, unwant, wait_for)
from . import functions, resources
from .placement import Placement


class Transitions(Placement):
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
            wait_for(ts, dts)
        if not ts.waiting_on:
            self._become_ready(ts)

    def _recompute(self, ts: TaskState, why: Any) -> None:
        """Bring back a released task from its lineage; scattered data has none: it errs."""
        if not ts.fn:
            self._set_erred(ts, error(FutureLostError, f"{ts.key!r} was scattered data, now "
                            "gone with its worker or released; it cannot be recomputed"),
                            None, ts.key)
            return
        self._record(ts, "recompute", why)
        ts.state = "waiting"
        self._become_ready_or_wait(ts)

    def _rerun_failed(self, ts: TaskState, why: Any) -> None:
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
            if self.durable.journal is not None:
                self.durable.journal.append(("rerun", t.key))
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
            if "resources" in options and resources.ready(self, ts):
                return   # started where its resources are free, or filed to wait for them
            if ts.limit is not None:
                ts.state = "queued"
                heapq.heappush(ts.limit.held, ts.queued())
                self.limits_held = True
                return
        pinned = options and options.get("workers")
        if (ts.deps or pinned) and self.durable.placing:
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
            heapq.heappush(heap, ts.queued())

    def _expired(self, ts: TaskState) -> bool:
        expires = ts.options.get("expires") if ts.options else None
        if expires is None or self.now < expires:
            return False
        self._record(ts, "expired", None)
        self._set_erred(ts, error(TaskExpiredError, f"task {ts.key!r} had not started when "
                        f"it expired ({self.now - expires:.3f} s ago)"), None, ts.key)
        return True

    # ------------------------------------------------------------------ placement
    def _unassign(self, ts: TaskState, free: bool = True) -> None:
        ws = ts.processing_on
        assert ws is not None, ts
        ws.processing.discard(ts)
        if ws.seceded:   # (seceded tasks are rare: one check)
            ws.seceded.discard(ts)
        self.occupancy.changed(ws)
        options = ts.options
        if options and "resources" in options:   # (one check for a task without options)
            resources.release(self, ws, options["resources"])
        ts.processing_on = None
        ts.executing = False
        if ts.limited and ts.limit is not None:
            ts.limited = False
            ts.limit.running -= 1
            if ts.limit.held:
                self.limits_held = True
        if free:
            self._free(ws.address, ts.key)

    # ------------------------------------------------------------------ ends
    def _tell(self, ts: TaskState, msg: m.Message) -> None:
        """Send ``msg`` to the clients that want ``ts`` (the fire-and-forget one is no peer)."""
        for client in ts.who_wants:
            if client[0] != "@":   # not fire-and-forget, not a schedule: a client
                self.out.append((client, msg))

    def _add_replica(self, ts: TaskState, ws: WorkerState) -> None:
        if add_holder(ts, ws):
            ws.has_what.add(ts)
            ws.nbytes += ts.nbytes

    def _set_erred(self, ts: TaskState, exception: Any, traceback: str | None, blame: str | None,
                   cancel: str = "") -> None:
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
                self._tell(t, m.Cancelled(t.key, cancel))
            else:
                self._tell(t, m.Erred(t.key, exception, traceback, blame))
            t.exception, t.traceback, t.blame = exception, traceback, blame
            if self.durable.journal is not None:
                self.durable.journal.append(("erred", t.key, exception, traceback, blame))
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
                self._journal_wants(t)
        for d, t in ready:
            if stop_waiting(d, t) and not d.waiting_on and d.state == "waiting":
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
                wait_for(dts, ts)

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
            self._free(ws.address, ts.key)
        ts.who_has = _EMPTY

    def _free(self, worker: str, key: str) -> None:
        """Tell ``worker`` to forget ``key``: whatever ran it there up to now, not a run
        assigned after this (see ``m.Free``)."""
        self.out.append((worker, m.Free([key], [self.runs])))

    def _journal_wants(self, ts: TaskState) -> None:
        """Its wanters changed: the journal, if any, records them (unless it is gone)."""
        if self.durable.journal is not None and self.tasks.get(ts.key) is ts:
            self.durable.journal.append(("wants", ts.key, ts.who_wants))

    def _journal_retries(self, ts: TaskState) -> None:
        if self.durable.journal is not None:
            self.durable.journal.append(("retries", ts.key, ts.retries_left, ts.retry_count))

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
            # a queue, timer or limit may list it until its turn comes (they skip forgotten
            # tasks lazily): what it was called with, maybe large, goes now
            t.args = t.kwargs = None
            self._record(t, "forgotten", None)
            del self.tasks[t.key]
            fn = t.fn
            if fn:   # one known task fewer names its function (inline: once per task)
                uses = self.fn_refs.uses
                n = uses[fn] - 1
                if n:
                    uses[fn] = n
                else:
                    functions.unused(self, fn)
            if self.durable.journal is not None:
                self.durable.journal.append(("forget", t.key))
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
            self.out.append((client, m.Done(ts.key, False, None, ts.nbytes,
                                      [w.address for w in ts.who_has])))
        elif ts.state == "erred":
            self.out.append((client, m.Erred(ts.key, ts.exception, ts.traceback, ts.blame)))
        elif ts.state == "released":
            self._recompute(ts, client)

    def _record(self, ts: TaskState, what: str, where: Any) -> None:
        if self.record_stories:
            self.stories.append((ts.key, what, where, self.stimulus, self.now))
