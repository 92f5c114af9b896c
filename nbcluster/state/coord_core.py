"""The machinery of the coordination primitives (coordination.py has their operations):
replies, the futures items hold, waiters and their deadlines, and what happens to all of it
when a client leaves, the cluster restarts or the scheduler comes back from its journal."""

from __future__ import annotations

import heapq
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Union

from ..protocol import messages as m
from .coord_records import (Coordination, EventRec, Item, LeaseRec, QueueRec, VariableRec, Waiter,
                            wanter)
from .model import TaskState, unwant, want

if TYPE_CHECKING:
    from .scheduler_state import SchedulerState

Rec = Union[QueueRec, VariableRec, EventRec, LeaseRec]


class CoordError(Exception):
    """A request that cannot be done; ``code`` names what the client raises."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code


def reply(s: SchedulerState, peer: str, rid: int, result: Any) -> None:
    s.out.append((peer, m.Reply(rid, True, result)))


def refuse(s: SchedulerState, peer: str, rid: int, code: str, text: str) -> None:
    s.out.append((peer, m.Reply(rid, False, [code, text])))


# ---------------------------------------------------------------------- futures held
def hold_item(s: SchedulerState, kind: str, name: str, msg: m.Coordinate) -> Item:
    """The item a request brings; a future's task is wanted on the primitive's behalf."""
    if msg.key is None:
        return (None, msg.value)
    ts = s.tasks.get(msg.key)
    if ts is None:
        raise CoordError("FutureLostError", f"{kind} {name!r}: the scheduler does not know the "
                         f"future {msg.key!r} (released or cancelled before it got there)")
    hold(s, wanter(kind, name), ts)
    return (msg.key, None)


def hold(s: SchedulerState, who: str, ts: TaskState) -> None:
    refs = s.durable.coord.refs
    n = refs.get((who, ts.key), 0)
    refs[(who, ts.key)] = n + 1
    if not n:
        want(ts, who)
        s._journal_wants(ts)


def drop(s: SchedulerState, who: str, item: Item) -> None:
    """An item of ``who`` is gone: its future is wanted no more once no other item names it."""
    key = item[0]
    if key is None:
        return
    refs = s.durable.coord.refs
    n = refs.pop((who, key), 0) - 1
    if n > 0:
        refs[(who, key)] = n
        return
    ts = s.tasks.get(key)
    if ts is not None and who in ts.who_wants:
        unwant(ts, who)
        s._maybe_forget(ts)
        s._journal_wants(ts)


def give(s: SchedulerState, peer: str, item: Item, who: str | None = None) -> list[Any]:
    """``item`` as it travels to ``peer``, whose client wants its future from now on (before
    ``who``, if it took the item, lets go of it)."""
    key = item[0]
    if key is not None:
        ts = s.tasks.get(key)
        if ts is not None:
            want(ts, peer)
            s._journal_wants(ts)
        if who is not None:
            drop(s, who, item)
    return [key, item[1]]


# ---------------------------------------------------------------------- waiting
def wait(s: SchedulerState, where: deque[Waiter], w: Waiter, timeout: float | None) -> None:
    where.append(w)
    if timeout is None:
        return
    c = s.durable.coord
    c.seq += 1
    heapq.heappush(c.deadlines, (s.now + timeout, c.seq, w))
    if len(c.deadlines) > 1000 and not c.seq % 1000:   # answered ones pile up: shed them
        c.deadlines = [e for e in c.deadlines if not e[2].done]
        heapq.heapify(c.deadlines)


def wake(s: SchedulerState) -> None:
    """Answer the waiters whose time is up."""
    heap = s.durable.coord.deadlines
    while heap and heap[0][0] <= s.now:
        w = heapq.heappop(heap)[2]
        if w.done:
            continue
        withdraw(s, w)
        if w.op in ("wait", "acquire"):
            reply(s, w.peer, w.rid, False)
        else:
            what = "full" if w.op == "put" else "empty" if w.n <= 1 else f"short of {w.n} items"
            refuse(s, w.peer, w.rid, "timeout", f"{w.kind} {w.name!r} stayed {what}")


def record(c: Coordination, kind: str, name: str) -> Rec | None:
    if kind == "queue":
        return c.queues.get(name)
    if kind == "variable":
        return c.variables.get(name)
    if kind == "event":
        return c.events.get(name)
    return c.leases.get((kind, name))


def withdraw(s: SchedulerState, w: Waiter) -> None:
    """``w`` waits no more (timed out, cancelled): out of its record, its item let go."""
    w.done = True
    rec = record(s.durable.coord, w.kind, w.name)
    if rec is not None:
        where = (rec.putters if w.op == "put" else rec.getters) if isinstance(rec, QueueRec) \
            else rec.waiters
        if w in where:
            where.remove(w)
        if isinstance(rec, QueueRec):   # a getter that wanted more may have held others back
            serve_queue(s, w.name, rec)
    if w.item is not None:
        drop(s, wanter(w.kind, w.name), w.item)
    prune(s, w.kind, w.name)


def cancel(s: SchedulerState, peer: str, kind: str, name: str, rid: int) -> None:
    """The client gave up request ``rid`` (interrupted): it waits no more."""
    rec = record(s.durable.coord, kind, name)
    if rec is None:
        return
    lines = (rec.getters, rec.putters) if isinstance(rec, QueueRec) else (rec.waiters,)
    for line in lines:
        for w in line:
            if w.peer == peer and w.rid == rid:
                withdraw(s, w)
                return


def prune(s: SchedulerState, kind: str, name: str) -> None:
    """Drop a record with nothing in it (a new one is the same)."""
    c = s.durable.coord
    rec = record(c, kind, name)
    if isinstance(rec, QueueRec):
        if not (rec.items or rec.getters or rec.putters):
            del c.queues[name]
    elif isinstance(rec, VariableRec):
        if rec.item is None and not rec.waiters:
            del c.variables[name]
    elif isinstance(rec, EventRec):
        if not (rec.is_set or rec.waiters):
            del c.events[name]
    elif rec is not None and not (rec.holders or rec.waiters):
        del c.leases[(kind, name)]


def take(s: SchedulerState, peer: str, name: str, rec: QueueRec, n: int) -> Any:
    """``n`` items off the front for ``peer`` (0: one, not in a list)."""
    who = wanter("queue", name)
    if n == 0:
        return give(s, peer, rec.items.popleft(), who)
    return [give(s, peer, rec.items.popleft(), who) for _ in range(n)]


def serve_queue(s: SchedulerState, name: str, rec: QueueRec) -> None:
    """Let waiting puts in while there is room, and answer waiting gets while there are
    items, each in order, until neither moves."""
    items, getters, putters = rec.items, rec.getters, rec.putters
    moved = True
    while moved:
        moved = False
        while putters and (not rec.maxsize or len(items) < rec.maxsize):
            w = putters.popleft()
            w.done = True
            items.append(w.item)   # type: ignore[arg-type]   # a put's waiter has its item
            reply(s, w.peer, w.rid, None)
            moved = True
        while getters and len(items) >= max(1, getters[0].n):
            w = getters.popleft()
            w.done = True
            reply(s, w.peer, w.rid, take(s, w.peer, name, rec, w.n))
            moved = True




def grant(s: SchedulerState, rec: LeaseRec) -> None:
    """Give free leases to the waiters, in order."""
    while rec.waiters and len(rec.holders) < rec.max_leases:
        w = rec.waiters.popleft()
        w.done = True
        rec.holders[(w.peer, w.lease)] = None
        reply(s, w.peer, w.rid, True)


# ---------------------------------------------------------------------- lifecycle
def client_left(s: SchedulerState, peer: str) -> None:
    """A client (a notebook, or a worker process's) disconnected: its leases are released
    and its waiting requests dropped (a put it was waiting to make with them)."""
    c = s.durable.coord
    lines: list[deque[Waiter]] = [line for q in c.queues.values() for line in (q.getters,
                                                                               q.putters)]
    lines += [v.waiters for v in c.variables.values()]
    lines += [e.waiters for e in c.events.values()]
    for w in [w for line in lines for w in line if w.peer == peer]:
        withdraw(s, w)
    for (kind, name), lease in list(c.leases.items()):
        mine = [w for w in lease.waiters if w.peer == peer]
        for w in mine:
            w.done = True
            lease.waiters.remove(w)
        held = [h for h in lease.holders if h[0] == peer]
        for h in held:
            del lease.holders[h]
        if held:
            grant(s, lease)
        prune(s, kind, name)


def restarted(s: SchedulerState) -> None:
    """``client.restart()``: every task is forgotten, so are the items that were futures (a
    waiting put of one fails); values, events and leases stay."""
    c = s.durable.coord
    c.refs.clear()
    for name, q in list(c.queues.items()):
        q.items = deque(item for item in q.items if item[0] is None)
        for w in [w for w in q.putters if w.item is not None and w.item[0] is not None]:
            w.done = True
            q.putters.remove(w)
            refuse(s, w.peer, w.rid, "CancelledError", f"queue {name!r}: the cluster was "
                   "restarted (client.restart()) before this future could be put")
        serve_queue(s, name, q)
        prune(s, "queue", name)
    for name, v in list(c.variables.items()):
        if v.item is not None and v.item[0] is not None:
            v.item = None
            prune(s, "variable", name)
    for name in [n for n, item in c.published.items() if item[0] is not None]:
        del c.published[name]


def restore(s: SchedulerState) -> None:
    """After a restart from a journal: the futures published and in variables come back
    from the tasks' wanters (the journal keeps those); queues, values, events and leases do
    not, and the futures queues held are let go."""
    c, dropped = s.durable.coord, []
    for key, ts in s.tasks.items():
        for who in ts.who_wants:
            if who.startswith("@published:"):
                c.published[who[len("@published:"):]] = (key, None)
            elif who.startswith("@variable:"):
                c.variables.setdefault(who[len("@variable:"):], VariableRec()).item = (key, None)
            elif who.startswith("@queue:"):
                dropped.append((who, ts))
                continue
            else:
                continue
            c.refs[(who, key)] = 1
    for who, ts in dropped:
        unwant(ts, who)
        s._maybe_forget(ts)
        s._journal_wants(ts)


def wanters(s: SchedulerState) -> set[str]:
    """The pseudo-clients that want tasks on behalf of primitives."""
    return {who for who, _ in s.durable.coord.refs}


def check(s: SchedulerState, fail: Callable[..., None]) -> None:
    """Invariants: each future a primitive holds is wanted by it, as often as it is held."""
    c = s.durable.coord
    expected: dict[tuple[str, str], int] = {}

    def count(who: str, item: Item | None) -> None:
        if item is not None and item[0] is not None:
            expected[(who, item[0])] = expected.get((who, item[0]), 0) + 1

    for name, q in c.queues.items():
        for item in [*q.items, *(w.item for w in q.putters)]:
            count(wanter("queue", name), item)
    for name, v in c.variables.items():
        count(wanter("variable", name), v.item)
    for name, item in c.published.items():
        count(wanter("published", name), item)
    if expected != c.refs:
        fail("a primitive wants each future it holds, counted", None, f"{c.refs} != {expected}")
    for who, key in c.refs:
        ts = s.tasks.get(key)
        if ts is None or who not in ts.who_wants:
            fail("a future a primitive holds is a known task it wants", key, who)
