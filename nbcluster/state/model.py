"""What the scheduler knows of each task and each worker (plain records, no behaviour)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from ..protocol import messages as m
from ..protocol.serialize import Serialized, dumps
from .coord_records import Coordination

if TYPE_CHECKING:
    from .gates import Limit
    from .periodic import Periodic

# A queue's heap entry: (minus the user's priority, submission order, task): smallest first.
# The task keeps the two numbers, not a tuple of them (56 bytes a task).
Queued = tuple[float, int, "TaskState"]
Out = list[tuple[str, m.Message]]   # what one step sends: (peer, message)

FIRE_AND_FORGET = "@fire-and-forget"   # a pseudo client that lets go once the task ends
DEFAULT_QUEUE = "default"
KILLED_WORKER_LIMIT = 3
QUEUED_WORK_SECONDS = 0.005   # aim to keep this much work queued on each thread
TASK_LOG_LENGTH = 10_000
STORY_LENGTH = 100_000         # transitions remembered for client.story (all tasks together)
MAX_WINDOW = 256               # tasks queued on a worker per thread, at most
HEARTBEAT_SECONDS = 1.0        # a worker's heartbeat interval in a cluster of up to ...
HEARTBEAT_WORKERS = 400        # ... this many workers; above, it grows with the count


def heartbeat_interval(workers: int) -> float:
    """Seconds between a worker's heartbeats in a cluster of ``workers``: in steps of half a
    second, so that the scheduler handles at most about HEARTBEAT_WORKERS a second."""
    steps = -(-2 * workers // HEARTBEAT_WORKERS)   # ceil, in half seconds
    return max(HEARTBEAT_SECONDS, steps / 2)


def merge_frees(out: Out) -> Out:
    """``out`` with each worker's FREEs merged (one message, however many keys), without
    changing what the order means: a FREE waits only past messages to its worker that do not
    name its keys, and goes out before a COMPUTE that names one (as its key or an input), so
    a key freed and then assigned again reaches the worker in that order, and before a
    FORGET-FUNCTIONS."""
    merged: Out = []
    waiting: dict[str, dict[str, int]] = {}    # worker -> {key: run} of FREEs not placed yet
    for peer, msg in out:
        if type(msg) is m.Free:
            runs = waiting.get(peer)
            if runs is None:
                runs = waiting[peer] = {}
            keys = msg.keys
            if len(keys) == 1:     # as the state sends them
                runs[keys[0]] = msg.runs[0]   # a later FREE of a key covers more runs
            else:
                runs.update(zip(keys, msg.runs))
            continue
        if type(msg) is m.Compute and peer in waiting:
            runs = waiting[peer]
            if msg.key in runs or (msg.deps and not runs.keys().isdisjoint(msg.deps)):
                del waiting[peer]
                merged.append((peer, m.Free(list(runs), list(runs.values()))))
        elif type(msg) is m.ForgetFunctions and peer in waiting:
            # the freed tasks go first: one sent to run but freed since may name a function
            # dropped with it, and must be stopped before its function goes
            runs = waiting.pop(peer)
            merged.append((peer, m.Free(list(runs), list(runs.values()))))
        merged.append((peer, msg))
    for peer, runs in waiting.items():
        merged.append((peer, m.Free(list(runs), list(runs.values()))))
    return merged


STEAL_LATENCY = 0.002          # seconds moving a queued task to another worker costs, besides
STEAL_BANDWIDTH = 1e9          # its inputs at this many bytes a second
# Shared by tasks until they need a set of their own (``own``); typed Any so that it may
# stand where a set is declared: nothing adds to it (it is a frozenset).
_EMPTY: Any = frozenset()


class BadBatch(m.ProtocolError):
    """A message in a batch was malformed; ``out`` holds what the earlier ones produced."""

    def __init__(self, message: str, out: list[tuple[str, m.Message]]) -> None:
        super().__init__(message)
        self.out = out


def error(cls: type[BaseException], message: str) -> Serialized:
    """An nbcluster error as it travels to clients (pickled, like a task's own exception)."""
    return dumps(cls(message))


class TaskState:
    # Sets start as the shared empty frozenset and become sets when first added to (see
    # ``own``): a pending task then costs a few hundred bytes, not a kilobyte of empty sets.
    __slots__ = (
        "key", "prefix", "state", "fn", "args", "kwargs", "options", "deps", "dependents",
        "waiting_on", "who_has", "nbytes", "processing_on", "executing", "who_wants",
        "exception", "traceback", "blame", "priority", "suspicious", "queue",
        "limit", "limited", "retries_left", "retry_count", "attempts", "collect", "run_id",
        "alone", "order",
    )

    def __init__(self, key: str, fn: str, args: Any, kwargs: Any,
                 options: dict[str, Any] | None, priority: float, order: int) -> None:
        self.key, self.state = key, "new"
        self.prefix = sys.intern(key.rsplit("-", 1)[0])   # shared by a function's tasks
        self.fn, self.args, self.kwargs, self.options = fn, args, kwargs, options
        self.deps: tuple[TaskState, ...] = ()
        self.dependents: set[TaskState] = _EMPTY
        self.waiting_on: set[TaskState] = _EMPTY
        self.who_has: set[WorkerState] = _EMPTY
        self.who_wants: tuple[str, ...] = ()   # client ids: usually one, a tuple is smallest
        self.nbytes = 0
        self.processing_on: WorkerState | None = None
        self.executing = False   # the worker it is on said STARTED
        self.exception: Serialized | None = None
        self.traceback: str | None = None
        self.blame: str | None = None    # the key whose failure this is
        self.priority = priority   # minus the user's: smaller runs first ...
        self.order = order         # ... then earlier submitted
        self.suspicious = 0
        self.queue = DEFAULT_QUEUE
        self.limit: Limit | None = None   # the Limit it runs under, if any
        self.limited = False     # counted as running by its Limit
        self.retries_left = 0
        self.retry_count = 0
        # (worker, start, duration, error text or None) of each run, once options ask for it
        self.attempts: list[tuple[str, float | None, float | None, str | None]] | None = None
        self.run_id = 0          # of its latest assignment: reports from older ones are stale
        self.collect = False     # inputs that fail arrive as their exceptions
        self.alone: Any = None   # frozenset((self,)) once made: see wait_for
        if options:
            self.queue = options.get("queue", DEFAULT_QUEUE)
            self.retries_left = options.get("retries", 0)
            self.collect = options.get("collect_errors", False)

    def __lt__(self, other: "TaskState") -> bool:
        return (self.priority, self.order) < (other.priority, other.order)

    def queued(self) -> Queued:
        """Its entry in a heap of queued tasks."""
        return (self.priority, self.order, self)

    def __repr__(self) -> str:
        return f"<Task {self.key!r} {self.state}>"


# One-client who_wants tuples, shared by every task that client alone wants (a tuple each
# would cost 48 bytes a task). Cleared when it grows past a bound: entries are only a cache.
_ALONE: dict[str, tuple[str]] = {}


def want(ts: TaskState, client: str) -> None:
    wants = ts.who_wants
    if not wants:
        alone = _ALONE.get(client)
        if alone is None:
            if len(_ALONE) >= 10_000:
                _ALONE.clear()
            alone = _ALONE[client] = (client,)
        ts.who_wants = alone
    elif client not in wants:
        ts.who_wants = wants + (client,)


def unwant(ts: TaskState, client: str) -> None:
    ts.who_wants = tuple(c for c in ts.who_wants if c != client)


def add_holder(ts: TaskState, ws: WorkerState) -> bool:
    """Record that ``ws`` holds ``ts``'s result; False if it was known. A task held by one
    worker shares that worker's one-element set (a set each would cost 216 bytes a task)."""
    has: Any = ts.who_has   # a set, or a shared frozenset
    if not has:
        ts.who_has = ws.alone
    elif ws in has:
        return False
    elif type(has) is frozenset:
        ts.who_has = {*has, ws}
    else:
        has.add(ws)
    return True


def drop_holder(ts: TaskState, ws: WorkerState) -> None:
    has: Any = ts.who_has   # a set, or a shared frozenset
    if type(has) is frozenset:   # ws.alone, or empty
        if ws in has:
            ts.who_has = _EMPTY
    else:
        has.discard(ws)


def wait_for(ts: TaskState, dts: TaskState) -> None:
    """Add ``dts`` to what ``ts`` waits on. Tasks that wait on one input share that input's
    one-element set (a set each would cost 216 bytes a waiting task)."""
    waits: Any = ts.waiting_on   # a set, or a shared frozenset
    if not waits:
        alone = dts.alone
        if alone is None:
            alone = dts.alone = frozenset((dts,))
        ts.waiting_on = alone
    elif dts in waits:
        return
    elif type(waits) is frozenset:
        ts.waiting_on = {*waits, dts}
    else:
        waits.add(dts)


def stop_waiting(ts: TaskState, dts: TaskState) -> bool:
    """Remove ``dts`` from what ``ts`` waits on; False if it was not there."""
    waits: Any = ts.waiting_on
    if dts not in waits:
        return False
    if type(waits) is frozenset:
        ts.waiting_on = _EMPTY
    else:
        waits.discard(dts)
    return True


def own(ts: TaskState, name: str) -> set[Any]:
    """The task's set ``name``, made its own (mutable) first if it is the shared empty one."""
    value: set[Any] = getattr(ts, name)
    if value is _EMPTY:
        value = set()
        setattr(ts, name, value)
    return value


class Durable:
    """What outlives a client or the scheduler process. One attribute of the SchedulerState,
    not four: past 30 attributes an instance loses CPython's shared-key dict, and every
    ``self.`` read in every rule gets slower (see FunctionRefs; tests/test_state_memory.py
    holds the count)."""

    __slots__ = ("journal", "placing", "periodics", "periodic_heap", "coord", "setups")

    def __init__(self) -> None:
        # changes a restart must know about, while a journal is kept (see state/journal.py)
        self.journal: list[tuple[Any, ...]] | None = None
        # False for a moment after a restart, while workers come back with the results they
        # hold: tasks started at once would be done twice (see journal.resume_placement)
        self.placing = True
        self.periodics: dict[str, Periodic] = {}       # client.schedule, by name
        self.periodic_heap: list[tuple[float, str]] = []   # (next run, name)
        # client.register_worker_setup / upload_file: name -> (kind, blob), in order
        self.setups: dict[str, tuple[m.SetupKind, bytes]] = {}
        self.coord = Coordination()   # Queue, Variable, Event, Lock, Semaphore, publish

    @property
    def timed(self) -> bool:
        """A periodic run or a coordination deadline is due at some time (wake then)."""
        return bool(self.periodic_heap or self.coord.deadlines)


class Retirement:
    """A worker leaving gracefully (see retirement.py): why, and its results being copied
    (key -> the worker copying it)."""
    __slots__ = ("reason", "copying", "closed")

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.copying: dict[str, str] = {}
        self.closed = False          # told to go (Close sent)


class WorkerState:
    __slots__ = ("address", "nthreads", "name", "processing", "has_what", "nbytes",
                 "functions", "identity", "metrics", "last_seen", "pinned", "queues",
                 "assigned", "paused", "memory_note", "last_words", "index", "version",
                 "alone", "retiring", "seceded", "resources", "free")

    def __init__(self, address: str, nthreads: int, name: str, identity: dict[str, Any]) -> None:
        self.address, self.nthreads, self.name, self.identity = address, nthreads, name, identity
        self.processing: set[TaskState] = set()
        self.has_what: set[TaskState] = set()
        self.functions: set[str] = set()
        self.metrics: dict[str, Any] = {}
        self.nbytes, self.last_seen, self.pinned = 0, 0.0, 0
        self.assigned = 0        # tasks ever sent here: spreads ties between idle workers
        self.paused = False      # memory above its pause threshold: no new work placed here
        self.memory_note = ""    # what it said when it paused (why it stays so, if it cannot spill)
        self.last_words = ""     # why it is about to exit, when it said so (STATUS)
        self.index = 0           # order of joining (Occupancy): ties go to the earliest
        self.version = 0         # bumped at every load change (Occupancy's lazy heaps)
        self.retiring: Retirement | None = None   # leaving gracefully: no new work
        # running, but seceded (gave up their thread): assigned here, not in processing, so
        # they count against no thread (see secession.py)
        self.seceded: set[TaskState] = set()
        # who_has of the tasks only this worker holds (see add_holder); typed Any so that it
        # may stand where a set is declared (nothing adds to it: it is a frozenset)
        self.alone: Any = frozenset((self,))
        queues = identity.get("queues") if isinstance(identity, dict) else None
        self.queues = frozenset(queues) if queues else frozenset((DEFAULT_QUEUE,))
        # what it has ({"GPU": 1}) and what of it no task holds (see resources.py); None: none
        self.resources: dict[str, float] | None = None
        self.free: dict[str, float] | None = None

    def __repr__(self) -> str:
        return f"<Worker {self.address} {len(self.processing)} processing>"
