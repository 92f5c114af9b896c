"""What the scheduler's state shows of itself (queues, limits, counts, attempts, work left):
read-only views, bound as methods of SchedulerState (written here to keep it small)."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .scheduler_state import SchedulerState


def queues_info(s: SchedulerState) -> dict[str, dict[str, Any]]:
    """Per queue: tasks waiting in it, tasks running from it, workers subscribed."""
    info: dict[str, dict[str, Any]] = {}
    names = set(s.queues) | {q for w in s.workers.values() for q in w.queues}
    for name in sorted(names):
        info[name] = {"queued": 0, "processing": 0, "workers": sorted(
            w.address for w in s.workers.values() if name in w.queues)}
    for ts in s.tasks.values():
        if ts.state in ("queued", "processing", "delayed") and ts.queue in info:
            info[ts.queue]["queued" if ts.state != "processing" else "processing"] += 1
    return info


def limits_info(s: SchedulerState) -> dict[str, dict[str, Any]]:
    return {key: limit.describe() for key, limit in s.limits.items()}


def known_queues(s: SchedulerState) -> set[str]:
    return set(s.queues) | {q for w in s.workers.values() for q in w.queues}


def attempts(s: SchedulerState, key: str) -> list[list[Any]]:
    ts = s.tasks.get(key)
    return [list(a) for a in (ts.attempts or ())] if ts is not None else []

def counts_by_state(s: SchedulerState) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for ts in s.tasks.values():
        out[ts.state] += 1
    return dict(out)


def unfinished_work(s: SchedulerState) -> float:
    """Seconds of work not yet done: each waiting or running task at the recent run time
    of its function (the overall average for functions not seen yet)."""
    durations, default = s.prefix_durations, s.avg_duration
    return sum(durations.get(ts.prefix, default) for ts in s.tasks.values()
               if ts.state in ("queued", "processing", "waiting"))
