"""What clients send the scheduler: functions, tasks, releases, wants, cancels, retries,
fire-and-forget marks, scattered data and limits. Each handler takes the
:class:`~nbcluster.state.scheduler_state.SchedulerState` and one message record."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from ..errors import FutureLostError
from ..protocol import messages as m
from .gates import Limit
from .model import FIRE_AND_FORGET, TaskState, error, own, unwant, want

if TYPE_CHECKING:
    from .scheduler_state import SchedulerState
def on_function(s: SchedulerState, peer: str, msg: m.Function) -> None:
    token = msg.token
    if token not in s.functions:
        s.functions[token] = msg.blob
        s.function_owners[token] = peer
        if s.journal is not None:
            s.journal.append(("fn", token, msg.blob, peer))


def on_submit(s: SchedulerState, peer: str, msg: m.Submit) -> None:
    tasks = s.tasks
    for spec in msg.tasks:
        key, options = spec.key, spec.options
        ts = tasks.get(key)
        if ts is not None:
            want(ts, peer)
            s._journal_wants(ts)
            s._report_if_final(ts, peer)
            continue
        s.counter += 1
        prio = -(options.get("priority", 0) or 0) if options else 0
        # the token interned: one string for all of a function's tasks, not one each
        ts = TaskState(key, sys.intern(spec.fn), spec.args, spec.kwargs, options, prio,
                       s.counter)
        tasks[key] = ts
        want(ts, peer)
        if s.journal is not None:
            s.journal.append(("task", spec, ts.who_wants))
        if options:
            apply_options(s, ts, options)
        s._record(ts, "submitted", peer)
        failed_dep = None
        if spec.deps:
            deps = []
            for dkey in dict.fromkeys(spec.deps):
                dts = tasks.get(dkey)
                if dts is None:
                    failed_dep = dkey
                    continue
                deps.append(dts)
                own(dts, "dependents").add(ts)
            ts.deps = tuple(deps)
        if failed_dep is not None:
            ts.state = "waiting"
            s._set_erred(ts, error(FutureLostError,
                f"task {key!r} depends on {failed_dep!r}, which the scheduler does not know "
                "(its future was released before this task was submitted)"), None, key)
            continue
        ts.state = "waiting"
        s._become_ready_or_wait(ts)


def on_release(s: SchedulerState, peer: str, msg: m.Release) -> None:
    tasks = s.tasks
    for key in msg.keys:
        ts = tasks.get(key)
        if ts is not None and peer in ts.who_wants:
            unwant(ts, peer)
            if not ts.who_wants:
                s._maybe_forget(ts)
            s._journal_wants(ts)


def on_want(s: SchedulerState, peer: str, msg: m.Want) -> None:
    for key in msg.keys:
        ts = s.tasks.get(key)
        if ts is None:
            s.out.append((peer, m.Cancelled(key, "the scheduler does not know this key")))
            continue
        want(ts, peer)
        s._journal_wants(ts)
        s._report_if_final(ts, peer)


def on_cancel(s: SchedulerState, peer: str, msg: m.Cancel) -> None:
    for key in msg.keys:
        ts = s.tasks.get(key)
        if ts is None or ts.state in ("memory", "erred", "released"):
            continue
        s._set_erred(ts, None, None, key, cancel=f"cancelled by {peer}")


def on_retry(s: SchedulerState, peer: str, msg: m.RetryTasks) -> None:
    for key in msg.keys:
        ts = s.tasks.get(key)
        if ts is None:
            s.out.append((peer, m.Cancelled(key, "the scheduler does not know this key")))
        elif ts.state == "erred":
            s._rerun_failed(ts, peer)
        else:   # already rerunning (another client asked) or done: the client hears as usual
            want(ts, peer)
            s._journal_wants(ts)
            s._report_if_final(ts, peer)


def on_fire_and_forget(s: SchedulerState, peer: str, msg: m.FireAndForget) -> None:
    for key in msg.keys:
        ts = s.tasks.get(key)
        if ts is not None and ts.state not in ("memory", "erred", "released"):
            want(ts, FIRE_AND_FORGET)
            s._journal_wants(ts)


def on_update_data(s: SchedulerState, peer: str, msg: m.UpdateData) -> None:
    worker = msg.worker
    ws = s.workers.get(worker)
    for key, size in msg.nbytes.items():
        ts = s.tasks.get(key)
        if ts is None:
            s.counter += 1
            ts = TaskState(key, "", None, None, None, 0, s.counter)
            s.tasks[key] = ts
        want(ts, peer)
        if ts.fn:
            # the key names a submitted task (the client checks first; this is a race
            # with another client): the task's own result wins, the put copy goes
            if ws is not None and ws not in ts.who_has:
                s._free(worker, key)
            if ts.state == "memory":
                s.out.append((peer, m.Done(key, False, None, ts.nbytes,
                                        [w.address for w in ts.who_has])))
            continue
        if ws is None:
            if ts.state != "memory":   # else another copy (broadcast) is still there
                s._set_erred(ts, error(FutureLostError, f"{key!r} was scattered to "
                    f"{worker}, which is gone; scattered data cannot be recomputed"), None, key)
            continue
        if ts.state != "memory":   # replicas already counted keep their size
            ts.nbytes = size
        ts.state = "memory"
        s._add_replica(ts, ws)
        s.out.append((peer, m.Done(key, False, None, size,
                                [w.address for w in ts.who_has])))


def apply_options(s: SchedulerState, ts: TaskState, options: dict[str, Any]) -> None:
    """Limits, and the expiry timer, of a new task."""
    key = options.get("limit_key")
    if key is None and ("rate" in options or "concurrency" in options):
        key = f"function:{ts.prefix}"
    if key is not None:
        limit = s.limits.get(key)
        if limit is None:
            limit = s.limits[key] = Limit(key)
        if "rate" in options or "concurrency" in options:
            limit.set(options.get("rate"), options.get("concurrency"))
        ts.limit = limit
    if "expires" in options:
        s.timers.add(options["expires"], "expire", ts)
    if ts.queue not in s.queues:
        s.queues[ts.queue] = []


def on_set_limit(s: SchedulerState, peer: str, msg: m.SetLimit) -> None:
    key = msg.key
    limit = s.limits.get(key)
    if limit is None:
        limit = s.limits[key] = Limit(key)
    limit.set(msg.rate, msg.concurrency)
    if s.journal is not None:
        s.journal.append(("limit", key, msg.rate, msg.concurrency))
    s.limits_held = True    # the new budget may let held tasks go
