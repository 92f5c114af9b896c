"""Running tasks in threads, and stopping them: the worker's executor.

Threads take work items (:class:`~nbcluster.state.instructions.Execute` records) from a queue
and report outcomes (the records of :mod:`.worker_outcomes`) in batches, one loop wake-up per
batch. The threads touch nothing of the worker's state machine: what they need from the event
loop, which tasks were cancelled, is a set owned here; what they learn goes back as outcomes,
handled on the loop.

A task with a ``timeout``, or one that is cancelled while it runs, is stopped by raising an
exception inside its thread; if it has not stopped after a grace period, ``on_stuck`` is
called and the worker gives up on that thread (a worker process exits and is replaced).
An ``async def`` task's coroutine runs to its end on an event loop of its own, in its thread.
A result that cannot be pickled (whatever its ``__reduce__`` raises, ``SystemExit`` too)
fails its task; the thread carries on.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
import traceback as tb_module
from types import CoroutineType
from typing import Any, Callable

from ..errors import (CancelledError, ClusterError, PicklingError, RemoteError, Retry,
                      SerializationError, TaskExpiredError, TaskTimeoutError)
from ..protocol import messages as m
from ..protocol.serialize import Serialized, dumps, is_plain, loads, sizeof
from ..state.instructions import Execute
from . import capture, task_threads
from .spill import Spilled
from .interrupt import CancelInterrupt, TaskInterrupt, TimeoutInterrupt, interrupt_thread
from .worker_outcomes import InputReadBack, Outcome, TaskFailed, TaskFinished, TaskStarted

INLINE_RESULT = 64 * 1024     # results up to this size ride with the completion message
GRACE_SECONDS = 1.0           # after an interrupt, how long a task may take to stop
_NO_OPTIONS: dict = {}        # a task's options when it has none


def result_error(key: str, result: Any, exc: BaseException) -> BaseException:
    """What a task whose result cannot be measured or pickled fails with (the original
    exception when it is already a SerializationError, or a TaskInterrupt to stop it)."""
    if isinstance(exc, (SerializationError, TaskInterrupt)):
        return exc
    return PicklingError(f"cannot pickle the result of {key!r} (of type "
                         f"{type(result).__module__}.{type(result).__qualname__}): pickling "
                         f"raised {type(exc).__name__}: {exc}")


def exception_payload(exc: BaseException) -> tuple[Serialized, str]:
    """The exception as it travels (pickled with its traceback) and the traceback as text."""
    text = "".join(tb_module.format_exception(type(exc), exc, exc.__traceback__))
    try:
        from tblib import pickling_support

        pickling_support.install(exc)
    except Exception:
        pass
    try:
        return dumps(exc, what="exception"), text
    except BaseException:   # noqa: BLE001 - also SystemExit from an exception's __reduce__
        try:
            exc.__traceback__ = None
            return dumps(exc, what="exception"), text
        except BaseException:  # noqa: BLE001
            return dumps(RemoteError(f"{type(exc).__qualname__}: {_text(exc)}")), text


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except BaseException:  # noqa: BLE001
        return "(its text cannot be shown)"


class Executor:
    """``on_outcomes`` gets each batch of outcomes on the event loop; ``on_output`` (key,
    stream, text) and ``on_task_end`` (key) are called in the task's thread, for what it
    printed; ``on_stuck`` (key) on the loop when a thread is given up on."""

    def __init__(self, nthreads: int, loop: asyncio.AbstractEventLoop, functions: dict,
                 data: dict, on_outcomes: Callable[[list[Outcome]], None],
                 on_output: Callable[[str, m.Stream, str], None],
                 on_stuck: Callable[[str], None],
                 on_task_end: Callable[[str], None] = lambda key: None) -> None:
        self.loop = loop
        self.functions = functions
        self.data = data               # read by the threads for inputs; written on the loop
        self.on_outcomes = on_outcomes
        self.on_output = on_output
        self.on_stuck = on_stuck
        self.on_task_end = on_task_end
        self.owner: Any = None         # the worker (for nbcluster.get_client() in a task)
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._done: list[Outcome] = []
        self._lock = threading.Lock()
        # Freed while with the executor (changed on the loop, read by the threads under the
        # lock): a queued task is skipped, a running one interrupted. A key leaves the set when
        # its end is handed to the loop, so a later run of the same key is not skipped.
        self._cancelled: set[str] = set()
        self._running: dict[str, int] = {}      # key -> thread id
        self._loops: dict[int, asyncio.AbstractEventLoop] = {}   # thread id -> its async task's
        self._abandoned: set[int] = set()       # threads given up on (stuck in a task)
        self._seceded: set[int] = set()         # threads whose task seceded (task_threads.py)
        self._rejoining: dict[int, threading.Event] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._threads: list[threading.Thread] = []
        self._closing = False
        for _ in range(nthreads):
            self._start_thread()

    def _start_thread(self) -> None:
        t = threading.Thread(target=self._main, name=f"nbcluster-task-{len(self._threads)}",
                             daemon=True)
        t.start()
        self._threads.append(t)

    def submit(self, work: Execute, fn: Any = None) -> None:
        """Queue ``work``. ``fn``: its function, looked up by the caller when the task was
        handed over (else here): a FORGET-FUNCTIONS handled later must not take it from a
        task freed and then given back (``resume``) before a thread reaches it."""
        self._work.put((work, fn if fn is not None else self.functions.get(work.fn_token)))

    def cancel(self, key: str) -> None:
        """On the loop: ``key`` was freed. Skip it if it waits in the queue, stop it if it
        runs."""
        with self._lock:
            self._cancelled.add(key)
        self.stop_task(key, CancelInterrupt)

    def resume(self, key: str) -> None:
        """On the loop: ``key`` was given back after ``cancel``: a queued task runs after all
        (one already interrupted is not undone)."""
        with self._lock:
            self._cancelled.discard(key)

    # ------------------------------------------------------------------ in the task threads
    def _main(self) -> None:
        me = threading.get_ident()
        task_threads.enter(self)
        item = work = fn = outcome = None
        while True:
            try:
                # drop the last task's inputs, function and result before waiting: a thread
                # idling with them would keep freed data (and a forgotten function) alive
                item = work = fn = outcome = None
                item = self._work.get()
                if item is None or me in self._abandoned:
                    return
                work, fn = item
                item = None
                if work is None:   # a seceded task rejoins: this idle thread gives it its slot
                    task_threads.hand_over(self, me, fn)
                    return
                key = work.key
                with self._lock:
                    skip = key in self._cancelled
                    if not skip:
                        self._running[key] = me
                if skip:   # freed while it waited in the queue
                    self._report(TaskFinished(key, None, 0, 0.0, 0.0, False, None, ""))
                    continue
                options = work.options
                timeout = options.get("timeout") if options else None
                if timeout or not work.announce:   # an announced start is known on the loop
                    self._report(TaskStarted(key, time.time(), timeout))
                outcome = self._run(work, fn)
                with self._lock:
                    self._running.pop(key, None)
                if me in self._abandoned:
                    return           # its task was already reported as failed
                if not self._report(outcome):
                    return
                if self._seceded and task_threads.leave(self, me):
                    return           # seceded: its slot went to another thread
            except TaskInterrupt:    # arrived just after the task ended: nothing to stop
                with self._lock:
                    self._running = {k: t for k, t in self._running.items() if t != me}

    def _report(self, outcome: Outcome) -> bool:
        with self._lock:
            self._done.append(outcome)
            wake = len(self._done) == 1
        if wake:
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:   # loop closed during shutdown
                return False
        return True

    def _run(self, work: Execute, fn: Any) -> TaskFinished | TaskFailed:
        key = work.key
        start = time.time()
        options = work.options or _NO_OPTIONS
        capture.set_current_task(key, self.on_output)
        try:
            expires = options.get("expires")
            if expires is not None and start > expires:
                return self._failure(work, TaskExpiredError(
                    f"task {key!r} had not started by its expiry time"), start, retry=False)
            if fn is None:   # the scheduler sends a function before any task that runs it
                raise ClusterError(f"task {key!r}: this worker was not sent its function "
                                   f"{work.fn_token!r}")
            if isinstance(fn, BaseException):
                raise fn
            args, kwargs = work.args, work.kwargs
            resolve = _resolver(self.data, options.get("errors"), self._read_back)
            if type(args) is Serialized:
                args = loads(args, resolve)
            if type(kwargs) is Serialized:
                kwargs = loads(kwargs, resolve)
            result = fn(*args, **kwargs) if kwargs else fn(*args)
            if type(result) is CoroutineType:   # an async def function: run it to its end
                result = self._run_coroutine(result)
        except BaseException as e:  # noqa: BLE001 - a task's failure, whatever it is, goes back
            return self._failure(work, e, start)
        finally:
            capture.set_current_task(None)
            self.on_task_end(key)
        stop = time.time()
        has_value, value = False, None
        try:
            nbytes = sizeof(result)
            if work.want:
                if is_plain(result):
                    has_value, value = True, result
                elif nbytes <= INLINE_RESULT:
                    value = dumps(result, what=f"the result of {key!r}")
                    has_value = value.nbytes <= INLINE_RESULT
                    if not has_value:
                        value = None
        except BaseException as e:  # noqa: BLE001 - even SystemExit from a __reduce__
            return self._failure(work, result_error(key, result, e), start)
        return TaskFinished(key, result, nbytes, start, stop, has_value, value,
                            type(result).__name__)

    def _read_back(self, key: str, marker: Spilled, value: Any) -> None:
        """A task loaded a spilled input: the loop decides whether it stays in memory."""
        self._report(InputReadBack(key, marker, value))

    def _run_coroutine(self, coro) -> Any:
        """Run an ``async def`` task's coroutine on a fresh event loop in this thread.
        ``stop_task`` wakes that loop, so an interrupt reaches a coroutine that waits
        (``await asyncio.sleep``) at once; ``asyncio.run`` then cancels what is left."""
        me = threading.get_ident()

        async def main():
            self._loops[me] = asyncio.get_running_loop()
            return await coro

        try:
            return asyncio.run(main())
        finally:
            self._loops.pop(me, None)

    def _failure(self, work: Execute, e: BaseException, start: float,
                 retry: bool = True) -> TaskFailed:
        stop = time.time()
        options = work.options or _NO_OPTIONS
        if isinstance(e, TimeoutInterrupt):
            e = TaskTimeoutError(f"task {work.key!r} ran longer than its timeout of "
                                 f"{options['timeout']:g} s and was stopped")
        elif isinstance(e, CancelInterrupt):
            e = CancelledError(f"task {work.key!r} was cancelled while it ran, and stopped")
        elif e.__traceback__ is not None and e.__traceback__.tb_next is not None:
            e.__traceback__ = e.__traceback__.tb_next   # start at the user's frame
        retryable = retry and not isinstance(e, CancelledError)
        again: dict[str, float | int | None] | None = None
        if retryable and isinstance(e, Retry):
            again = {"delay": e.delay, "max": e.max_retries}
        elif retryable and options.get("retries"):   # retries left: failures may be retried
            classes: tuple = (Exception,)   # retry_on's default: any Exception
            retry_on = options.get("retry_on")   # a Serialized tuple of exception classes
            if retry_on is not None:
                try:
                    classes = loads(retry_on)
                except Exception:
                    pass
            if isinstance(e, classes):
                again = {"delay": None, "max": None}
        exc, text = exception_payload(e)
        return TaskFailed(work.key, exc, text, start, stop, again)

    # ------------------------------------------------------------------ on the event loop
    def _drain(self) -> None:
        with self._lock:
            done, self._done = self._done, []
        self._deliver(done)

    def _deliver(self, done: list[Outcome]) -> None:
        """Arm time limits as tasks start; as they end, disarm them and forget a cancel."""
        for outcome in done:
            if type(outcome) is TaskStarted:
                if outcome.timeout:
                    key = outcome.key
                    self._timers[key] = self.loop.call_later(outcome.timeout, self._timed_out,
                                                             key)
            elif type(outcome) is TaskFinished or type(outcome) is TaskFailed:
                timer = self._timers.pop(outcome.key, None)
                if timer is not None:
                    timer.cancel()
                if self._cancelled:
                    with self._lock:
                        self._cancelled.discard(outcome.key)
        self.on_outcomes(done)

    def _timed_out(self, key: str) -> None:
        self._timers.pop(key, None)
        self.stop_task(key, TimeoutInterrupt)

    def stop_task(self, key: str, kind: type[TaskInterrupt] = CancelInterrupt) -> bool:
        """Raise ``kind`` in the thread running ``key``; give up on the thread if it won't stop."""
        with self._lock:
            ident = self._running.get(key)
            if ident is None:
                return False
            interrupt_thread(ident, kind)
            task_loop = self._loops.get(ident)
        if task_loop is not None:   # an async task: wake its loop, so the interrupt lands
            try:
                task_loop.call_soon_threadsafe(_nothing)
            except RuntimeError:    # its loop has just closed: the task has ended
                pass
        self.loop.call_later(GRACE_SECONDS, self._check_stopped, key, ident, kind)
        return True

    def _check_stopped(self, key: str, ident: int, kind) -> None:
        with self._lock:
            if self._running.get(key) != ident:
                return
            # stuck (in C code or a sleep): stop counting on this thread
            self._abandoned.add(ident)
            del self._running[key]
            replaced = ident in self._seceded   # replaced when it seceded
        if not self._closing and not replaced:
            self._start_thread()
        error = (TaskTimeoutError(f"task {key!r} did not stop within {GRACE_SECONDS:g} s of "
                                  "its timeout; its thread was abandoned")
                 if kind is TimeoutInterrupt else
                 CancelledError(f"task {key!r} was cancelled and did not stop within "
                                f"{GRACE_SECONDS:g} s; its thread was abandoned"))
        exc, text = exception_payload(error)
        now = time.time()
        self._deliver([TaskFailed(key, exc, text, now, now, None)])
        self.on_stuck(key)

    def close(self, timeout: float = 5.0) -> list[threading.Thread]:
        self._closing = True
        for timer in self._timers.values():
            timer.cancel()
        with self._lock:     # seceded tasks waiting to rejoin go on, on their own threads
            for event in self._rejoining.values():
                event.set()
        for _ in self._threads:
            self._work.put(None)
        return [t for t in self._threads if t.ident not in self._abandoned]


def _resolver(data: dict, errors: dict | None,
              on_unspilled: Callable[[str, Any, Any], None] | None = None
              ) -> Callable[[str], Any]:
    """Values of inputs by key; failed inputs (collect_errors) arrive as their exceptions;
    a spilled input is read back from disk, and offered back to memory (``on_unspilled``,
    called in the task's thread)."""

    def resolve(key: str) -> Any:
        if errors and key not in data:
            return loads(errors[key])
        value = data[key]
        if type(value) is not Spilled:
            return value
        loaded = value.load()
        if on_unspilled is not None:
            on_unspilled(key, value, loaded)
        return loaded

    return resolve


def _nothing() -> None:
    """Scheduled on an async task's loop to wake it from waiting."""
