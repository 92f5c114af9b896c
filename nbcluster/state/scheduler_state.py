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

from ..errors import FutureLostError, KilledWorkerError
from ..protocol import messages as m
from .gates import Limit, Timers, backoff
from .occupancy import Occupancy
from .model import (DEFAULT_QUEUE, FIRE_AND_FORGET, KILLED_WORKER_LIMIT, STORY_LENGTH,
                    TASK_LOG_LENGTH, BadBatch, TaskState, WorkerState, error, own, unwant,
                    want)
from .transitions import Transitions

__all__ = ["SchedulerState", "TaskState", "WorkerState", "BadBatch", "FIRE_AND_FORGET"]


class SchedulerState(Transitions):
    """Tasks, workers and clients, and the rules that move tasks between states."""

    def __init__(self) -> None:
        self.tasks: dict[str, TaskState] = {}
        self.workers: dict[str, WorkerState] = {}
        self.occupancy = Occupancy()                # which workers have room (O(log W))
        self.clients: set[str] = set()
        self.functions: dict[str, bytes] = {}
        self.function_owners: dict[str, str] = {}   # token -> the client that sent it
        self.queues: dict[str, list] = {DEFAULT_QUEUE: []}   # name -> heap of (priority, task)
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
        self.out: list = []
        self.now = 0.0
        # What happened to each task, why (the stimulus: which batch of which peer, or a
        # timer, a worker leaving...) and when: bounded over all tasks, for client.story.
        self.record_stories = True
        self.stories: deque = deque(maxlen=STORY_LENGTH)   # (key, what, where, stimulus, now)
        self.stimulus = ""
        self.stimuli = 0
        # (key, worker, start, stop, ok) of recent tasks, for observers such as the dashboard
        self.task_log: deque = deque(maxlen=TASK_LOG_LENGTH)
        self.task_log_total = 0       # entries ever appended: observers keep a cursor
        # (key, from worker, to worker, start, stop, nbytes) of recent worker-to-worker copies
        self.transfer_log: deque = deque(maxlen=TASK_LOG_LENGTH)
        self.transfer_log_total = 0

    # ------------------------------------------------------------------ entry points
    def handle(self, peer: str, batch: list, now: float) -> list:
        """Apply a batch of messages from ``peer``; return ``[(peer, message), ...]`` to send."""
        self._check_batch(peer, batch)   # a malformed message is refused before any is applied
        self.now = now
        self._stimulus(peer)
        out = self.out = []
        handlers = self._handlers
        try:
            for msg in batch:
                handlers[msg[0]](self, peer, *msg[1:])
        except Exception as e:
            # What the messages before the bad one decided must still go out, or other
            # peers would wait forever for it; the shell closes the offending connection.
            self._fill_workers()
            self.out = []
            raise BadBatch(f"bad message from {peer}: {e!r}", out) from e
        self._fill_workers()
        self.out = []
        return out

    def _check_batch(self, peer: str, batch) -> None:
        """Raise ProtocolError unless every message in ``batch`` can be applied."""
        if type(batch) is not list:
            raise m.ProtocolError(f"a batch must be a list, got {type(batch).__name__}")
        role = "worker" if peer in self.workers else "client" if peer in self.clients else None
        defined: set = set()   # functions sent earlier in this batch
        for msg in batch:
            op = m.check_fields(msg)
            if op not in self._handlers or (role and op not in m.TO_SCHEDULER[role]):
                raise m.ProtocolError(f"{op!r} is not accepted from {role or 'peer'} {peer!r} "
                                      "by the scheduler's state (requests go to its shell)")
            if op == m.FUNCTION:
                defined.add(msg[1])
            elif op == m.SUBMIT:
                for spec in msg[1]:
                    m.check_task(spec)
                    fn = spec[1]
                    if spec[0] not in self.tasks and fn not in self.functions and fn not in defined:
                        raise m.ProtocolError(f"task {spec[0]!r} names unknown function {fn!r}")

    def add_client(self, client_id: str) -> None:
        self.clients.add(client_id)

    def remove_client(self, client_id: str, now: float = 0.0) -> list:
        self.now = now
        self._stimulus(f"{client_id} left")
        out = self.out = []
        self.clients.discard(client_id)
        for ts in [ts for ts in self.tasks.values() if client_id in ts.who_wants]:
            unwant(ts, client_id)   # (a non-empty who_wants is the task's own set)
            self._maybe_forget(ts)
        self._forget_functions()
        self._fill_workers()
        self.out = []
        return out

    def unfinished_work(self) -> float:
        """Seconds of work not yet done: each waiting or running task at the recent run time
        of its function (the overall average for functions not seen yet)."""
        durations, default = self.prefix_durations, self.avg_duration
        return sum(durations.get(ts.prefix, default) for ts in self.tasks.values()
                   if ts.state in ("queued", "processing", "waiting"))

    def restart(self, reason: str, now: float = 0.0) -> list:
        """Forget every task (``client.restart()``): clients hear CANCELLED for each key they
        hold, workers drop all their data and stop what runs. Workers, clients, functions,
        queues and limits (their settings) stay."""
        self.now = now
        out = self.out = []
        on_worker: dict[str, list] = defaultdict(list)
        for ts in self.tasks.values():
            for client in ts.who_wants:
                if client in self.clients:
                    out.append((client, [m.CANCELLED, ts.key, reason]))
            for ws in ts.who_has:
                on_worker[ws.address].append(ts.key)
            if ts.processing_on is not None:
                on_worker[ts.processing_on.address].append(ts.key)
        for address, keys in on_worker.items():
            out.append((address, [m.FREE, keys]))
        self.tasks.clear()
        for heap in self.queues.values():
            heap.clear()
        self.unrunnable.clear()
        for limit in self.limits.values():
            limit.held.clear()
            limit.running = 0
        self.limits_held = False
        self.timers = Timers()
        for ws in self.workers.values():
            ws.processing.clear()
            self.occupancy.changed(ws)
            ws.has_what.clear()
            ws.nbytes = 0
        self.out = []
        return out

    def _forget_functions(self) -> None:
        """Drop the pickled functions of clients that left, once no task still needs them
        (tokens are per client, so a long-lived scheduler would otherwise only grow)."""
        gone = [t for t, owner in self.function_owners.items() if owner not in self.clients]
        if not gone:
            return
        in_use = {ts.fn for ts in self.tasks.values()}
        for token in gone:
            if token not in in_use:
                del self.functions[token]
                del self.function_owners[token]
                for ws in self.workers.values():
                    ws.functions.discard(token)

    def add_worker(self, address: str, nthreads: int, name: str, identity: dict,
                   now: float = 0.0) -> list:
        self.now = now
        self._stimulus(f"{address} joined")
        out = self.out = []
        if address in self.workers:
            raise ValueError(f"worker {address} is already registered")
        ws = WorkerState(address, max(1, int(nthreads)), name, identity)
        ws.last_seen = now
        self.workers[address] = ws
        self.occupancy.add(ws)
        pinned, self.unrunnable = self.unrunnable, []
        for ts in dict.fromkeys(pinned):
            if ts.state == "queued":
                self._become_ready(ts)   # back to unrunnable unless one of its workers is here
        self._fill_workers()
        self.out = []
        return out

    def remove_worker(self, address: str, now: float = 0.0) -> list:
        """A worker left or died: reschedule its tasks, recompute what only it held."""
        self.now = now
        self._stimulus(f"{address} left")
        out = self.out = []
        ws = self.workers.pop(address, None)
        if ws is None:
            return out
        self.occupancy.remove(ws)
        lost = []
        for ts in ws.has_what:
            ts.who_has.discard(ws)
            if not ts.who_has and ts.state == "memory":
                # Marked before its dependents are rescheduled below, so that they wait for a
                # recompute instead of being sent to fetch it from nobody.
                ts.state = "released"
                lost.append(ts)
        ws.has_what, ws.nbytes = set(), 0
        for ts in list(ws.processing):
            executing = ts.executing
            self._unassign(ts, free=False)
            if executing:
                died = f"the worker {address} died" + (f": {ws.last_words}" if ws.last_words else "")
                self._attempt(ts, address, None, None, died)
                ts.suspicious += 1
                if ts.retries_left > 0 and ts.suspicious < KILLED_WORKER_LIMIT:
                    ts.retries_left -= 1    # a death is a failed attempt of what it ran
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
        self._fill_workers()
        self.out = []
        return out

    # ------------------------------------------------------------------ client messages
    def _on_function(self, peer, token, blob) -> None:
        if token not in self.functions:
            self.functions[token] = blob
            self.function_owners[token] = peer

    def _on_submit(self, peer, specs) -> None:
        tasks = self.tasks
        for spec in specs:
            key, fn, args, kwargs, deps, options = spec
            ts = tasks.get(key)
            if ts is not None:
                want(ts, peer)
                self._report_if_final(ts, peer)
                continue
            self.counter += 1
            prio = -(options.get("priority", 0) or 0) if options else 0
            ts = TaskState(key, fn, args, kwargs, options, (prio, self.counter))
            tasks[key] = ts
            want(ts, peer)
            if options:
                self._apply_options(ts, options)
            self._record(ts, "submitted", peer)
            failed_dep = None
            for dkey in dict.fromkeys(deps):
                dts = tasks.get(dkey)
                if dts is None:
                    failed_dep = dkey
                    continue
                ts.deps.append(dts)
                own(dts, "dependents").add(ts)
            if failed_dep is not None:
                ts.state = "waiting"
                self._set_erred(ts, error(FutureLostError,
                    f"task {key!r} depends on {failed_dep!r}, which the scheduler does not know "
                    "(its future was released before this task was submitted)"), None, key)
                continue
            ts.state = "waiting"
            self._become_ready_or_wait(ts)

    def _on_release(self, peer, keys) -> None:
        tasks = self.tasks
        for key in keys:
            ts = tasks.get(key)
            if ts is not None and peer in ts.who_wants:
                unwant(ts, peer)
                if not ts.who_wants:
                    self._maybe_forget(ts)

    def _on_want(self, peer, keys) -> None:
        for key in keys:
            ts = self.tasks.get(key)
            if ts is None:
                self.out.append((peer, [m.CANCELLED, key, "the scheduler does not know this key"]))
                continue
            want(ts, peer)
            self._report_if_final(ts, peer)

    def _on_cancel(self, peer, keys) -> None:
        for key in keys:
            ts = self.tasks.get(key)
            if ts is None or ts.state in ("memory", "erred", "released"):
                continue
            self._set_erred(ts, None, None, key, cancel=f"cancelled by {peer}")

    def _on_retry(self, peer, keys) -> None:
        for key in keys:
            ts = self.tasks.get(key)
            if ts is None:
                self.out.append((peer, [m.CANCELLED, key, "the scheduler does not know this key"]))
            elif ts.state == "erred":
                self._rerun_failed(ts, peer)
            else:   # already rerunning (another client asked) or done: the client hears as usual
                want(ts, peer)
                self._report_if_final(ts, peer)

    def _on_fire_and_forget(self, peer, keys) -> None:
        for key in keys:
            ts = self.tasks.get(key)
            if ts is not None and ts.state not in ("memory", "erred", "released"):
                want(ts, FIRE_AND_FORGET)

    def _on_update_data(self, peer, nbytes, worker) -> None:
        ws = self.workers.get(worker)
        for key, size in nbytes.items():
            ts = self.tasks.get(key)
            if ts is None:
                self.counter += 1
                ts = TaskState(key, "", None, None, None, (0, self.counter))
                self.tasks[key] = ts
            want(ts, peer)
            if ts.fn:
                # the key names a submitted task (the client checks first; this is a race
                # with another client): the task's own result wins, the put copy goes
                if ws is not None and ws not in ts.who_has:
                    self.out.append((worker, [m.FREE, [key]]))
                if ts.state == "memory":
                    self.out.append((peer, [m.DONE, key, False, None, ts.nbytes,
                                            [w.address for w in ts.who_has]]))
                continue
            if ws is None:
                if ts.state != "memory":   # else another copy (broadcast) is still there
                    self._set_erred(ts, error(FutureLostError, f"{key!r} was scattered to "
                        f"{worker}, which is gone; scattered data cannot be recomputed"), None, key)
                continue
            if ts.state != "memory":   # replicas already counted keep their size
                ts.nbytes = size
            ts.state = "memory"
            self._add_replica(ts, ws)
            self.out.append((peer, [m.DONE, key, False, None, size,
                                    [w.address for w in ts.who_has]]))

    # ------------------------------------------------------------------ worker messages
    def _on_started(self, peer, key, start, run) -> None:
        ts = self.tasks.get(key)
        if ts is not None and ts.processing_on is not None and ts.processing_on.address == peer \
                and run == ts.run_id:
            ts.executing = True

    def _on_finished(self, peer, key, nbytes, start, stop, has_value, value, typ, run) -> None:
        ws = self.workers.get(peer)
        if ws is None:
            return
        ts = self.tasks.get(key)
        if ts is not None and ts.processing_on is ws and run != ts.run_id:
            # an earlier run here, finished before the worker heard it was freed: it dropped
            # that value and reports the current run separately
            return
        if ts is None or ts.processing_on is not ws:
            # Not (or no longer) this worker's to run: it was freed, cancelled, erred or moved
            # elsewhere, and the worker was sent FREE for it, so it drops the value. Counting
            # it would record a replica that is gone.
            if ts is None or ws not in ts.who_has:
                self.out.append((peer, [m.FREE, [key]]))
            return
        ws.last_seen = self.now
        self.task_log.append((key, peer, start, stop, True))
        self.task_log_total += 1
        self._unassign(ts, free=False)
        if ts.attempts is not None or ts.options:
            self._attempt(ts, peer, start, stop - start, None)
        duration = max(stop - start, 1e-6)
        self.avg_duration = 0.9 * self.avg_duration + 0.1 * duration
        known = self.prefix_durations.get(ts.prefix)
        self.prefix_durations[ts.prefix] = duration if known is None else \
            0.5 * known + 0.5 * duration
        self.counts[ts.prefix] += 1
        ts.nbytes = nbytes
        ts.state = "memory"
        self._add_replica(ts, ws)
        self._record(ts, "memory", peer)
        self._tell(ts, [m.DONE, key, has_value, value if has_value else None, nbytes,
                        [] if has_value else [peer]])
        for dts in ts.dependents:
            if ts in dts.waiting_on:
                dts.waiting_on.discard(ts)
                if not dts.waiting_on and dts.state == "waiting":
                    self._become_ready(dts)
        if FIRE_AND_FORGET in ts.who_wants:
            unwant(ts, FIRE_AND_FORGET)
        for dep in ts.deps:
            self._maybe_release_data(dep)
        if not ts.who_wants:
            self._maybe_release_data(ts)

    def _on_failed(self, peer, key, exception, traceback, start, stop, retry, run) -> None:
        ts = self.tasks.get(key)
        ws = self.workers.get(peer)
        if ts is None or ws is None or ts.processing_on is not ws or run != ts.run_id:
            return
        self.task_log.append((key, peer, start, stop, False))
        self.task_log_total += 1
        self._unassign(ts, free=False)
        self._attempt(ts, peer, start, stop - start, _last_line(traceback))
        if retry is not None and self._retry(ts, retry):
            return
        self.counts[ts.prefix + " erred"] += 1
        self._record(ts, "failed", peer)
        self._set_erred(ts, exception, traceback, key)

    def _retry(self, ts: TaskState, retry: dict) -> bool:
        """Another attempt, if the task's budget allows: now or after its back-off."""
        if ts.retries_left > 0:
            ts.retries_left -= 1
        elif retry.get("delay") is not None and ts.retry_count < (retry.get("max") or 0) \
                and not (ts.options and "retries" in ts.options):
            pass   # an explicit Retry() in a task with no retry budget of its own
        else:
            return False
        ts.retry_count += 1
        options = ts.options or {}
        delay = retry.get("delay")
        if delay is None:
            delay = backoff(options.get("retry_backoff", 0.0), ts.retry_count,
                            options.get("retry_backoff_max", 600.0),
                            options.get("retry_jitter", True), self.rng)
        self._record(ts, "retry", delay)
        ts.state = "waiting"
        if delay > 0:
            ts.state = "delayed"
            self.timers.add(self.now + delay, "start", ts)
        else:
            self._become_ready_or_wait(ts)
        return True

    def _attempt(self, ts: TaskState, worker: str, start, duration, err) -> None:
        if ts.attempts is None:
            ts.attempts = []
        ts.attempts.append((worker, start, duration, err))

    def _apply_options(self, ts: TaskState, options: dict) -> None:
        """Limits, and the expiry timer, of a new task."""
        key = options.get("limit_key")
        if key is None and ("rate" in options or "concurrency" in options):
            key = f"function:{ts.prefix}"
        if key is not None:
            limit = self.limits.get(key)
            if limit is None:
                limit = self.limits[key] = Limit(key)
            if "rate" in options or "concurrency" in options:
                limit.set(options.get("rate"), options.get("concurrency"))
            ts.limit = limit
        if "expires" in options:
            self.timers.add(options["expires"], "expire", ts)
        if ts.queue not in self.queues:
            self.queues[ts.queue] = []

    def _on_set_limit(self, peer, key, rate, concurrency) -> None:
        limit = self.limits.get(key)
        if limit is None:
            limit = self.limits[key] = Limit(key)
        limit.set(rate, concurrency)
        self.limits_held = True    # the new budget may let held tasks go

    def _on_missing(self, peer, key, dep_key, holder) -> None:
        """A worker could not fetch ``dep_key`` from ``holder``: fix who_has, retry ``key``."""
        ts = self.tasks.get(key)
        dts = self.tasks.get(dep_key)
        hws = self.workers.get(holder)
        if dts is not None and hws is not None and hws in dts.who_has:
            dts.who_has.discard(hws)
            hws.has_what.discard(dts)
            hws.nbytes -= dts.nbytes
            if not dts.who_has and dts.state == "memory":
                self._lost_data(dts)
        if ts is not None and ts.processing_on is not None and ts.processing_on.address == peer:
            self._unassign(ts, free=False)
            ts.state = "waiting"
            self._record(ts, "missing-dep", dep_key)
            self._become_ready_or_wait(ts)

    def _on_output(self, peer, key, stream, text) -> None:
        """What a task printed: to the clients that hold its future."""
        ts = self.tasks.get(key)
        if ts is not None:
            self._tell(ts, [m.OUTPUT, key, stream, text])

    def _on_transfers(self, peer, entries) -> None:
        for key, source, start, stop, nbytes in entries:
            self.transfer_log.append((key, source, peer, start, stop, nbytes))
        self.transfer_log_total += len(entries)

    def _on_heartbeat(self, peer, metrics) -> None:
        ws = self.workers.get(peer)
        if ws is not None:
            ws.metrics = metrics
            ws.last_seen = self.now

    def _on_status(self, peer, status, detail) -> None:
        ws = self.workers.get(peer)
        if ws is None:
            return
        if status == "terminating":
            ws.last_words = detail
        paused = status != "running"
        if paused != ws.paused:
            ws.paused = paused
            self.occupancy.changed(ws)
            if not paused:
                self._fill_workers()

    def _on_memory_limit(self, peer, limit) -> None:
        ws = self.workers.get(peer)
        if ws is not None:   # a new identity: observers may hold the old one
            ws.identity = {**ws.identity, "memory_limit": limit}

    _handlers = {
        m.FUNCTION: _on_function, m.SUBMIT: _on_submit, m.RELEASE: _on_release, m.WANT: _on_want,
        m.CANCEL: _on_cancel, m.RETRY: _on_retry, m.FIRE_AND_FORGET: _on_fire_and_forget,
        m.UPDATE_DATA: _on_update_data, m.STARTED: _on_started, m.FINISHED: _on_finished,
        m.FAILED: _on_failed, m.MISSING: _on_missing, m.HEARTBEAT: _on_heartbeat,
        m.OUTPUT: _on_output, m.SET_LIMIT: _on_set_limit, m.TRANSFERS: _on_transfers,
        m.STATUS: _on_status, m.MEMORY_LIMIT: _on_memory_limit,
    }

    # ------------------------------------------------------------------ helpers
    def _stimulus(self, source: str) -> None:
        """Name the event being handled (one id per incoming batch), for the stories."""
        self.stimuli += 1
        self.stimulus = f"{source}#{self.stimuli}"

    def story(self, key: str) -> list:
        """``[time, what, where, stimulus]`` of each recorded transition of ``key`` (also after
        it was forgotten, as long as the bounded record still holds it)."""
        return [[now, what, where, stimulus] for k, what, where, stimulus, now in self.stories
                if k == key]

    # ------------------------------------------------------------------ time
    def next_wakeup(self) -> float | None:
        """When :meth:`wake` should be called next (a timer or a rate limit is due)."""
        times = [t for t in [self.timers.next_time()] if t is not None]
        if self.limits_held:
            times += [t for t in (lm.wake_time(self.now) for lm in self.limits.values())
                      if t is not None]
        return min(times) if times else None

    def wake(self, now: float) -> list:
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
        self._fill_workers()
        self.out = []
        return out

    # ------------------------------------------------------------------ views
    def queues_info(self) -> dict:
        """Per queue: tasks waiting in it, tasks running from it, workers subscribed."""
        info: dict = {}
        names = set(self.queues) | {q for w in self.workers.values() for q in w.queues}
        for name in sorted(names):
            info[name] = {"queued": 0, "processing": 0, "workers": sorted(
                w.address for w in self.workers.values() if name in w.queues)}
        for ts in self.tasks.values():
            if ts.state in ("queued", "processing", "delayed") and ts.queue in info:
                info[ts.queue]["queued" if ts.state != "processing" else "processing"] += 1
        return info

    def limits_info(self) -> dict:
        return {key: limit.describe() for key, limit in self.limits.items()}

    def known_queues(self) -> set[str]:
        return set(self.queues) | {q for w in self.workers.values() for q in w.queues}

    def attempts(self, key: str) -> list:
        ts = self.tasks.get(key)
        return [list(a) for a in (ts.attempts or ())] if ts is not None else []
    def counts_by_state(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for ts in self.tasks.values():
            out[ts.state] += 1
        return dict(out)


def _last_line(traceback: str | None) -> str:
    """``ValueError: bad input`` out of a formatted traceback."""
    lines = [line for line in (traceback or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "error"
