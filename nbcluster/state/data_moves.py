"""``client.replicate`` and ``client.rebalance`` in the scheduler's state: copies of results made
on purpose, and results moved so that workers hold about the same number of bytes.

Both plan at once and send each chosen worker a REPLICATE (copy these keys from that worker),
which it answers with REPLICATED once it holds them (as for a retiring worker's results). A
rebalance frees a key on its source only once its new holder has said so: no result is ever
without a holder while it moves. The client's request is answered (a REPLY, from here) when
every copy has been reported, or its worker left. Pure and synchronous like the rest of the
state machine; bound as ``SchedulerState.replicate`` and ``SchedulerState.rebalance``.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any

from ..protocol import messages as m
from . import retirement
from .model import Out, TaskState, WorkerState, drop_holder

if TYPE_CHECKING:
    from .scheduler_state import SchedulerState

TOLERANCE = 0.1   # rebalance: a worker within 10 % of the mean (bytes held) is balanced
LOOK_PAST = 16    # rebalance: recipients passed over (they hold the key) before a key is skipped


class Move:
    """One request under way: (key, worker copying it) -> the worker to free it on once
    copied (rebalance) or None (replicate)."""

    __slots__ = ("client", "request_id", "pending", "copied", "failed", "freed", "moved",
                 "missing")

    def __init__(self, client: str, request_id: int) -> None:
        self.client, self.request_id = client, request_id
        self.pending: dict[tuple[str, str], str | None] = {}
        self.copied = self.failed = self.freed = self.moved = 0
        self.missing: list[str] = []   # keys asked for that are not in memory

    def result(self) -> dict[str, Any]:
        return {"copied": self.copied, "failed": self.failed, "freed": self.freed,
                "moved_bytes": self.moved, "missing": self.missing}


def replicate(s: SchedulerState, client: str, request_id: int, keys: list[str],
              n: int | None, now: float = 0.0) -> Out:
    """Have each result of ``keys`` held by ``n`` running workers (None: all): copies go to
    those holding the fewest bytes; with ``n``, copies beyond ``n`` are freed."""
    s.now = now
    s._stimulus(f"replicate {len(keys)} results for {client}")
    out = s.out = []
    op = Move(client, request_id)
    targets = [ws for ws in s.workers.values() if ws.retiring is None and not ws.paused]
    want = len(targets) if n is None else min(n, len(targets))
    heap = [(ws.nbytes, ws.index, ws) for ws in targets]
    heapq.heapify(heap)
    plan: dict[tuple[str, str], list[str]] = {}
    for key in dict.fromkeys(keys):
        ts = s.tasks.get(key)
        if ts is None or ts.state != "memory":
            op.missing.append(key)
            continue
        if not want:
            continue
        on = [ws for ws in ts.who_has if ws.retiring is None and not ws.paused]
        if n is not None and len(on) > want:     # fewest bytes kept: free on the fullest
            for ws in sorted(on, key=_fullest)[: len(on) - want]:
                _drop(s, ts, ws)
                op.freed += 1
            continue
        source = min(on or ts.who_has, key=_fullest).address
        skipped: list[tuple[int, int, WorkerState]] = []
        chosen: list[tuple[int, int, WorkerState]] = []
        while heap and len(on) + len(chosen) < want:
            entry = heapq.heappop(heap)
            (skipped if entry[2] in ts.who_has else chosen).append(entry)
        for held, index, ws in chosen:
            plan.setdefault((ws.address, source), []).append(key)
            op.pending[(key, ws.address)] = None
            s._record(ts, "replicate", (source, ws.address))
            skipped.append((held + ts.nbytes, index, ws))
        for entry in skipped:
            heapq.heappush(heap, entry)
    _send(s, op, plan)
    s.out = []
    return out


def rebalance(s: SchedulerState, client: str, request_id: int, keys: list[str] | None,
              now: float = 0.0) -> Out:
    """Move results (of ``keys``, or all) from workers holding more bytes than the mean to
    those holding less, while a move brings both nearer to it, until each worker is within
    TOLERANCE of the mean or no result fits. Frees the source once the copy is reported."""
    s.now = now
    s._stimulus(f"rebalance for {client}")
    out = s.out = []
    op = Move(client, request_id)
    workers = [ws for ws in s.workers.values() if ws.retiring is None]
    allowed = None if keys is None else set(keys)
    if allowed is not None:
        op.missing = [k for k in allowed if k not in s.tasks or s.tasks[k].state != "memory"]
    plan: dict[tuple[str, str], list[str]] = {}
    if len(workers) > 1:
        held = {ws: ws.nbytes for ws in workers}
        mean = sum(held.values()) / len(workers)
        tolerance = max(TOLERANCE * mean, 1.0)
        heap = [(held[ws], ws.index, ws) for ws in workers if not ws.paused]
        heapq.heapify(heap)
        for source in sorted(workers, key=held.__getitem__, reverse=True):
            if held[source] <= mean + tolerance:
                break
            movable = sorted((ts for ts in source.has_what if _movable(ts, source, allowed)),
                             key=_biggest)
            for ts in movable:
                if held[source] <= mean + tolerance:
                    break
                target = _least(heap, held, ts, source)
                if target is None:
                    continue
                if held[target] + ts.nbytes > held[source] - ts.nbytes:
                    heapq.heappush(heap, (held[target], target.index, target))
                    continue         # it would overshoot: a smaller one may fit
                held[source] -= ts.nbytes
                held[target] += ts.nbytes
                heapq.heappush(heap, (held[target], target.index, target))
                plan.setdefault((target.address, source.address), []).append(ts.key)
                op.pending[(ts.key, target.address)] = source.address
                s._record(ts, "rebalance", (source.address, target.address))
    _send(s, op, plan)
    s.out = []
    return out


def on_replicated(s: SchedulerState, peer: str, msg: m.Replicated) -> None:
    """A worker holds copies (or could not get them): retiring workers' books first, then
    the requests under way; a rebalanced key is freed on its source now."""
    retirement.on_replicated(s, peer, msg)
    moves = s.occupancy.moves
    if not moves:
        return
    for key in msg.keys:
        for op in moves:
            source = op.pending.pop((key, peer), "")
            if source == "":
                continue
            op.copied += 1
            if source is not None:
                _freed_source(s, op, key, source, peer)
    for key in msg.missing:
        for op in moves:
            if op.pending.pop((key, peer), "") != "":
                op.failed += 1
    _answer(s)


def worker_left(s: SchedulerState, address: str) -> None:
    """Copies ``address`` was making will not be reported: they count as failed."""
    moves = s.occupancy.moves
    if not moves:
        return
    for op in moves:
        gone = [k for k in op.pending if k[1] == address]
        for k in gone:
            del op.pending[k]
        op.failed += len(gone)
    _answer(s)


def abandon(s: SchedulerState) -> None:
    """``client.restart()``: every result is gone; requests under way are answered."""
    for op in s.occupancy.moves:
        op.failed += len(op.pending)
        op.pending.clear()
    _answer(s)


# ---------------------------------------------------------------------- internals
def _send(s: SchedulerState, op: Move, plan: dict[tuple[str, str], list[str]]) -> None:
    s.out.extend((target, m.Replicate(source, keys)) for (target, source), keys in plan.items())
    s.occupancy.moves.append(op)
    _answer(s)


def _answer(s: SchedulerState) -> None:
    """Reply to the requests with nothing left to wait for (if their client is still here)."""
    moves = s.occupancy.moves
    done = [op for op in moves if not op.pending]
    if not done:
        return
    moves[:] = [op for op in moves if op.pending]
    for op in done:
        if op.client in s.clients:
            s.out.append((op.client, m.Reply(op.request_id, True, op.result())))


def _freed_source(s: SchedulerState, op: Move, key: str, source: str, target: str) -> None:
    ts = s.tasks.get(key)
    sws, tws = s.workers.get(source), s.workers.get(target)
    if ts is None or ts.state != "memory" or sws is None or tws is None or \
            sws not in ts.who_has or tws not in ts.who_has or sws is tws:
        return     # released, lost or moved meanwhile: nothing to free (or not safely)
    _drop(s, ts, sws)
    op.freed += 1
    op.moved += ts.nbytes


def _drop(s: SchedulerState, ts: TaskState, ws: WorkerState) -> None:
    """Free one copy of ``ts`` (others remain)."""
    drop_holder(ts, ws)
    ws.has_what.discard(ts)
    ws.nbytes -= ts.nbytes
    s._free(ws.address, ts.key)
    s._record(ts, "copy-freed", ws.address)


def _movable(ts: TaskState, source: WorkerState, allowed: set[str] | None) -> bool:
    """A result worth moving off ``source``: asked for, non-empty, and not an input of a task
    queued or running there (which would fetch it back)."""
    return ts.state == "memory" and ts.nbytes > 0 and (allowed is None or ts.key in allowed) \
        and not any(d.processing_on is source for d in ts.dependents)


def _least(heap: list[tuple[int, int, WorkerState]], held: dict[WorkerState, int],
           ts: TaskState, source: WorkerState) -> WorkerState | None:
    """The recipient holding the fewest bytes that lacks ``ts`` (popped: pushed back by the
    caller with its new count); entries with an outdated count are dropped."""
    passed: list[tuple[int, int, WorkerState]] = []
    found = None
    while heap and len(passed) < LOOK_PAST:
        count, index, ws = heapq.heappop(heap)
        if count != held[ws]:
            continue
        if ws is source or ws in ts.who_has:
            passed.append((count, index, ws))
            continue
        found = ws
        break
    for entry in passed:
        heapq.heappush(heap, entry)
    return found


def _fullest(ws: WorkerState) -> tuple[int, int]:
    return -ws.nbytes, ws.index


def _biggest(ts: TaskState) -> tuple[int, str]:
    return -ts.nbytes, ts.key
