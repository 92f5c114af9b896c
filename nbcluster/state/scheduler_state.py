"""The scheduler's decisions: a pure, synchronous state machine.

``SchedulerState.handle(peer, batch, now)`` takes a batch of messages that arrived from one peer
(a client id or a worker address) and returns the messages to send, as ``(peer, message)``
pairs. It does no I/O and reads no clock: time arrives as ``now``.

Task states::

    waiting -> (delayed) -> queued -> processing -> memory -> released -> forgotten
                                                \\-> erred       (data freed, lineage kept)

``waiting``: some dependency is not in memory. ``delayed``: countdown, eta or retry back-off.
``queued``: ready, waiting for a worker slot in its queue, or for its rate/concurrency limit.
A task stays known while a client wants it or a dependent still needs it (lineage), so results
lost with a worker can be recomputed.
"""

from __future__ import annotations

import random
from collections import defaultdict, deque
from typing import Any, Callable

from ..errors import KilledWorkerError
from ..protocol import messages as m
from .gates import Limit, Timers
from .occupancy import Occupancy
from .model import (DEFAULT_QUEUE, FIRE_AND_FORGET, HEARTBEAT_SECONDS, KILLED_WORKER_LIMIT,
                    STORY_LENGTH, TASK_LOG_LENGTH, BadBatch, Durable, TaskState, WorkerState, error,
                    Out, Queued, drop_holder, heartbeat_interval, unwant)
from . import coordination, data_moves, journal, periodic, resources, retirement, secession, views
from .restart import restart as restart_all
from . import client_requests as requests
from . import functions
from .functions import FunctionRefs
from . import worker_reports as reports
from .transitions import Transitions

__all__ = ["SchedulerState", "TaskState", "WorkerState", "BadBatch", "FIRE_AND_FORGET"]


class SchedulerState(Transitions):
    """Tasks, workers and clients, and the rules that move tasks between states."""

    def __init__(self) -> None:
        # At most 30 attributes: past that CPython stops sharing an instance's keys, and every
        # ``self.x`` of every rule gets slower (5 % a task, measured). Group new ones.
        self.tasks: dict[str, TaskState] = {}
        self.workers: dict[str, WorkerState] = {}
        self.occupancy = Occupancy()                # which workers have room (O(log W))
        self.clients: set[str] = set()
        # pickled functions by token, kept while their client holds them or a known task
        # names them (see functions.py)
        self.functions: dict[str, bytes] = {}
        self.durable = Durable()   # journal records, placement after a restart, schedules
        self.fn_refs = FunctionRefs()
        self.queues: dict[str, list[Queued]] = {DEFAULT_QUEUE: []}   # heaps
        self.unrunnable: list[TaskState] = []     # queued, pinned to workers not connected
        self.limits: dict[str, Limit] = {}        # limit key -> rate/concurrency budget
        self.limits_held = False                  # some limit holds tasks back
        self.timers = Timers()                    # countdown, eta, retry back-off, expiry
        self.rng = random.Random(0)               # retry jitter (seeded: replayable)
        self.counter = 0
        self.runs = 0                             # assignments ever made: run ids
        self.avg_duration = 0.001
        self.counts: dict[str, int] = defaultdict(int)   # finished / erred totals by prefix
        self.prefix_durations: dict[str, float] = {}      # recent run time, by function
        # functions whose recent run time outweighs moving a task (STEAL_LATENCY): while there
        # are none (and the average is below it too), no queued task is worth stealing
        self.long_prefixes: set[str] = set()
        self.heartbeat = HEARTBEAT_SECONDS          # what workers were told (Settings)
        self.out: Out = []
        self.now = 0.0
        # What happened to each task, why (the stimulus: which batch of which peer, or a
        # timer, a worker leaving...) and when: bounded over all tasks, for client.story.
        self.record_stories = True
        self.stories: deque[tuple[str, str, Any, str, float]] = deque(maxlen=STORY_LENGTH)
        self.stimulus = ""
        self.stimuli = 0
        # (key, worker, start, stop, ok) of recent tasks, for observers such as the dashboard
        self.task_log: deque[tuple[str, str, float, float, bool]] = deque(maxlen=TASK_LOG_LENGTH)
        self.task_log_total = 0       # entries ever appended: observers keep a cursor
        # (key, from worker, to worker, start, stop, nbytes) of recent worker-to-worker copies
        self.transfer_log: deque[tuple[str, str, str, float, float, int]] = deque(
            maxlen=TASK_LOG_LENGTH)
        self.transfer_log_total = 0

    # ------------------------------------------------------------------ entry points
    def handle(self, peer: str, batch: list[m.Message], now: float) -> Out:
        """Apply a batch of messages from ``peer``; return ``[(peer, message), ...]`` to send."""
        self._check_batch(peer, batch)   # a message that cannot apply is refused before any is
        self.now = now
        self._stimulus(peer)
        out = self.out = []
        handlers = self._handlers
        try:
            for msg in batch:
                handlers[type(msg)](self, peer, msg)
        except Exception as e:
            # What the messages before the bad one decided must still go out, or other
            # peers would wait forever for it; the shell closes the offending connection.
            self._fill_workers()
            functions.send_forgets(self)
            self.out = []
            raise BadBatch(f"bad message from {peer}: {e!r}", out) from e
        self._fill_workers()
        if self.fn_refs.dropped:   # (the check inline: once per batch)
            functions.send_forgets(self)
        if self.occupancy.retiring:
            retirement.progress(self)
        self.out = []
        return out

    def _check_batch(self, peer: str, batch: list[m.Message]) -> None:
        """Raise ProtocolError unless every message in ``batch`` can be applied (decoding
        checked the types of their fields already)."""
        role = "worker" if peer in self.workers else "client" if peer in self.clients else None
        accepted = m.TO_SCHEDULER[role] if role else self._handlers
        defined: set[str] = set()   # functions sent earlier in this batch
        for msg in batch:
            kind = type(msg)
            if kind not in accepted:
                raise m.ProtocolError(f"{getattr(kind, '__name__', kind)} is not accepted from "
                                      f"{role or 'peer'} {peer!r} by the scheduler's state "
                                      "(requests go to its shell)")
            if kind is m.Function:
                defined.add(msg.token)   # type: ignore[attr-defined]
            elif kind is m.Submit:
                for spec in msg.tasks:   # type: ignore[attr-defined]
                    m.check_task(spec)
                    fn = spec.fn
                    if fn not in self.functions and fn not in defined and \
                            spec.key not in self.tasks:
                        raise m.ProtocolError(f"task {spec.key!r} names unknown function {fn!r}")

    def add_client(self, client_id: str) -> None:
        self.clients.add(client_id)

    def remove_client(self, client_id: str, now: float = 0.0) -> Out:
        self.now = now
        self._stimulus(f"{client_id} left")
        out = self.out = []
        self.clients.discard(client_id)
        for ts in [ts for ts in self.tasks.values() if client_id in ts.who_wants]:
            unwant(ts, client_id)   # (a non-empty who_wants is the task's own set)
            self._maybe_forget(ts)
            self._journal_wants(ts)
        functions.client_left(self, client_id)
        coordination.client_left(self, client_id)
        self._fill_workers()
        functions.send_forgets(self)
        if self.occupancy.retiring:
            retirement.progress(self)
        self.out = []
        return out

    def add_worker(self, address: str, nthreads: int, name: str, identity: dict[str, Any],
                   now: float = 0.0, held: dict[str, int] | None = None) -> Out:
        """A worker joined; ``held``: results it holds already (rejoining after a restart)."""
        self.now = now
        self._stimulus(f"{address} joined")
        out = self.out = []
        if address in self.workers:
            raise ValueError(f"worker {address} is already registered")
        ws = WorkerState(address, max(1, int(nthreads)), name, identity)
        resources.attach(ws)   # (raises ProtocolError before anything changed, if malformed)
        ws.last_seen = now
        self.workers[address] = ws
        self.occupancy.add(ws)
        if self.durable.setups:   # set up before it is given any task
            secession.joined(self, ws)
        if ws.resources is not None:
            resources.joined(self, ws)
        if not self._set_heartbeat() and self.heartbeat != HEARTBEAT_SECONDS:
            out.append((address, m.Settings(self.heartbeat)))   # the newcomer learns it
        if held:
            journal.adopt(self, ws, held)
        pinned, self.unrunnable = self.unrunnable, []
        for ts in dict.fromkeys(pinned):
            if ts.state == "queued":
                self._become_ready(ts)   # back to unrunnable unless one of its workers is here
        for pws in list(self.occupancy.paused):   # what waits on paused workers can go here
            reports.move_queued(self, pws)
        self._fill_workers()
        functions.send_forgets(self)
        self.out = []
        return out

    def remove_worker(self, address: str, now: float = 0.0) -> Out:
        """A worker left or died: reschedule its tasks, recompute what only it held."""
        self.now = now
        self._stimulus(f"{address} left")
        out = self.out = []
        ws = self.workers.pop(address, None)
        if ws is None:
            return out
        self.occupancy.remove(ws)
        if ws.resources is not None:
            resources.left(self, ws)
        functions.worker_left(self, ws)
        self._set_heartbeat()
        lost = []
        for ts in ws.has_what:
            drop_holder(ts, ws)
            if not ts.who_has and ts.state == "memory":
                # Marked before its dependents are rescheduled below, so that they wait for a
                # recompute instead of being sent to fetch it from nobody.
                ts.state = "released"
                lost.append(ts)
        ws.has_what, ws.nbytes = set(), 0
        for ts in [*ws.processing, *ws.seceded]:
            executing = ts.executing
            self._unassign(ts, free=False)
            if executing:
                died = f"the worker {address} died" + (f": {ws.last_words}" if ws.last_words else "")
                self._attempt(ts, address, None, None, died)
                ts.suspicious += 1
                if ts.retries_left > 0 and ts.suspicious < KILLED_WORKER_LIMIT:
                    ts.retries_left -= 1    # a death is a failed attempt of what it ran
                    self._journal_retries(ts)
                if ts.suspicious >= KILLED_WORKER_LIMIT:
                    self._record(ts, "killed-worker", address)
                    last = (f" The last one said: {ws.last_words}." if ws.last_words else
                            " Look for a crash (memory, segfault, os._exit) in that function.")
                    self._set_erred(ts, error(KilledWorkerError, f"task {ts.key!r} was running "
                        f"on {ts.suspicious} workers that died; it is not retried again.{last}"),
                        None, ts.key)
                    continue
            self._record(ts, "rescheduled", address)
            ts.state = "waiting"
            self._become_ready_or_wait(ts)
        for ts in lost:
            self._lost_data(ts)
        retirement.worker_left(self, address)
        data_moves.worker_left(self, address)
        self._fill_workers()
        functions.send_forgets(self)
        if self.occupancy.retiring:
            retirement.progress(self)
        self.out = []
        return out

    def retire_workers(self, addresses: list[str], reason: str, now: float = 0.0) -> Out:
        """Retire workers gracefully (see retirement.py); unknown addresses raise KeyError."""
        unknown = [a for a in addresses if a not in self.workers]
        if unknown:
            raise KeyError(f"no worker {', '.join(map(repr, unknown))} is connected")
        self.now = now
        self._stimulus(f"retire {len(addresses)} workers")
        out = self.out = []
        retirement.retire(self, addresses, reason)
        self._fill_workers()
        retirement.progress(self)
        self.out = []
        return out

    # ------------------------------------------------------------------ task options
    def _attempt(self, ts: TaskState, worker: str, start: float | None, duration: float | None,
                 err: str | None) -> None:
        if ts.attempts is None:
            ts.attempts = []
        ts.attempts.append((worker, start, duration, err))

    _handlers: dict[type, Callable[[Any, str, Any], None]] = {
        m.Function: functions.on_function, m.ReleaseFunctions: functions.on_release_functions,
        m.Submit: requests.on_submit,
        m.Release: requests.on_release, m.Want: requests.on_want, m.Cancel: requests.on_cancel,
        m.RetryTasks: requests.on_retry, m.FireAndForget: requests.on_fire_and_forget,
        m.UpdateData: requests.on_update_data, m.SetLimit: requests.on_set_limit,
        m.Started: reports.on_started, m.Finished: reports.on_finished,
        m.Failed: reports.on_failed, m.Missing: reports.on_missing,
        m.Heartbeat: reports.on_heartbeat, m.Output: reports.on_output,
        m.Transfers: reports.on_transfers, m.Status: reports.on_status,
        m.MemoryLimit: reports.on_memory_limit,
        m.Schedule: periodic.on_schedule, m.Unschedule: periodic.on_unschedule,
        m.Retire: retirement.on_retire, m.Replicated: data_moves.on_replicated,
        m.Coordinate: coordination.on_coordinate,
        m.Seceded: secession.on_seceded,
    }

    def _set_heartbeat(self) -> bool:
        """Tell every worker a new heartbeat interval if the cluster's size calls for one."""
        interval = heartbeat_interval(len(self.workers))
        if interval == self.heartbeat:
            return False
        self.heartbeat = interval
        settings = m.Settings(interval)
        self.out.extend((address, settings) for address in self.workers)
        return True

    # ------------------------------------------------------------------ helpers
    def _stimulus(self, source: str) -> None:
        """Name the event being handled (one id per incoming batch), for the stories."""
        self.stimuli += 1
        self.stimulus = f"{source}#{self.stimuli}"

    def story(self, key: str) -> list[list[Any]]:
        """``[time, what, where, stimulus]`` of each recorded transition of ``key`` (also after
        it was forgotten, as long as the bounded record still holds it)."""
        return [[now, what, where, stimulus] for k, what, where, stimulus, now in self.stories
                if k == key]

    # ------------------------------------------------------------------ time
    def next_wakeup(self) -> float | None:
        """When :meth:`wake` should be called next (a timer or a rate limit is due)."""
        times = [t for t in [self.timers.next_time(), self.durable.coord.next_deadline()]
                 if t is not None]
        if self.durable.periodic_heap:
            times.append(self.durable.periodic_heap[0][0])
        if self.limits_held:
            times += [t for t in (lm.wake_time(self.now) for lm in self.limits.values())
                      if t is not None]
        return min(times) if times else None

    def silent_workers(self, now: float, ttl: float) -> list[str]:
        """Workers not heard from for ``ttl`` seconds (a half-open connection, a frozen host):
        the shell closes their connections, which removes them."""
        return [a for a, ws in self.workers.items() if now - ws.last_seen > ttl]

    def wake(self, now: float) -> Out:
        """Time has come for timers or limits: start delayed tasks, expire late ones."""
        self.now = now
        self._stimulus("timer")
        out = self.out = []
        for kind, ts in self.timers.due(now):
            if self.tasks.get(ts.key) is not ts:
                continue
            if kind == "start" and ts.state == "delayed":
                ts.state = "waiting"
                self._become_ready_or_wait(ts)
            elif kind == "expire" and ts.state in ("waiting", "delayed", "queued"):
                self._expired(ts)
        if self.durable.periodic_heap:
            periodic.fire_due(self)
        if self.durable.coord.deadlines:
            coordination.wake(self)
        self._fill_workers()
        functions.send_forgets(self)
        self.out = []
        return out

    # views (views.py) and client.restart() (restart.py), bound here as methods
    restart = restart_all
    replicate = data_moves.replicate      # client.replicate, client.rebalance (data_moves.py)
    rebalance = data_moves.rebalance
    resources_info = resources.summary    # tasks waiting for resources (resources.py)
    queues_info = views.queues_info
    limits_info = views.limits_info
    known_queues = views.known_queues
    attempts = views.attempts
    counts_by_state = views.counts_by_state
    unfinished_work = views.unfinished_work
