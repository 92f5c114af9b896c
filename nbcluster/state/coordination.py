"""Cluster-wide coordination primitives in the scheduler's state: named queues, variables,
events, locks and semaphores, and the names published for other clients (issue 17).

Every operation is a COORDINATE message answered by a REPLY to its request id: at once, or
later when it can be (waiters are answered in the order they came), or when its timeout is
due (time is data: deadlines are kept here, ``wake`` answers them; 0 means now or never).
A failure replies ``[code, text]``, ``code`` naming what the client raises (``timeout``:
TimeoutError).

What a primitive holds is owned: a future in a queue, a variable or a publication is wanted
by the primitive's pseudo-client (``@queue:NAME`` ...) until the item is taken, replaced or
deleted, and by the client that takes it from then on; a lease is (client, lease id) and goes
when its client does, as do that client's waiting requests. A record with nothing in it is
dropped: a primitive costs nothing once unused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from ..protocol import messages as m
from .coord_core import (CoordError, cancel, drop, give, grant, hold_item, prune, refuse, reply,
                         serve_queue, take, wait)
from .coord_core import check, client_left, restarted, restore, wake, wanters  # noqa: F401
from .coord_records import EventRec, LeaseRec, QueueRec, VariableRec, Waiter, wanter

if TYPE_CHECKING:
    from .scheduler_state import SchedulerState

__all__ = ["on_coordinate", "wake", "client_left", "restarted", "restore", "check", "wanters"]


def on_coordinate(s: SchedulerState, peer: str, msg: m.Coordinate) -> None:
    if msg.action == "cancel":
        cancel(s, peer, msg.kind, msg.name, msg.n)
        return
    op = _OPS.get((msg.kind, msg.action))
    try:
        if op is None:
            raise CoordError("ValueError", f"a {msg.kind} has no operation {msg.action!r}")
        if not msg.name and msg.action != "list":
            raise CoordError("ValueError", f"a {msg.kind} needs a name (a non-empty string)")
        op(s, peer, msg)
    except CoordError as e:
        refuse(s, peer, msg.request_id, e.code, str(e))



# ---------------------------------------------------------------------- queue
def q_put(s: SchedulerState, peer: str, msg: m.Coordinate) -> None:
    c, name, maxsize = s.durable.coord, msg.name, msg.n
    rec = c.queues.get(name)
    if maxsize < 0:
        raise CoordError("ValueError", f"queue {name!r}: maxsize must be >= 0, got {maxsize}")
    if rec is not None and maxsize and rec.maxsize and rec.maxsize != maxsize:
        raise CoordError("ValueError", f"queue {name!r} has maxsize={rec.maxsize}; this "
                         f"handle says {maxsize}")
    item = hold_item(s, "queue", name, msg)
    if rec is None:
        rec = c.queues[name] = QueueRec(maxsize)
    elif maxsize and not rec.maxsize:   # made by a handle that gave none
        rec.maxsize = maxsize
    if not rec.putters and (not rec.maxsize or len(rec.items) < rec.maxsize):
        rec.items.append(item)
        reply(s, peer, msg.request_id, None)
        serve_queue(s, name, rec)
        prune(s, "queue", name)
    elif msg.timeout == 0:
        drop(s, wanter("queue", name), item)
        refuse(s, peer, msg.request_id, "timeout", f"queue {name!r} is full "
               f"({rec.maxsize} items)")
    else:
        wait(s, rec.putters, Waiter(peer, msg.request_id, "queue", name, "put", item=item),
             msg.timeout)


def q_get(s: SchedulerState, peer: str, msg: m.Coordinate) -> None:
    c, name, n = s.durable.coord, msg.name, msg.n
    rec = c.queues.get(name)
    if n < -1:
        raise CoordError("ValueError", f"queue {name!r}: batch must be True, False or a "
                         f"positive count, got {n}")
    if rec is not None and rec.maxsize and n > rec.maxsize:
        raise CoordError("ValueError", f"queue {name!r} holds at most {rec.maxsize} items: a "
                         f"batch of {n} would wait forever")
    if n == -1:                     # all there now, never waits
        reply(s, peer, msg.request_id, take(s, peer, name, rec, len(rec.items))
              if rec is not None and rec.items else [])
        if rec is not None:
            serve_queue(s, name, rec)
            prune(s, "queue", name)
        return
    if rec is None:
        rec = c.queues[name] = QueueRec(0)
    if not rec.getters and len(rec.items) >= max(1, n):
        reply(s, peer, msg.request_id, take(s, peer, name, rec, n))
        serve_queue(s, name, rec)
        prune(s, "queue", name)
    elif msg.timeout == 0:
        prune(s, "queue", name)
        refuse(s, peer, msg.request_id, "timeout", f"queue {name!r} is empty" if n <= 1 else
               f"queue {name!r} holds fewer than {n} items")
    else:
        wait(s, rec.getters, Waiter(peer, msg.request_id, "queue", name, "get", n=n),
             msg.timeout)


def q_size(s: SchedulerState, peer: str, msg: m.Coordinate) -> None:
    rec = s.durable.coord.queues.get(msg.name)
    reply(s, peer, msg.request_id, len(rec.items) if rec is not None else 0)


# ---------------------------------------------------------------------- variable
def v_set(s: SchedulerState, peer: str, msg: m.Coordinate) -> None:
    name = msg.name
    item = hold_item(s, "variable", name, msg)
    rec = s.durable.coord.variables.get(name)
    if rec is None:
        rec = s.durable.coord.variables[name] = VariableRec()
    old, rec.item = rec.item, item
    if old is not None:
        drop(s, wanter("variable", name), old)
    reply(s, peer, msg.request_id, None)
    while rec.waiters:
        w = rec.waiters.popleft()
        w.done = True
        reply(s, w.peer, w.rid, give(s, w.peer, item))


def v_get(s: SchedulerState, peer: str, msg: m.Coordinate) -> None:
    c, name = s.durable.coord, msg.name
    rec = c.variables.get(name)
    if rec is not None and rec.item is not None:
        reply(s, peer, msg.request_id, give(s, peer, rec.item))
    elif msg.timeout == 0:
        refuse(s, peer, msg.request_id, "timeout", f"variable {name!r} has no value")
    else:
        if rec is None:
            rec = c.variables[name] = VariableRec()
        wait(s, rec.waiters, Waiter(peer, msg.request_id, "variable", name, "get"),
             msg.timeout)


def v_delete(s: SchedulerState, peer: str, msg: m.Coordinate) -> None:
    rec = s.durable.coord.variables.get(msg.name)
    if rec is not None and rec.item is not None:
        old, rec.item = rec.item, None
        drop(s, wanter("variable", msg.name), old)
        prune(s, "variable", msg.name)
    reply(s, peer, msg.request_id, None)


# ---------------------------------------------------------------------- event
def e_set(s: SchedulerState, peer: str, msg: m.Coordinate) -> None:
    rec = s.durable.coord.events.get(msg.name)
    if rec is None:
        rec = s.durable.coord.events[msg.name] = EventRec()
    rec.is_set = True
    while rec.waiters:
        w = rec.waiters.popleft()
        w.done = True
        reply(s, w.peer, w.rid, True)
    reply(s, peer, msg.request_id, None)


def e_clear(s: SchedulerState, peer: str, msg: m.Coordinate) -> None:
    rec = s.durable.coord.events.get(msg.name)
    if rec is not None:
        rec.is_set = False
        prune(s, "event", msg.name)
    reply(s, peer, msg.request_id, None)


def e_is_set(s: SchedulerState, peer: str, msg: m.Coordinate) -> None:
    rec = s.durable.coord.events.get(msg.name)
    reply(s, peer, msg.request_id, rec is not None and rec.is_set)


def e_wait(s: SchedulerState, peer: str, msg: m.Coordinate) -> None:
    c, name = s.durable.coord, msg.name
    rec = c.events.get(name)
    if rec is not None and rec.is_set:
        reply(s, peer, msg.request_id, True)
    elif msg.timeout == 0:
        reply(s, peer, msg.request_id, False)
    else:
        if rec is None:
            rec = c.events[name] = EventRec()
        wait(s, rec.waiters, Waiter(peer, msg.request_id, "event", name, "wait"), msg.timeout)


# ---------------------------------------------------------------------- lock, semaphore
def l_acquire(s: SchedulerState, peer: str, msg: m.Coordinate) -> None:
    c, kind, name, lease = s.durable.coord, msg.kind, msg.name, msg.lease
    rec = c.leases.get((kind, name))
    if msg.n < 1:
        raise CoordError("ValueError", f"{kind} {name!r}: max_leases must be >= 1, got {msg.n}")
    if rec is not None and rec.max_leases != msg.n:
        raise CoordError("ValueError", f"semaphore {name!r} has max_leases={rec.max_leases}; "
                         f"this handle says {msg.n}")
    if not lease or (rec is not None and (peer, lease) in rec.holders):
        raise CoordError("ValueError", f"{kind} {name!r}: lease {lease!r} is empty or held")
    if rec is None:
        rec = c.leases[(kind, name)] = LeaseRec(msg.n)
    if not rec.waiters and len(rec.holders) < rec.max_leases:
        rec.holders[(peer, lease)] = None
        reply(s, peer, msg.request_id, True)
    elif msg.timeout == 0:
        reply(s, peer, msg.request_id, False)
    else:
        wait(s, rec.waiters, Waiter(peer, msg.request_id, kind, name, "acquire", lease=lease),
             msg.timeout)


def l_release(s: SchedulerState, peer: str, msg: m.Coordinate) -> None:
    kind, name = msg.kind, msg.name
    rec = s.durable.coord.leases.get((kind, name))
    if rec is None or (peer, msg.lease) not in rec.holders:
        raise CoordError("RuntimeError", f"{kind} {name!r} released but not held by this "
                         "handle (released already, or its client had disconnected)")
    del rec.holders[(peer, msg.lease)]
    grant(s, rec)
    prune(s, kind, name)
    reply(s, peer, msg.request_id, None)


def l_value(s: SchedulerState, peer: str, msg: m.Coordinate) -> None:
    rec = s.durable.coord.leases.get((msg.kind, msg.name))
    reply(s, peer, msg.request_id, len(rec.holders) if rec is not None else 0)


# ---------------------------------------------------------------------- published
def p_add(s: SchedulerState, peer: str, msg: m.Coordinate) -> None:
    if msg.name in s.durable.coord.published:
        raise CoordError("ValueError", f"{msg.name!r} is published already: unpublish it "
                         "first, or publish with overwrite=True")
    p_set(s, peer, msg)


def p_set(s: SchedulerState, peer: str, msg: m.Coordinate) -> None:
    published, name = s.durable.coord.published, msg.name
    item = hold_item(s, "published", name, msg)
    old = published.get(name)
    published[name] = item
    if old is not None:
        drop(s, wanter("published", name), old)
    reply(s, peer, msg.request_id, None)


def p_get(s: SchedulerState, peer: str, msg: m.Coordinate) -> None:
    item = s.durable.coord.published.get(msg.name)
    reply(s, peer, msg.request_id, None if item is None else give(s, peer, item))


def p_list(s: SchedulerState, peer: str, msg: m.Coordinate) -> None:
    reply(s, peer, msg.request_id, sorted(s.durable.coord.published))


def p_delete(s: SchedulerState, peer: str, msg: m.Coordinate) -> None:
    item = s.durable.coord.published.pop(msg.name, None)
    if item is None:
        raise CoordError("KeyError", f"nothing is published as {msg.name!r}")
    drop(s, wanter("published", msg.name), item)
    reply(s, peer, msg.request_id, None)


_OPS: dict[tuple[str, str], Callable[[SchedulerState, str, m.Coordinate], None]] = {
    ("queue", "put"): q_put, ("queue", "get"): q_get, ("queue", "qsize"): q_size,
    ("variable", "set"): v_set, ("variable", "get"): v_get, ("variable", "delete"): v_delete,
    ("event", "set"): e_set, ("event", "clear"): e_clear, ("event", "is_set"): e_is_set,
    ("event", "wait"): e_wait,
    ("lock", "acquire"): l_acquire, ("lock", "release"): l_release, ("lock", "value"): l_value,
    ("semaphore", "acquire"): l_acquire, ("semaphore", "release"): l_release,
    ("semaphore", "value"): l_value,
    ("published", "add"): p_add, ("published", "set"): p_set, ("published", "get"): p_get,
    ("published", "list"): p_list, ("published", "delete"): p_delete,
}
