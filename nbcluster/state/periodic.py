"""Periodic tasks (``client.schedule``): every N seconds or at the times of a cron expression.

A schedule belongs to the cluster, not to the client that made it: it goes on after that
client leaves, and (with a journal) after a restart, until ``cancel``. Each run is an
ordinary task named ``<name>-<time in ms, hex>``, wanted by the schedule's own pseudo-client
``@periodic:<name>``, which keeps the results of the last ``keep`` finished runs. A run due
while the last one still runs is skipped (counted), unless ``overlap``. Runs missed while
nothing could run them (a scheduler down) are not made up: the next one is run once.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..protocol import messages as m
from . import functions
from .client_requests import on_submit
from .cron import Cron, parse_cron
from .model import FIRE_AND_FORGET, unwant, want

if TYPE_CHECKING:
    from .scheduler_state import SchedulerState

HISTORY = 20          # runs remembered per schedule (their keys, times and outcomes)
PREFIX = "@periodic:"


@dataclass
class Periodic:
    spec: m.Schedule
    cron: Cron | None
    next_at: float
    skipped: int = 0
    kept: deque[str] = field(default_factory=deque)             # runs it still wants
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY))

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def wanter(self) -> str:
        return PREFIX + self.spec.name

    def after(self, when: float, now: float) -> float:
        """The next run time after a run due at ``when``, never in the past."""
        if self.cron is not None:
            return self.cron.next_after(max(when, now))
        every = self.spec.every or 1.0
        nxt = when + every
        if nxt <= now:    # behind (the loop was busy, or the scheduler down): no burst
            missed = int((now - nxt) // every) + 1
            self.skipped += missed
            nxt += missed * every
        return nxt


def check(spec: m.Schedule) -> Cron | None:
    """The parsed cron, or ValueError saying what is wrong with the schedule."""
    if (spec.every is None) == (spec.cron is None):
        raise ValueError(f"schedule {spec.name!r}: give exactly one of every= and cron=")
    if spec.task.deps:
        raise ValueError(f"schedule {spec.name!r}: its arguments hold futures; a schedule "
                         "outlives them: pass values")
    return parse_cron(spec.cron) if spec.cron is not None else None


def on_schedule(s: SchedulerState, peer: str, msg: m.Schedule) -> None:
    try:
        cron = check(msg)
        if msg.name in s.durable.periodics:
            raise ValueError(f"a schedule named {msg.name!r} exists: cancel it first, or "
                             "choose another name")
        if msg.task.fn not in s.functions:
            raise ValueError(f"schedule {msg.name!r}: function {msg.task.fn!r} was not sent")
    except ValueError as e:
        s.out.append((peer, m.Reply(msg.request_id, False, str(e))))
        return
    start = msg.start
    if start is None:
        start = cron.next_after(s.now) if cron is not None else s.now
    add(s, msg, cron, start)
    if start <= s.now:
        fire_due(s)
    s.out.append((peer, m.Reply(msg.request_id, True, info(s, s.durable.periodics[msg.name]))))


def add(s: SchedulerState, msg: m.Schedule, cron: Cron | None, start: float) -> Periodic:
    uses = s.fn_refs.uses   # the function is kept between runs, whatever its client does
    uses[msg.task.fn] = uses.get(msg.task.fn, 0) + 1
    p = s.durable.periodics[msg.name] = Periodic(msg, cron, start)
    heapq.heappush(s.durable.periodic_heap, (start, msg.name))
    _journal(s, p)
    return p


def on_unschedule(s: SchedulerState, peer: str, msg: m.Unschedule) -> None:
    p = s.durable.periodics.pop(msg.name, None)
    if p is None:
        s.out.append((peer, m.Reply(msg.request_id, False,
                                    f"there is no schedule named {msg.name!r}")))
        return
    if s.durable.journal is not None:
        s.durable.journal.append(("unperiodic", msg.name))
    fn, uses = p.spec.task.fn, s.fn_refs.uses
    if uses[fn] > 1:
        uses[fn] -= 1
    else:
        functions.unused(s, fn)
    # its finished runs are let go; running ones end as usual (fire-and-forget), then go too
    for key in p.kept:
        ts = s.tasks.get(key)
        if ts is not None and p.wanter in ts.who_wants:
            if _running(s, key):
                want(ts, FIRE_AND_FORGET)
            unwant(ts, p.wanter)
            s._maybe_forget(ts)
            s._journal_wants(ts)
    s.out.append((peer, m.Reply(msg.request_id, True, None)))


def fire_due(s: SchedulerState) -> None:
    """Start the runs that are due (from ``wake``, and when a schedule starts now)."""
    heap, now = s.durable.periodic_heap, s.now
    while heap and heap[0][0] <= now:
        when, name = heapq.heappop(heap)
        p = s.durable.periodics.get(name)
        if p is None or p.next_at != when:
            continue       # cancelled, or replaced by a later entry
        _run(s, p, when)
        p.next_at = p.after(when, now)
        heapq.heappush(heap, (p.next_at, name))
        _journal(s, p)


def _run(s: SchedulerState, p: Periodic, when: float) -> None:
    if not p.spec.overlap and any(_running(s, key) for key in p.kept):
        p.skipped += 1
        p.history.append({"key": None, "at": when, "state": "skipped",
                          "error": "the last run was still running"})
        return
    key = f"{p.name}-{int(when * 1000):x}"
    while key in s.tasks:
        key += "+"
    task = p.spec.task
    on_submit(s, p.wanter, m.Submit([m.TaskSpec(key, task.fn, task.args, task.kwargs, [],
                                                task.options)]))
    p.kept.append(key)
    p.history.append({"key": key, "at": when, "state": None, "error": None})
    _let_go_of_old_runs(s, p)


def _running(s: SchedulerState, key: str) -> bool:
    ts = s.tasks.get(key)
    return ts is not None and ts.state not in ("memory", "erred")


def _let_go_of_old_runs(s: SchedulerState, p: Periodic) -> None:
    """Keep the results of the last ``keep`` finished runs (and every running one)."""
    finished = [key for key in p.kept if not _running(s, key)]
    for key in finished[:max(0, len(finished) - p.spec.keep)]:
        p.kept.remove(key)
        ts = s.tasks.get(key)
        if ts is None:
            continue
        for entry in p.history:
            if entry["key"] == key:
                entry["state"], entry["error"] = _outcome(ts)
        unwant(ts, p.wanter)
        s._maybe_forget(ts)
        s._journal_wants(ts)


def _outcome(ts: Any) -> tuple[str, str | None]:
    if ts.state == "erred":
        lines = (ts.traceback or "").strip().splitlines()
        return "erred", lines[-1] if lines else "failed"
    return ts.state, None


def info(s: SchedulerState, p: Periodic, runs: int = 3) -> dict[str, Any]:
    """What ``client.schedules()`` shows: the rule, the next run times, the recent runs."""
    upcoming, t = [p.next_at], p.next_at
    while len(upcoming) < runs:
        t = p.cron.next_after(t) if p.cron is not None else t + (p.spec.every or 1.0)
        upcoming.append(t)
    history = []
    for entry in p.history:
        entry = dict(entry)
        ts = s.tasks.get(entry["key"]) if entry["key"] else None
        if ts is not None:
            entry["state"], entry["error"] = _outcome(ts)
        history.append(entry)
    spec = p.spec
    return {"name": p.name, "every": spec.every, "cron": spec.cron, "overlap": spec.overlap,
            "keep": spec.keep, "next": upcoming, "skipped": p.skipped, "runs": history,
            "kept": list(p.kept)}


def summary(s: SchedulerState, p: Periodic) -> dict[str, Any]:
    """One line's worth (``%cluster status``, ``scheduler_info``): rule, next run, last run."""
    last = None
    for entry in reversed(p.history):
        ts = s.tasks.get(entry["key"]) if entry["key"] else None
        last = _outcome(ts)[0] if ts is not None else entry["state"]
        break
    rule = f"every {p.spec.every:g} s" if p.spec.every else f"cron {p.spec.cron}"
    return {"rule": rule, "next": p.next_at, "last": last, "skipped": p.skipped}


def _journal(s: SchedulerState, p: Periodic) -> None:
    if s.durable.journal is not None:
        s.durable.journal.append(("periodic", p.spec, p.next_at))


def restore(s: SchedulerState, saved: list[tuple[m.Schedule, float]]) -> None:
    """Schedules from a journal; their runs (tasks it kept) are known already."""
    for spec, next_at in saved:
        p = add(s, spec, parse_cron(spec.cron) if spec.cron else None, next_at)
        p.kept.extend(key for key, ts in s.tasks.items() if p.wanter in ts.who_wants)
