"""What must hold between any two events, in both state machines: checkable at any time.

``check_scheduler(state)`` and ``check_worker(state)`` raise :class:`InvariantError` naming the
broken rule and the task (or worker) it was broken for; they change nothing. The pure tests call
them after every step (through ``nbcluster.testing.validate``), and the Scheduler and Worker
shells call them after every batch they handle when the environment sets
``NBCLUSTER_VALIDATE=1`` (the test suite does), so cluster tests check them too.

``check_scheduler_messages(state, out, sent)`` checks what one step sends: known peers only,
well-formed messages, and a worker never asked to run a function it was not sent (or was told
to forget since).

Pure, like the rest of the state layer: no I/O, no clock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ..errors import ProtocolError
from ..protocol import messages as m
from ..protocol.framing import decode, encode
from . import resources
from .model import FIRE_AND_FORGET, STEAL_LATENCY
from . import coordination

if TYPE_CHECKING:
    from .model import TaskState
    from .scheduler_state import SchedulerState
    from .worker_state import WorkerState, WorkerTask

Check = Callable[[Any], None]

__all__ = ["InvariantError", "Sampled", "check_scheduler", "check_scheduler_messages",
           "check_worker", "shell_check", "unchecked"]

SCHEDULER_TASK_STATES = frozenset(
    {"waiting", "delayed", "queued", "processing", "memory", "released", "erred"})
# dependents in these states still need their inputs' data
_PENDING = frozenset({"waiting", "queued", "processing", "delayed"})
WORKER_TASK_STATES = frozenset(
    {"new", "waiting", "ready", "executing", "memory", "fetch", "flight", "missing"})
_WORKER_PENDING = frozenset({"waiting", "ready", "executing"})


class InvariantError(AssertionError):
    """A state machine broke one of its rules: a bug in nbcluster, never the user's.

    ``rule`` says which rule, ``key`` the task (or worker address) it was broken for."""

    def __init__(self, rule: str, key: object = None, detail: str = "") -> None:
        self.rule, self.key = rule, key
        where = f" (task {key!r})" if key is not None else ""
        super().__init__(f"invariant broken: {rule}{where}{': ' + detail if detail else ''}")


SAMPLE_TASKS = 100   # a state of more tasks is checked after one batch in len(tasks) // this


def unchecked(state: object) -> None:
    """The check a shell calls when validation is off: nothing."""


class Sampled:
    """``check(state)`` after every batch while the state holds up to ``SAMPLE_TASKS`` tasks,
    and after one batch in ``len(tasks) // SAMPLE_TASKS`` beyond: a check costs about as much
    per batch on a large state as on a small one, so debug mode stays cheap under load (a rule
    broken and mended between two checks of a large state goes unseen)."""

    def __init__(self, check: Check) -> None:
        self.check = check
        self.skipped = 0

    def __call__(self, state: Any) -> None:
        n = len(state.tasks)
        if n > SAMPLE_TASKS:
            self.skipped += 1
            if self.skipped * SAMPLE_TASKS < n:
                return
        self.skipped = 0
        self.check(state)


def shell_check(check: Check, enabled: bool) -> Check:
    """What a shell calls after each batch it handles: ``check``, sampled on large states (see
    :class:`Sampled`), when ``enabled`` (NBCLUSTER_VALIDATE=1), else nothing."""
    return Sampled(check) if enabled else unchecked


def _fail(rule: str, key: object = None, detail: str = "") -> None:
    raise InvariantError(rule, key, detail)


def _filed(key: str, ts: Any, states: Any) -> str:
    """The state of a task of either machine, once it is known to be filed under its own
    key and live."""
    if ts.key != key:
        _fail("a task is filed under its own key", key, f"filed under {key!r}: {ts!r}")
    state: str = ts.state
    if state not in states:
        _fail("a known task is in a live state", key, state)
    return state


# ---------------------------------------------------------------------- scheduler
def check_scheduler(s: SchedulerState) -> None:
    """Every rule of a :class:`~nbcluster.state.scheduler_state.SchedulerState`."""
    tasks, workers = s.tasks, s.workers
    long = {p for p, d in s.prefix_durations.items() if d >= STEAL_LATENCY}
    if s.long_prefixes != long:
        _fail("the functions worth stealing from are those whose recent run time outweighs "
              "moving a task", None, f"{sorted(s.long_prefixes)} != {sorted(long)}")
    peers = set(s.clients)
    peers.add(FIRE_AND_FORGET)
    peers.update(p.wanter for p in s.durable.periodics.values())
    peers.update(coordination.wanters(s))
    coordination.check(s, _fail)
    in_heaps = {id(ts) for heap in s.queues.values() for _, _, ts in heap}
    in_heaps.update(id(ts) for ts in s.unrunnable)
    in_heaps.update(id(ts) for ts in resources.queued(s))   # waiting for resources
    limited: dict[Any, int] = {}
    uses: dict[str, int] = {}
    delayed = False
    for key, ts in tasks.items():
        state = _filed(key, ts, SCHEDULER_TASK_STATES)
        if not ts.who_wants and not ts.dependents:
            _fail("a task is kept only while a client wants it or a dependent needs it", key)
        for client in ts.who_wants:
            if client not in peers:
                _fail("only connected clients want tasks", key, f"wanted by {client!r}")
        if ts.fn:
            uses[ts.fn] = uses.get(ts.fn, 0) + 1
            if ts.fn not in s.functions:
                _fail("the function of a known task is kept", key, f"function {ts.fn!r}")
        if ts.run_id > s.runs:
            _fail("run ids come from the scheduler's counter", key, f"{ts.run_id} > {s.runs}")
        for d in ts.deps:
            if tasks.get(d.key) is not d:
                _fail("a task's inputs are known tasks", key, f"input {d!r} was forgotten")
            if ts not in d.dependents:
                _fail("inputs list their dependents", key, f"missing from {d.key!r}'s dependents")
        for d in ts.dependents:
            if tasks.get(d.key) is not d:
                _fail("a task's dependents are known tasks", key, f"dependent {d!r} was forgotten")
            if ts not in d.deps:
                _fail("dependents list their inputs", key, f"missing from {d.key!r}'s inputs")
        ws = ts.processing_on
        if state == "processing":
            if ws is None or workers.get(ws.address) is not ws or \
                    (ts in ws.processing) == (ts in ws.seceded):
                _fail("a processing task is on a connected worker that lists it", key, repr(ws))
            for d in ts.deps:
                if d.state != "memory" and not (ts.collect and d.state == "erred"):
                    _fail("a task runs only once its inputs are in memory", key,
                          f"input {d!r}")
            if ts.limited:
                limited[ts.limit] = limited.get(ts.limit, 0) + 1
        else:
            if ws is not None:
                _fail("only a processing task is assigned to a worker", key, f"{state} on {ws!r}")
            if ts.executing:
                _fail("only a processing task is executing", key, state)
            if ts.limited:
                _fail("only a processing task counts against its limit", key, state)
        if state == "memory":
            if not ts.who_has:
                _fail("a task in memory has a replica", key)
            if not _needed(ts):
                _fail("data is kept only while a client or a pending dependent needs it", key)
        elif ts.who_has:
            _fail("only a task in memory has replicas", key,
                  f"{state} on {sorted(w.address for w in ts.who_has)}")
        for shared in (ts.who_has, ts.waiting_on):   # see add_holder and wait_for
            if isinstance(shared, frozenset) and shared and shared is not next(iter(shared)).alone:
                _fail("a one-element frozen set is its member's own, shared", key)
        for holder in ts.who_has:
            if ts not in holder.has_what or workers.get(holder.address) is not holder:
                _fail("replicas are on connected workers that list them", key, repr(holder))
        if state == "waiting":
            expected = {d for d in ts.deps
                        if d.state != "memory" and not (ts.collect and d.state == "erred")}
            if not ts.waiting_on or ts.waiting_on != expected:
                _fail("a waiting task waits on exactly its inputs not yet in memory", key,
                      f"waits on {sorted(d.key for d in ts.waiting_on)}, "
                      f"not {sorted(d.key for d in expected)}")
            for d in ts.waiting_on:
                if d.state not in ("waiting", "queued", "processing", "delayed"):
                    _fail("a waiting task waits only on inputs on their way", key,
                          f"input {d!r}")
        elif state == "queued":
            for d in ts.deps:
                if d.state != "memory":
                    _fail("a queued task has its inputs in memory", key, f"input {d!r}")
            if id(ts) not in in_heaps and (ts.limit is None or
                                           all(t is not ts for _, _, t in ts.limit.held)):
                _fail("a queued task is in its queue, with the unrunnable ones or held by its "
                      "limit (else nothing ever starts it)", key)
        elif state == "delayed":
            delayed = True
    if delayed and not len(s.timers):
        _fail("a delayed task has a timer to start it")
    for limit in s.limits.values():
        if limit.running != limited.get(limit, 0):
            _fail("a limit counts the tasks running under it", None,
                  f"limit {limit.key!r} counts {limit.running}, {limited.get(limit, 0)} run")
        if limit.held and not s.limits_held:
            _fail("the scheduler knows when a limit holds tasks back (else they never start)",
                  None, f"limit {limit.key!r}")
    for p in s.durable.periodics.values():   # a schedule keeps its function between runs
        uses[p.spec.task.fn] = uses.get(p.spec.task.fn, 0) + 1
    _check_functions(s, uses)
    for rule, detail in resources.problems(s):
        _fail(rule, None, detail)
    for address, ws in workers.items():
        if ws.address != address:
            _fail("a worker is filed under its own address", address)
        for ts in [*ws.processing, *ws.seceded]:
            if ts.processing_on is not ws or tasks.get(ts.key) is not ts:
                _fail("a worker processes only known tasks assigned to it", ts.key,
                      f"on {address}")
        nbytes = 0
        for ts in ws.has_what:
            if ws not in ts.who_has or tasks.get(ts.key) is not ts:
                _fail("a worker holds only known tasks that list it", ts.key, f"on {address}")
            nbytes += ts.nbytes
        if ws.nbytes != nbytes:
            _fail("a worker's byte count is the sum of what it holds", None,
                  f"{address}: {ws.nbytes} counted, {nbytes} held")
        for token in ws.functions:
            if token not in s.functions:
                _fail("a worker was sent only functions the scheduler keeps", None,
                      f"{address} has {token!r}")
            if ws not in s.fn_refs.workers.get(token, ()):
                _fail("the workers a function was sent to are listed under its token", None,
                      f"{address} misses from those of {token!r}")


def _check_functions(s: SchedulerState, uses: dict[str, int]) -> None:
    """The functions' use counts and owners (see ``nbcluster/state/functions.py``)."""
    if s.fn_refs.uses != uses:
        wrong = {t: (s.fn_refs.uses.get(t), uses.get(t))
                 for t in set(uses) | set(s.fn_refs.uses) if s.fn_refs.uses.get(t) != uses.get(t)}
        _fail("a function's use count is the number of known tasks naming it", None,
              f"token: (counted, named) {wrong}")
    for token in s.functions:
        if token not in uses and s.fn_refs.owners.get(token) not in s.clients:
            _fail("a function is kept only while a known task names it or a connected client "
                  "holds it", None, repr(token))
    for token in s.fn_refs.owners:
        if token not in s.functions:
            _fail("a function a client holds is kept", None, repr(token))
    for token, held in s.fn_refs.workers.items():
        if token not in s.functions or not held:
            _fail("the workers of a function are listed while it is kept and sent", None,
                  repr(token))
        for ws in held:
            if s.workers.get(ws.address) is not ws or token not in ws.functions:
                _fail("a function's workers are connected workers that have it", None,
                      f"{token!r} on {ws.address}")
    if s.fn_refs.dropped:
        _fail("workers are told of dropped functions within the step that dropped them", None,
              repr(s.fn_refs.dropped))


def _needed(ts: TaskState) -> bool:
    if ts.who_wants:
        return True
    for d in ts.dependents:
        if d.state in _PENDING:
            return True
    return False


def check_scheduler_messages(s: SchedulerState, out: list[tuple[str, Any]],
                             sent: dict[str, set[str]] | None = None) -> None:
    """What one step of ``s`` sends (``out``): to known peers, well formed, and a COMPUTE only
    after its function and with holders for its inputs. ``sent`` maps each worker to the
    functions it was sent in earlier steps and is updated here (keep one per state, across
    steps); without it, the scheduler's own record of earlier steps is trusted."""
    # functions dropped in this step: a COMPUTE before the drop may name them
    dropped = {(peer, t) for peer, msg in out if type(msg) is m.ForgetFunctions
               for t in msg.tokens}
    if sent is None:
        now = {(peer, msg.token) for peer, msg in out if type(msg) is m.Function}
        sent = {a: {t for t in ws.functions if (a, t) not in now} |
                {t for p, t in dropped if p == a and (a, t) not in now}
                for a, ws in s.workers.items()}
    for gone in [p for p in sent if p not in s.workers]:
        del sent[gone]
    for peer, msg in out:
        if peer not in s.workers and peer not in s.clients:
            _fail("messages go to connected peers", None, f"to {peer!r}: {msg!r}")
        try:
            if type(msg) not in m.MESSAGES:
                raise ProtocolError(f"not a message record: {type(msg).__name__}")
            decode(encode([msg]))   # every field of the declared type
        except (ProtocolError, TypeError) as e:
            _fail("messages are well formed", None, f"to {peer!r}: {e}")
        if type(msg) is m.Function:
            sent.setdefault(peer, set()).add(msg.token)
        elif type(msg) is m.ForgetFunctions:
            ws = s.workers.get(peer)
            for token in msg.tokens:
                if ws is None or token in ws.functions:
                    _fail("a worker is told to forget only functions it is not counted on "
                          "having", None, f"{token!r} to {peer}")
                sent.get(peer, set()).discard(token)
        elif type(msg) is m.Free:
            if len(msg.runs) != len(msg.keys) or any(r > s.runs for r in msg.runs):
                _fail("a FREE has a run id issued so far for each key", None,
                      f"to {peer!r}: {msg!r}")
        elif type(msg) is m.Compute:
            key, fn = msg.key, msg.fn
            if fn not in s.functions and (peer, fn) not in dropped:
                _fail("a task runs a function the scheduler keeps", key, f"function {fn!r}")
            if fn not in sent.get(peer, ()):
                _fail("a worker is sent a function before a task that runs it", key,
                      f"function {fn!r} to {peer}")
            for dep, holders in msg.deps.items():
                if not holders:
                    _fail("every input of a task sent to run has a holder", key, f"input {dep!r}")
                for h in holders:
                    if h not in s.workers:
                        _fail("inputs are held by connected workers", key, f"{dep!r} on {h!r}")


# ---------------------------------------------------------------------- worker
def check_worker(w: WorkerState) -> None:
    """Every data-structure rule of a :class:`~nbcluster.state.worker_state.WorkerState`."""
    tasks = w.tasks
    executing: set[str] = set()
    ready: set[str] = set()
    fetch: set[str] = set()
    nbytes = spilled = 0
    for key, ts in tasks.items():
        state = _filed(key, ts, WORKER_TASK_STATES)
        if state == "executing":
            executing.add(key)
        elif state == "ready":
            ready.add(key)
        elif state == "fetch":
            fetch.add(key)
        elif state == "memory":
            nbytes += ts.nbytes
        if ts.spilled:
            if state != "memory":
                _fail("only a result in memory is spilled", key, state)
            spilled += ts.nbytes
        if (state in ("fetch", "missing") or (state == "memory" and ts.fetched)) \
                and not any(_worker_pending(tasks, d) for d in ts.dependents):
            _fail("an input fetched from a peer is kept only while a task here needs it",
                  key, state)
        if state == "waiting":
            if not ts.waiting_on or not ts.waiting_on <= set(ts.deps):
                _fail("a waiting task waits on some of its inputs", key,
                      f"waits on {sorted(ts.waiting_on)} of {sorted(ts.deps)}")
            for d in ts.waiting_on:
                dts = tasks.get(d)
                if dts is None or dts.state == "memory":
                    _fail("a waiting task waits only on inputs not here yet", key,
                          f"input {d!r} is {dts.state if dts else 'forgotten'}")
        if state in ("waiting", "ready"):
            for d in ts.deps:
                dts = tasks.get(d)
                if dts is None or key not in dts.dependents:
                    _fail("the inputs of a pending task list it as a dependent", key,
                          f"input {d!r}")
    if set(w.executing) | w.seceded != executing or w.executing & w.seceded:
        _fail("the executing set is the tasks in state executing", None,
              f"{sorted(w.executing)} != {sorted(executing)}")
    heap = {ts.key for ts in w.ready if tasks.get(ts.key) is ts and ts.state == "ready"}
    if heap != ready:
        _fail("every ready task is in the ready heap", None,
              f"heap {sorted(heap)}, ready {sorted(ready)}")
    queued = {k for keys in w.to_fetch.values() for k in keys
              if k in tasks and tasks[k].state == "fetch"}
    if queued != fetch:
        _fail("every input to fetch is queued for a peer", None,
              f"queued {sorted(queued)}, to fetch {sorted(fetch)}")
    for peer, n in w.in_flight.items():
        if n < 0:
            _fail("transfers in flight are not negative", None, f"{peer}: {n}")
    if w.nbytes != nbytes:
        _fail("the worker's byte count is the sum of its results", None,
              f"{w.nbytes} counted, {nbytes} held")
    if w.spilled != spilled:
        _fail("the spilled byte count is the sum of the spilled results", None,
              f"{w.spilled} counted, {spilled} spilled")
    for key in w.lru:
        used = tasks.get(key)
        if used is None or used.spilled:
            _fail("the spill order lists only results here in memory", key,
                  "forgotten" if used is None else "spilled")


def _worker_pending(tasks: dict[str, WorkerTask], key: str) -> bool:
    ts = tasks.get(key)
    return ts is not None and ts.state in _WORKER_PENDING
