"""Worker resources: a worker says what it has (``nbcluster worker --resources GPU=1``), a task
what it needs (``submit(..., resources={"GPU": 1})``). A task runs only on a worker whose free
amounts cover its request, and holds them from its assignment until it ends there (finishes,
fails, is cancelled, moved, stolen, or its worker dies): ``_unassign`` gives them back.

Tasks without resources never come here (``_become_ready`` sends only tasks whose options name
resources; ``_unassign`` checks the options once). Tasks with resources take this separate,
slower path: they are not in the queues' heaps but here, grouped by what they ask for (queue,
request, pinned workers), so that a freed GPU tries the head of each group, not every task.
A request that no connected worker could ever satisfy (none has that much in total) waits as
*impossible* and is reported as such (:func:`summary`), until a worker that has it joins.

Pure and synchronous like the rest of the state machine.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any

import msgspec

from ..protocol import messages as m
from ..protocol.task_records import Resources
from .model import Queued, TaskState, WorkerState

if TYPE_CHECKING:
    from .placement import Placement
    from .scheduler_state import SchedulerState

Need = dict[str, float]
Group = tuple[str, tuple[tuple[str, float], ...], tuple[str, ...] | None]   # queue, need, pinned
PLACED_PER_FILL = 1000    # resource tasks one event may start (the rest at the next one)


class ResourceBook:
    """The resource tasks waiting to start, and the workers that have resources (held by
    the Occupancy: the SchedulerState has no room for attributes of its own)."""

    __slots__ = ("waiting", "impossible", "workers", "freed")

    def __init__(self) -> None:
        # group -> heap of ready tasks some connected worker could run once amounts are free
        self.waiting: dict[Group, list[Queued]] = {}
        self.impossible: dict[TaskState, None] = {}    # ready; no worker has enough in total
        self.workers: dict[WorkerState, None] = {}      # those with resources
        self.freed = False        # amounts or workers came free since waiting tasks were tried


# ---------------------------------------------------------------------- workers
def attach(ws: WorkerState) -> None:
    """Set ``ws.resources`` from its identity (its HELLO); ProtocolError if malformed."""
    given = ws.identity.get("resources") if isinstance(ws.identity, dict) else None
    if not given:
        return
    try:
        have = msgspec.convert(given, Resources)
    except msgspec.ValidationError as e:
        raise m.ProtocolError(f"worker {ws.address}: bad resources {given!r}: {e}") from None
    ws.resources = {name: float(amount) for name, amount in have.items()}
    ws.free = dict(ws.resources)


def joined(s: SchedulerState, ws: WorkerState) -> None:
    """A worker with resources joined: impossible requests it can satisfy wait for it."""
    book = s.occupancy.resources
    book.freed = True
    if not book.impossible:
        return
    can: dict[Group, bool] = {}
    for ts in list(book.impossible):
        if ts.state != "queued" or s.tasks.get(ts.key) is not ts:
            del book.impossible[ts]     # cancelled, failed or forgotten meanwhile
            continue
        group = _group(ts)
        ok = can.get(group)
        if ok is None:
            ok = can[group] = _could_run(ws, group)
        if ok:
            del book.impossible[ts]
            s._record(ts, "resources-joined", ws.address)
            s._become_ready(ts)   # (its limit, if any, decides when it starts)


def left(s: SchedulerState, ws: WorkerState) -> None:
    """A worker with resources left: waiting requests no other worker can satisfy become
    impossible (its own tasks are rescheduled by remove_worker, which files them anew)."""
    book = s.occupancy.resources
    for group in list(book.waiting):
        if not any(_could_run(w, group) for w in book.workers):
            for _, _, ts in book.waiting.pop(group):
                if ts.state == "queued":
                    book.impossible[ts] = None


def forget_all(s: SchedulerState) -> None:
    """``client.restart()``: every task is gone, every amount free."""
    book = s.occupancy.resources
    book.waiting.clear()
    book.impossible.clear()
    for ws in book.workers:
        ws.free = dict(ws.resources or {})


# ---------------------------------------------------------------------- tasks
def ready(s: Placement, ts: TaskState) -> bool:
    """``ts`` (its options name resources) is ready: start it where they are free, or file
    it to wait. False: its rate/concurrency limit decides when it starts (and
    ``_pick_worker`` where)."""
    group = _group(ts)
    book = s.occupancy.resources
    book.impossible.pop(ts, None)     # (left there if it was cancelled, then retried)
    if not any(_could_run(w, group) for w in book.workers):
        ts.state = "queued"
        book.impossible[ts] = None
        s._record(ts, "no-worker-has-resources", describe(group[1]))
        return True
    if ts.limit is not None:
        return False
    if s.durable.placing:
        ws = pick(s, ts)
        if ws is not None:
            assign(s, ts, ws)
            return True
    ts.state = "queued"
    _push(book, group, ts)
    return True


def pick(s: Placement, ts: TaskState, idle_only: bool = False) -> WorkerState | None:
    """A worker of ``ts``'s queue (and of its pinned ones) whose free amounts cover its
    request: the one holding most of its input bytes, else the least loaded."""
    options = ts.options or {}
    need: Need = options["resources"]
    pinned = options.get("workers")
    best: WorkerState | None = None
    best_key: tuple[float, float, int, int] | None = None
    for ws in s.occupancy.resources.workers:
        if ws.retiring is not None or ws.paused or ts.queue not in ws.queues or \
                (pinned and ws.address not in pinned) or not fits(ws.free, need) or \
                (idle_only and len(ws.processing) >= ws.nthreads):
            continue
        held = sum(d.nbytes + 1 for d in ts.deps if ws in d.who_has) if ts.deps else 0
        key = (-held, len(ws.processing) / ws.nthreads, ws.assigned, ws.index)
        if best_key is None or key < best_key:
            best, best_key = ws, key
    return best


def assign(s: Placement, ts: TaskState, ws: WorkerState) -> None:
    """Run ``ts`` on ``ws``, holding its resources there (``_unassign`` gives them back)."""
    free = ws.free
    assert free is not None, (ts, ws)
    for name, amount in ts.options["resources"].items():   # type: ignore[index]
        free[name] -= amount
    s._assign(ts, ws)


def release(s: Placement, ws: WorkerState, need: Need) -> None:
    """``ts`` left ``ws`` (ended, moved, stolen, cancelled, or ``ws`` died): its resources are
    free again; waiting tasks are tried after this event."""
    free = ws.free
    if free is None:
        return
    for name, amount in need.items():
        free[name] += amount
    s.occupancy.resources.freed = True
    if s.limits:          # a limited task with resources may wait for these
        s.limits_held = True


def fill(s: Placement) -> None:
    """After an event that freed amounts (or brought workers): start waiting tasks, the head
    of each group first, in priority order, while some worker has room for one."""
    book = s.occupancy.resources
    book.freed = False
    waiting = book.waiting
    blocked: set[Group] = set()
    placed = 0
    while placed < PLACED_PER_FILL:
        best: Group | None = None
        for group, heap in list(waiting.items()):
            while heap and heap[0][2].state != "queued":   # placed or let go meanwhile
                heapq.heappop(heap)
            if not heap:
                del waiting[group]
            elif group not in blocked and (best is None or heap[0] < waiting[best][0]):
                best = group
        if best is None:
            return
        heap = waiting[best]
        ts = heap[0][2]
        if s._expired(ts):
            heapq.heappop(heap)
            continue
        ws = pick(s, ts)
        if ws is None:
            blocked.add(best)     # the same request fails for the rest of its group
            continue
        heapq.heappop(heap)
        assign(s, ts, ws)
        placed += 1
    book.freed = True             # more may fit: the next event goes on


def fits(have: Need | None, need: Need) -> bool:
    if have is None:
        return False
    for name, amount in need.items():
        if have.get(name, 0.0) < amount * (1 - 1e-9):   # float sums drift by an ulp or so
            return False
    return True


def describe(need: Any) -> str:
    """``GPU=2,MEM=16000000000`` for a request (a dict, or a group's sorted pairs)."""
    items = sorted(need.items()) if isinstance(need, dict) else need
    return ",".join(f"{name}={_amount(amount)}" for name, amount in items)


# ---------------------------------------------------------------------- views
def summary(s: SchedulerState) -> dict[str, Any]:
    """For ``scheduler_info``, snapshots and ``%cluster status``: tasks waiting for free
    amounts, those waiting for resources no worker has (by request), and a sentence."""
    book = s.occupancy.resources
    impossible: dict[str, int] = {}
    for ts in list(book.impossible):
        if ts.state != "queued" or s.tasks.get(ts.key) is not ts:
            del book.impossible[ts]
            continue
        text = describe(ts.options["resources"])   # type: ignore[index]
        impossible[text] = impossible.get(text, 0) + 1
    waiting = len({id(e[2]) for heap in book.waiting.values() for e in heap
                   if e[2].state == "queued"})
    n = sum(impossible.values())
    note = "" if not n else (f"{n} task{'s' if n > 1 else ''} wait{'' if n > 1 else 's'} for "
                             f"resources no worker has: {'; '.join(sorted(impossible))}")
    return {"waiting": waiting, "impossible": impossible, "note": note}


def problems(s: SchedulerState) -> list[tuple[str, str]]:
    """Broken rules of the books (for the invariant checks): (rule, detail)."""
    out = []
    for ws in s.workers.values():
        if (ws.resources is not None) != (ws in s.occupancy.resources.workers):
            out.append(("the workers with resources are those listed", ws.address))
        if ws.resources is None:
            if any(ts.options and "resources" in ts.options for ts in ws.processing):
                out.append(("a task with resources runs only where they are", ws.address))
            continue
        free = dict(ws.resources)
        for ts in ws.processing:
            for name, amount in (ts.options or {}).get("resources", {}).items():
                free[name] = free.get(name, 0.0) - amount
        if ws.free is None or any(abs(free[k] - ws.free.get(k, 0.0)) > 1e-6 * max(1.0, v)
                                  for k, v in ws.resources.items()) or \
                any(v < -1e-6 * max(1.0, ws.resources.get(k, 0.0)) for k, v in free.items()):
            out.append(("a worker's free resources are what it has less what its tasks hold",
                        f"{ws.address}: {ws.free} free, {free} by its tasks"))
    return out


def queued(s: SchedulerState) -> list[TaskState]:
    """The tasks filed here (for the invariant that a queued task is filed somewhere)."""
    book = s.occupancy.resources
    return [e[2] for heap in book.waiting.values() for e in heap] + list(book.impossible)


# ---------------------------------------------------------------------- internals
def _group(ts: TaskState) -> Group:
    options = ts.options or {}
    pinned = options.get("workers")
    return (ts.queue, tuple(sorted(options["resources"].items())),
            tuple(pinned) if pinned else None)


def _could_run(ws: WorkerState, group: Group) -> bool:
    """Whether ``ws`` has what ``group`` asks for in total (and takes its queue)."""
    queue, need, pinned = group
    have = ws.resources
    return have is not None and ws.retiring is None and queue in ws.queues and \
        (pinned is None or ws.address in pinned) and \
        all(have.get(name, 0.0) >= amount * (1 - 1e-9) for name, amount in need)


def _push(book: ResourceBook, group: Group, ts: TaskState) -> None:
    heap = book.waiting.get(group)
    if heap is None:
        heap = book.waiting[group] = []
    heapq.heappush(heap, ts.queued())
    book.freed = True


def _amount(x: float) -> str:
    return str(int(x)) if x == int(x) and abs(x) < 1e18 else f"{x:g}"
