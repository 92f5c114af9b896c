"""What workers report to the scheduler: a task started, finished or failed; an input was
missing; output, transfers, heartbeats, pauses and memory limits. Each handler takes the
:class:`~nbcluster.state.scheduler_state.SchedulerState` and one message record."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..protocol import messages as m
from .gates import backoff
from .model import (FIRE_AND_FORGET, STEAL_LATENCY, TaskState, WorkerState, drop_holder,
                    stop_waiting, unwant)

if TYPE_CHECKING:
    from .scheduler_state import SchedulerState

PAUSED_MOVE_BYTES = 1_000_000   # inputs on paused workers that a task moved off one may need


def on_started(s: SchedulerState, peer: str, msg: m.Started) -> None:
    ts = s.tasks.get(msg.key)
    if ts is not None and ts.processing_on is not None and ts.processing_on.address == peer \
            and msg.run == ts.run_id:
        ts.executing = True


def on_finished(s: SchedulerState, peer: str, msg: m.Finished) -> None:
    ws = s.workers.get(peer)
    if ws is None:
        return
    key, nbytes, start, stop = msg.key, msg.nbytes, msg.start, msg.stop
    ts = s.tasks.get(key)
    if ts is not None and ts.processing_on is ws and msg.run != ts.run_id:
        # an earlier run here, finished before the worker heard it was freed: it dropped
        # that value and reports the current run separately
        return
    if ts is None or ts.processing_on is not ws:
        # Not (or no longer) this worker's to run: it was freed, cancelled, erred or moved
        # elsewhere, and the worker was sent FREE for it, so it drops the value. Counting
        # it would record a replica that is gone.
        if ts is None or ws not in ts.who_has:
            s._free(peer, key)
        return
    ws.last_seen = s.now
    s.task_log.append((key, peer, start, stop, True))
    s.task_log_total += 1
    s._unassign(ts, free=False)
    if ts.attempts is not None or ts.options:
        s._attempt(ts, peer, start, stop - start, None)
    duration = max(stop - start, 1e-6)
    s.avg_duration = 0.9 * s.avg_duration + 0.1 * duration
    known = s.prefix_durations.get(ts.prefix)
    recent = s.prefix_durations[ts.prefix] = duration if known is None else \
        0.5 * known + 0.5 * duration
    if recent >= STEAL_LATENCY:
        s.long_prefixes.add(ts.prefix)
    elif s.long_prefixes:
        s.long_prefixes.discard(ts.prefix)
    s.counts[ts.prefix] += 1
    has_value = msg.has_value
    took_result(s, ts, ws, nbytes, m.Done(key, has_value, msg.value if has_value else None,
                                          nbytes, [] if has_value else [peer]), peer)


def took_result(s: SchedulerState, ts: TaskState, ws: WorkerState, nbytes: int, done: m.Done,
                where: str) -> None:
    """``ts``'s result is on ``ws``: its wanters hear, what waited on it may start, and inputs
    no longer needed go."""
    ts.nbytes = nbytes
    ts.state = "memory"
    s._add_replica(ts, ws)
    s._record(ts, "memory", where)
    s._tell(ts, done)
    for dts in ts.dependents:
        if stop_waiting(dts, ts) and not dts.waiting_on and dts.state == "waiting":
            s._become_ready(dts)
    if FIRE_AND_FORGET in ts.who_wants:
        unwant(ts, FIRE_AND_FORGET)
        s._journal_wants(ts)
    for dep in ts.deps:
        s._maybe_release_data(dep)
    if not ts.who_wants:
        s._maybe_release_data(ts)


def on_failed(s: SchedulerState, peer: str, msg: m.Failed) -> None:
    key, start, stop, retry = msg.key, msg.start, msg.stop, msg.retry
    ts = s.tasks.get(key)
    ws = s.workers.get(peer)
    if ts is None or ws is None or ts.processing_on is not ws or msg.run != ts.run_id:
        return
    s.task_log.append((key, peer, start, stop, False))
    s.task_log_total += 1
    s._unassign(ts, free=False)
    s._attempt(ts, peer, start, stop - start, _last_line(msg.traceback))
    if retry is not None and _retry(s, ts, retry):
        return
    s.counts[ts.prefix + " erred"] += 1
    s._record(ts, "failed", peer)
    s._set_erred(ts, msg.exception, msg.traceback, key)


def _retry(s: SchedulerState, ts: TaskState, retry: dict[str, Any]) -> bool:
    """Another attempt, if the task's budget allows: now or after its back-off."""
    if ts.retries_left > 0:
        ts.retries_left -= 1
    elif retry.get("delay") is not None and ts.retry_count < (retry.get("max") or 0) \
            and not (ts.options and "retries" in ts.options):
        pass   # an explicit Retry() in a task with no retry budget of its own
    else:
        return False
    ts.retry_count += 1
    s._journal_retries(ts)
    options = ts.options or {}
    delay = retry.get("delay")
    if delay is None:
        delay = backoff(options.get("retry_backoff", 0.0), ts.retry_count,
                        options.get("retry_backoff_max", 600.0),
                        options.get("retry_jitter", True), s.rng)
    s._record(ts, "retry", delay)
    ts.state = "waiting"
    if delay > 0:
        ts.state = "delayed"
        s.timers.add(s.now + delay, "start", ts)
    else:
        s._become_ready_or_wait(ts)
    return True


def on_missing(s: SchedulerState, peer: str, msg: m.Missing) -> None:
    """A worker could not fetch ``dep_key`` from ``holder``: fix who_has, retry ``key``."""
    key, dep_key = msg.key, msg.dep
    ts = s.tasks.get(key)
    dts = s.tasks.get(dep_key)
    hws = s.workers.get(msg.worker)
    if dts is not None and hws is not None and hws in dts.who_has:
        drop_holder(dts, hws)
        hws.has_what.discard(dts)
        hws.nbytes -= dts.nbytes
        if not dts.who_has and dts.state == "memory":
            s._lost_data(dts)
    if ts is not None and ts.processing_on is not None and ts.processing_on.address == peer:
        s._unassign(ts, free=False)
        ts.state = "waiting"
        s._record(ts, "missing-dep", dep_key)
        s._become_ready_or_wait(ts)


def on_output(s: SchedulerState, peer: str, msg: m.Output) -> None:
    """What a task printed: to the clients that hold its future."""
    ts = s.tasks.get(msg.key)
    if ts is not None:
        s._tell(ts, msg)


def on_transfers(s: SchedulerState, peer: str, msg: m.Transfers) -> None:
    entries = msg.entries
    for key, source, start, stop, nbytes in entries:
        s.transfer_log.append((key, source, peer, start, stop, nbytes))
    s.transfer_log_total += len(entries)


def on_heartbeat(s: SchedulerState, peer: str, msg: m.Heartbeat) -> None:
    ws = s.workers.get(peer)
    if ws is not None:
        ws.metrics = msg.metrics
        ws.last_seen = s.now


def on_status(s: SchedulerState, peer: str, msg: m.Status) -> None:
    ws = s.workers.get(peer)
    if ws is None:
        return
    if msg.status == "terminating":
        ws.last_words = msg.detail
    paused = msg.status != "running"
    ws.memory_note = msg.detail if paused else ""
    if paused != ws.paused:
        ws.paused = paused
        s.occupancy.changed(ws)
        if ws.resources is not None and not paused:
            s.occupancy.resources.freed = True   # what waits for its resources may go
    # tasks queued on a paused worker would wait for it while others idle: move them to
    # workers that run (from this one if it paused, else from those still paused)
    if paused:
        move_queued(s, ws)
    else:
        for pws in list(s.occupancy.paused):
            move_queued(s, pws)
        s._fill_workers()


def move_queued(s: SchedulerState, ws: WorkerState) -> None:
    """Hand the tasks queued on paused ``ws`` (not started: it said no STARTED) to workers
    that run, as stealing does: FREE tells ``ws`` to drop them unstarted, and a report of one
    it ran meanwhile is stale (its run id). A task whose inputs held only by paused workers
    weigh over PAUSED_MOVE_BYTES stays: a worker short of memory would have to read them
    back and send them (measured: that, and the batch arriving at once, took workers past
    their limit), while it spills until it resumes. Tasks pinned to paused workers, and any
    whose queue has no running worker, stay too: they run where they are once it resumes."""
    if not ws.processing:
        return
    least_loaded = s.occupancy.least_loaded
    queued = sorted((ts for ts in ws.processing if not ts.executing), key=_priority)
    for ts in queued:
        if least_loaded(ts.queue) is None:
            continue
        pinned = ts.options.get("workers") if ts.options else None
        if pinned and not any(a in s.workers and not s.workers[a].paused for a in pinned):
            continue
        if ts.deps and PAUSED_MOVE_BYTES < sum(
                d.nbytes for d in ts.deps if all(h.paused for h in d.who_has)):
            continue
        s._unassign(ts)
        s._record(ts, "paused-worker", ws.address)
        ts.state = "waiting"
        s._become_ready_or_wait(ts)


def _priority(ts: TaskState) -> Any:
    return ts.priority


def on_memory_limit(s: SchedulerState, peer: str, msg: m.MemoryLimit) -> None:
    ws = s.workers.get(peer)
    if ws is not None:   # a new identity: observers may hold the old one
        ws.identity = {**ws.identity, "memory_limit": msg.limit}


def _last_line(traceback: str | None) -> str:
    """``ValueError: bad input`` out of a formatted traceback."""
    lines = [line for line in (traceback or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "error"
