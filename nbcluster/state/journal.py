"""What a scheduler's journal keeps, and how a restarted scheduler takes it back (issue 15).

The state decides; the shell (``nbcluster/server/journal.py``) stores. While
``SchedulerState.journal`` is a list, handlers append a record for every change a restart
must know about, and the shell writes them (one transaction) before it sends what the same
step decided. Records (plain tuples, the first item names the kind):

- ``("fn", token, blob, owner)``         a function accepted
- ``("task", spec, who_wants)``          a task accepted (its TaskSpec as the client sent it)
- ``("wants", key, who_wants)``          the clients (and fire-and-forget) that want it
- ``("forget", key)``                    the scheduler let go of it: the journal does too
- ``("erred", key, exception, traceback, blame)``   it failed for good (or was cancelled)
- ``("rerun", key)``                     ``client.retry``: failed no more, budget restored
- ``("retries", key, retries_left, retry_count)``   a retry spent
- ``("limit", key, rate, concurrency)``  a limit set by ``client.set_limit``

A task lives in the journal from acceptance until the scheduler forgets it, so a restart
re-creates every task some client (or fire-and-forget) still wants and the lineage they need.
Results are not kept: a worker that reconnects reports what it holds (``adopt``), the rest is
computed again. What was running runs again: at least once, as Celery's ``acks_late``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import FutureLostError
from ..protocol import messages as m
from .client_requests import apply_options, link_inputs
from . import coordination, periodic
from .gates import Limit
from .worker_reports import took_result
from .model import _EMPTY, TaskState, WorkerState, error

if TYPE_CHECKING:
    from .scheduler_state import SchedulerState

Record = tuple[Any, ...]


@dataclass
class SavedTask:
    spec: m.TaskSpec
    wants: tuple[str, ...]
    retries: tuple[int, int] | None = None      # (retries_left, retry_count) once one was spent
    erred: m.Erred | None = None


@dataclass
class Saved:
    """Everything a journal holds, decoded and checked before any of it is applied."""
    functions: list[tuple[str, bytes, str]] = field(default_factory=list)
    limits: list[m.SetLimit] = field(default_factory=list)
    tasks: list[SavedTask] = field(default_factory=list)   # in the order they were accepted
    periodics: list[tuple[m.Schedule, float]] = field(default_factory=list)   # (spec, next)
    runs: int = 0



def restore(s: SchedulerState, saved: Saved, now: float) -> set[str]:
    """Re-create what ``saved`` holds in a fresh state; returns the client ids that wanted
    tasks (they are expected back: the shell lets them go after a grace period)."""
    s.now = now
    s.out = []
    s._stimulus("restart")
    s.runs = max(s.runs, saved.runs)   # run ids never repeat across restarts
    for token, blob, owner in saved.functions:
        s.functions[token] = blob
        s.fn_refs.owners[token] = owner
    for lim in saved.limits:
        limit = s.limits.get(lim.key)
        if limit is None:
            limit = s.limits[lim.key] = Limit(lim.key)
        limit.set(lim.rate, lim.concurrency)
    clients: set[str] = set()
    pending: list[TaskState] = []
    for saved_task in saved.tasks:
        spec = saved_task.spec
        if spec.key in s.tasks:
            continue
        options = spec.options
        s.counter += 1
        prio = -(options.get("priority", 0) or 0) if options else 0
        fn = sys.intern(spec.fn)
        known = fn in s.functions
        if known:   # counted as on_submit does; a task whose function is gone names none
            s.fn_refs.uses[fn] = s.fn_refs.uses.get(fn, 0) + 1
        ts = TaskState(spec.key, fn if known else "", spec.args, spec.kwargs, options, prio,
                       s.counter)
        s.tasks[spec.key] = ts
        ts.who_wants = saved_task.wants
        clients.update(c for c in saved_task.wants if c[0] != "@")   # not pseudo-clients
        if options:
            apply_options(s, ts, options)
        if saved_task.retries is not None:
            ts.retries_left, ts.retry_count = saved_task.retries
        s._record(ts, "restored", None)
        missing = link_inputs(s, ts, spec.deps)
        ts.state = "waiting"
        if saved_task.erred is not None:
            e = saved_task.erred
            ts.state, ts.exception, ts.traceback, ts.blame = "erred", e.exception, \
                e.traceback, e.blame
        elif not known or missing is not None:
            why = f"its function {fn!r}" if not known else f"its input {missing!r}"
            s._set_erred(ts, error(FutureLostError, f"task {ts.key!r}: the scheduler restarted "
                                   f"from its journal without {why}"), None, ts.key)
        else:
            pending.append(ts)
    s.clients.update(clients)
    periodic.restore(s, saved.periodics)
    coordination.restore(s)
    for ts in pending:
        if ts.state == "waiting":
            s._become_ready_or_wait(ts)
    s.durable.placing = False   # until resume_placement: the workers' results come back first
    s.out = []
    return clients


def resume_placement(s: SchedulerState, now: float) -> list[tuple[str, m.Message]]:
    """Start placing tasks again (a moment after a restart)."""
    s.now = now
    out = s.out = []
    s.durable.placing = True
    s._fill_workers()
    s.out = []
    return out


def adopt(s: SchedulerState, ws: WorkerState, held: dict[str, int]) -> None:
    """A worker that (re)joins holds these results: known tasks not yet in memory take them
    (their work is not done again); the rest the worker may drop."""
    for key, nbytes in held.items():
        ts = s.tasks.get(key)
        if ts is None or not ts.fn or ts.state == "erred":
            s._free(ws.address, key)
            continue
        if ts.state == "memory":
            s._add_replica(ts, ws)
            continue
        if ts.processing_on is not None:   # started again elsewhere meanwhile: stopped there
            s._unassign(ts)
        # waiting, queued, delayed or released: done already (queues and timers skip it
        # lazily, as they skip a cancelled task)
        ts.waiting_on = _EMPTY
        took_result(s, ts, ws, nbytes, m.Done(key, False, None, nbytes, [ws.address]),
                    f"{ws.address} (held across a restart)")
