"""Workers leaving gracefully: a worker whose lifetime is up (a batch job near its walltime),
one a cluster scales away, or one a client retires.

A retiring worker gets no new work; the tasks queued on it and not started go elsewhere; what
it runs finishes there. Every result only it holds (or only retiring workers hold) is copied to
a running worker, the one holding the fewest bytes first (REPLICATE, answered by REPLICATED).
When nothing runs on it and no copy is outstanding, it is told to go (CLOSE): its connection
ends and ``remove_worker`` finds every result it held elsewhere. With no running worker left to
copy to, it goes anyway and what only it held is recomputed if it is needed again.

Pure and synchronous like the rest of the state machine; ``progress`` runs after every event
while some worker retires (a few checks per retiring worker, no scan of tasks until one has
finished what it runs).
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from ..protocol import messages as m
from .model import Retirement, TaskState, WorkerState

if TYPE_CHECKING:
    from .scheduler_state import SchedulerState


def retire(s: SchedulerState, addresses: list[str], reason: str) -> list[str]:
    """Start retiring the workers at ``addresses``; returns those not connected."""
    unknown = []
    starting = []
    for address in addresses:
        ws = s.workers.get(address)
        if ws is None:
            unknown.append(address)
        elif ws.retiring is None:
            ws.retiring = Retirement(reason)
            s.occupancy.changed(ws)
            starting.append(ws)
    for ws in starting:
        _move_unstarted(s, ws)
        _replan(s, ws.address)     # copies that were heading to it go elsewhere
    for ws in starting:
        _copy_results(s, ws)
    return unknown


def on_retire(s: SchedulerState, peer: str, msg: m.Retire) -> None:
    """The worker asks to leave (its lifetime is up)."""
    retire(s, [peer], msg.reason or "its lifetime is up")


def on_replicated(s: SchedulerState, peer: str, msg: m.Replicated) -> None:
    """``peer`` holds copies of ``msg.keys`` now (the source lacked ``msg.missing``)."""
    ws = s.workers.get(peer)
    if ws is None:
        return
    retiring = list(s.occupancy.retiring)
    for key in msg.keys:
        _copied(retiring, key, peer)
        ts = s.tasks.get(key)
        if ts is None or ts.state != "memory":   # released while it travelled
            s._free(peer, key)
        else:
            s._add_replica(ts, ws)
    for key in msg.missing:   # the source did not have it: lost with it, recomputed if needed
        _copied(retiring, key, peer)


def progress(s: SchedulerState) -> None:
    """After an event: tell each retiring worker that has finished its work and whose results
    are safe elsewhere to go."""
    for ws in list(s.occupancy.retiring):
        retirement = ws.retiring
        if retirement is None or retirement.closed or ws.processing or ws.seceded or \
                retirement.copying:
            continue
        if _copy_results(s, ws):    # results that ended here since it began retiring
            continue
        retirement.closed = True
        s.out.append((ws.address, m.Close(f"retired: {retirement.reason}")))


def worker_left(s: SchedulerState, address: str) -> None:
    """A worker left: copies it was making for retiring workers are made by another."""
    if s.occupancy.retiring:
        _replan(s, address)


def describe(ws: WorkerState) -> str:
    """For views: why it retires and how many results are still being copied."""
    r = ws.retiring
    if r is None:
        return ""
    copying = f", {len(r.copying)} results being copied" if r.copying else ""
    return f"retiring: {r.reason}{copying}"


# ---------------------------------------------------------------------- internals
def _move_unstarted(s: SchedulerState, ws: WorkerState) -> None:
    """Tasks queued on ``ws`` and not started go where they can run (FREE tells ``ws`` to
    drop them unstarted; a report of one it ran meanwhile is stale by its run id)."""
    queued = sorted((ts for ts in ws.processing if not ts.executing), key=_priority)
    for ts in queued:
        s._unassign(ts)
        s._record(ts, "retiring-worker", ws.address)
        ts.state = "waiting"
        s._become_ready_or_wait(ts)


def _copy_results(s: SchedulerState, ws: WorkerState) -> bool:
    """Ask running workers to copy the results that only retiring workers hold, from ``ws``;
    whether any copy was asked for."""
    retirement = ws.retiring
    assert retirement is not None
    copying = retirement.copying
    alone = [ts for ts in ws.has_what
             if ts.key not in copying and all(h.retiring is not None for h in ts.who_has)]
    if not alone:
        return False
    # least bytes held first; O(W log W) once per call, then O(log W) per result
    targets = [(t.nbytes, t.index, t) for t in s.workers.values() if t.retiring is None]
    if not targets:
        return False
    heapq.heapify(targets)
    plan: dict[str, list[str]] = {}
    for ts in sorted(alone, key=_priority):
        held, index, target = heapq.heappop(targets)
        heapq.heappush(targets, (held + ts.nbytes, index, target))
        plan.setdefault(target.address, []).append(ts.key)
        copying[ts.key] = target.address
        s._record(ts, "copy-from-retiring", (ws.address, target.address))
    s.out.extend((target, m.Replicate(ws.address, keys)) for target, keys in plan.items())
    return True


def _replan(s: SchedulerState, address: str) -> None:
    """Copies ``address`` was making (it left or retires) are asked of another worker."""
    for ws in list(s.occupancy.retiring):
        retirement = ws.retiring
        if retirement is None or retirement.closed or ws.address == address:
            continue
        dropped = [k for k, target in retirement.copying.items() if target == address]
        for key in dropped:
            del retirement.copying[key]
        if dropped:
            _copy_results(s, ws)


def _copied(retiring: list[WorkerState], key: str, target: str) -> None:
    for ws in retiring:
        r = ws.retiring
        if r is not None and r.copying.get(key) == target:
            del r.copying[key]


def _priority(ts: TaskState) -> tuple[float, int]:
    return ts.priority, ts.order
