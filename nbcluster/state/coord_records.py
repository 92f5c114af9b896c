"""The records of the coordination primitives (rules in coordination.py): plain data.

An item (of a queue, a variable or a publication) is ``(key, value)``: ``key`` names a
future (its task is wanted on the primitive's behalf, by the pseudo-client ``wanter``) and
``value`` is then None; otherwise ``key`` is None and ``value`` is the value as it travels
(plain, or Serialized: the scheduler never unpickles it).
"""

from __future__ import annotations

from collections import deque
from typing import Any

Item = tuple["str | None", Any]


def wanter(kind: str, name: str) -> str:
    """The pseudo-client that wants the futures a primitive holds (``@queue:jobs``)."""
    return f"@{kind}:{name}"


class Waiter:
    """A request not answered yet: who asked (``peer``, ``rid``), when it gives up, and what
    it needs (``n`` items, a ``lease``, or the ``item`` it puts)."""
    __slots__ = ("peer", "rid", "kind", "name", "op", "n", "lease", "item", "done")

    def __init__(self, peer: str, rid: int, kind: str, name: str, op: str, n: int = 0,
                 lease: str = "", item: Item | None = None) -> None:
        self.peer, self.rid, self.kind, self.name, self.op = peer, rid, kind, name, op
        self.n, self.lease, self.item = n, lease, item
        self.done = False       # answered or withdrawn: its deadline, when due, is skipped


class QueueRec:
    __slots__ = ("items", "maxsize", "getters", "putters")

    def __init__(self, maxsize: int) -> None:
        self.items: deque[Item] = deque()
        self.maxsize = maxsize
        self.getters: deque[Waiter] = deque()
        self.putters: deque[Waiter] = deque()    # full: each holds its item


class VariableRec:
    __slots__ = ("item", "waiters")

    def __init__(self) -> None:
        self.item: Item | None = None
        self.waiters: deque[Waiter] = deque()


class EventRec:
    __slots__ = ("is_set", "waiters")

    def __init__(self) -> None:
        self.is_set = False
        self.waiters: deque[Waiter] = deque()


class LeaseRec:
    """A Lock (max_leases 1) or a Semaphore: the leases held, as (peer, lease id)."""
    __slots__ = ("max_leases", "holders", "waiters")

    def __init__(self, max_leases: int) -> None:
        self.max_leases = max_leases
        self.holders: dict[tuple[str, str], None] = {}
        self.waiters: deque[Waiter] = deque()


class Coordination:
    """Every primitive by name, the futures they hold, and the deadlines of waiters. One
    attribute of Durable (the SchedulerState keeps to 30)."""
    __slots__ = ("queues", "variables", "events", "leases", "published", "refs", "deadlines",
                 "seq")

    def __init__(self) -> None:
        self.queues: dict[str, QueueRec] = {}
        self.variables: dict[str, VariableRec] = {}
        self.events: dict[str, EventRec] = {}
        self.leases: dict[tuple[str, str], LeaseRec] = {}     # (kind, name)
        self.published: dict[str, Item] = {}
        # (wanter, key) -> items naming the key: the wanter wants it while there are any
        self.refs: dict[tuple[str, str], int] = {}
        # heap of (deadline, seq, waiter); answered waiters stay until due or compacted
        self.deadlines: list[tuple[float, int, Waiter]] = []
        self.seq = 0

    def next_deadline(self) -> float | None:
        return self.deadlines[0][0] if self.deadlines else None
