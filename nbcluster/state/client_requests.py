"""What clients send the scheduler: tasks, releases, wants, cancels, retries, fire-and-forget
marks, scattered data and limits (functions: functions.py). Each handler takes the
:class:`~nbcluster.state.scheduler_state.SchedulerState` and one message record."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from ..errors import FutureLostError, ProtocolError
from ..protocol import messages as m
from .gates import Limit
from .model import FIRE_AND_FORGET, TaskState, error, own, unwant, want

if TYPE_CHECKING:
    from .scheduler_state import SchedulerState


def on_submit(s: SchedulerState, peer: str, msg: m.Submit) -> None:
    tasks, uses = s.tasks, s.fn_refs.uses
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
        fn = sys.intern(spec.fn)
        n = uses.get(fn, 0)
        if not n and fn not in s.functions:
            unknown_function(s, peer, spec)
            continue
        uses[fn] = n + 1    # the function is kept while a known task names it
        ts = TaskState(key, fn, spec.args, spec.kwargs, options, prio, s.counter)
        tasks[key] = ts
        want(ts, peer)
        if s.durable.journal is not None:
            s.durable.journal.append(("task", spec, ts.who_wants))
        if options:
            apply_options(s, ts, options)
        s._record(ts, "submitted", peer)
        failed_dep = link_inputs(s, ts, spec.deps) if spec.deps else None
        if failed_dep is not None:
            ts.state = "waiting"
            s._set_erred(ts, error(FutureLostError,
                f"task {key!r} depends on {failed_dep!r}, which the scheduler does not know "
                "(its future was released before this task was submitted)"), None, key)
            continue
        ts.state = "waiting"
        s._become_ready_or_wait(ts)


def link_inputs(s: SchedulerState, ts: TaskState, keys: list[str]) -> str | None:
    """Link ``ts`` and the known tasks of ``keys``; the first key not known, if any."""
    tasks, deps, missing = s.tasks, [], None
    for dkey in dict.fromkeys(keys):
        dts = tasks.get(dkey)
        if dts is None:
            missing = missing or dkey
            continue
        deps.append(dts)
        own(dts, "dependents").add(ts)
    ts.deps = tuple(deps)
    return missing


def unknown_function(s: SchedulerState, peer: str, spec: m.TaskSpec) -> None:
    """A new task names a function released earlier in the same batch (checked before the
    batch applied, it was known): a client that names a token after its release. The task
    fails, saying so; it names no function, so nothing counts on one."""
    ts = s.tasks[spec.key] = TaskState(spec.key, "", None, None, None, 0, s.counter)
    want(ts, peer)
    ts.state = "waiting"
    s._set_erred(ts, error(ProtocolError, f"task {spec.key!r} names the function "
                           f"{spec.fn!r}, which its client had released: the client must send "
                           "a function again (a new token) to use it after its release"),
                 None, spec.key)


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
    if s.durable.journal is not None:
        s.durable.journal.append(("limit", key, msg.rate, msg.concurrency))
    s.limits_held = True    # the new budget may let held tasks go
