"""Running tasks in threads, and stopping them: the worker's executor.

Threads take work from a queue and report outcomes in batches (one loop wake-up per batch).
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

from ..errors import (CancelledError, PicklingError, RemoteError, Retry, SerializationError,
                      TaskExpiredError, TaskTimeoutError)
from ..protocol.serialize import Serialized, dumps, is_plain, loads, sizeof
from . import capture
from .spill import Spilled
from .interrupt import CancelInterrupt, TaskInterrupt, TimeoutInterrupt, interrupt_thread

INLINE_RESULT = 64 * 1024     # results up to this size ride with the completion message
GRACE_SECONDS = 1.0           # after an interrupt, how long a task may take to stop


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


class Work:
    __slots__ = ("key", "fn", "args", "kwargs", "want", "timeout", "retry_on", "retries",
                 "expires", "errors")

    def __init__(self, key, fn, args, kwargs, want, options: dict | None = None) -> None:
        self.key, self.fn, self.args, self.kwargs, self.want = key, fn, args, kwargs, want
        options = options or {}
        self.timeout = options.get("timeout")
        self.retry_on = options.get("retry_on")      # Serialized tuple of exception classes
        self.retries = options.get("retries", 0)     # > 0: failures may be retried
        self.expires = options.get("expires")
        self.errors = options.get("errors")          # failed inputs: key -> exception


class Executor:
    def __init__(self, nthreads: int, loop: asyncio.AbstractEventLoop, functions: dict,
                 data: dict, on_outcomes: Callable[[list], None],
                 on_output: Callable[[str, str, str], None],
                 is_cancelled: Callable[[str], bool],
                 on_stuck: Callable[[str], None],
                 on_task_end: Callable[[str], None] = lambda key: None) -> None:
        self.loop = loop
        self.functions = functions
        self.data = data
        # called from a task thread with (key, marker, value) after a spilled input was read
        self.on_unspilled: Callable[[str, Any, Any], None] | None = None
        self.on_outcomes = on_outcomes
        self.on_output = on_output
        self.is_cancelled = is_cancelled
        self.on_stuck = on_stuck
        self.on_task_end = on_task_end
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._done: list = []
        self._lock = threading.Lock()
        self._running: dict[str, int] = {}      # key -> thread id
        self._loops: dict[int, asyncio.AbstractEventLoop] = {}   # thread id -> its async task's
        self._abandoned: set[int] = set()       # threads given up on (stuck in a task)
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

    def submit(self, work: Work) -> None:
        self._work.put(work)

    def will_start_now(self) -> bool:
        """A thread is idle and nothing waits in the queue (a hint: it is read unlocked)."""
        return self._work.empty() and len(self._running) < len(self._threads) - len(self._abandoned)

    # ------------------------------------------------------------------ in the task threads
    def _main(self) -> None:
        me = threading.get_ident()
        work = outcome = None
        while True:
            try:
                # drop the last task's inputs and result before waiting: a thread idling
                # with them would keep freed data alive
                work = outcome = None
                work = self._work.get()
                if work is None or me in self._abandoned:
                    return
                if self.is_cancelled(work.key):   # freed while it waited in the queue
                    self._report((True, work.key, None, 0, 0.0, 0.0, False, None, ""))
                    continue
                with self._lock:
                    self._running[work.key] = me
                self._report(("started", work.key, time.time(), work.timeout))
                outcome = self._run(work)
                with self._lock:
                    self._running.pop(work.key, None)
                if me in self._abandoned:
                    return           # its task was already reported as failed
                if not self._report(outcome):
                    return
            except TaskInterrupt:    # arrived just after the task ended: nothing to stop
                with self._lock:
                    self._running = {k: t for k, t in self._running.items() if t != me}

    def _report(self, outcome: tuple) -> bool:
        with self._lock:
            self._done.append(outcome)
            wake = len(self._done) == 1
        if wake:
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:   # loop closed during shutdown
                return False
        return True

    def _run(self, work: Work) -> tuple:
        key = work.key
        start = time.time()
        capture.set_current_task(key, self.on_output)
        try:
            if work.expires is not None and start > work.expires:
                return self._failure(work, TaskExpiredError(
                    f"task {key!r} had not started by its expiry time"), start, retry=False)
            fn = self.functions[work.fn]
            if isinstance(fn, BaseException):
                raise fn
            args, kwargs = work.args, work.kwargs
            resolve = _resolver(self.data, work.errors, self.on_unspilled)
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
        return (True, key, result, nbytes, start, stop, has_value, value, type(result).__name__)

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

    def _failure(self, work: Work, e: BaseException, start: float, retry: bool = True) -> tuple:
        stop = time.time()
        if isinstance(e, TimeoutInterrupt):
            e = TaskTimeoutError(f"task {work.key!r} ran longer than its timeout of "
                                 f"{work.timeout:g} s and was stopped")
        elif isinstance(e, CancelInterrupt):
            e = CancelledError(f"task {work.key!r} was cancelled while it ran, and stopped")
        elif e.__traceback__ is not None and e.__traceback__.tb_next is not None:
            e.__traceback__ = e.__traceback__.tb_next   # start at the user's frame
        retryable = retry and not isinstance(e, CancelledError)
        retry = None
        if retryable and isinstance(e, Retry):
            retry = {"delay": e.delay, "max": e.max_retries}
        elif retryable and work.retries:
            classes: tuple = (Exception,)   # retry_on's default: any Exception
            if work.retry_on is not None:
                try:
                    classes = loads(work.retry_on)
                except Exception:
                    pass
            if isinstance(e, classes):
                retry = {"delay": None, "max": None}
        exc, text = exception_payload(e)
        return (False, work.key, exc, text, start, stop, retry)

    # ------------------------------------------------------------------ on the event loop
    def _drain(self) -> None:
        with self._lock:
            done, self._done = self._done, []
        for outcome in done:
            if outcome[0] == "started" and outcome[3]:
                key = outcome[1]
                self._timers[key] = self.loop.call_later(outcome[3], self._timed_out, key)
            elif outcome[0] != "started":
                timer = self._timers.pop(outcome[1], None)
                if timer is not None:
                    timer.cancel()
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
        if not self._closing:
            self._start_thread()
        error = (TaskTimeoutError(f"task {key!r} did not stop within {GRACE_SECONDS:g} s of "
                                  "its timeout; its thread was abandoned")
                 if kind is TimeoutInterrupt else
                 CancelledError(f"task {key!r} was cancelled and did not stop within "
                                f"{GRACE_SECONDS:g} s; its thread was abandoned"))
        exc, text = exception_payload(error)
        self.on_outcomes([(False, key, exc, text, time.time(), time.time(), None)])
        self.on_stuck(key)

    @property
    def running(self) -> dict[str, int]:
        return dict(self._running)

    def close(self, timeout: float = 5.0) -> list[threading.Thread]:
        self._closing = True
        for timer in self._timers.values():
            timer.cancel()
        for _ in self._threads:
            self._work.put(None)
        return [t for t in self._threads if t.ident not in self._abandoned]


def _resolver(data: dict, errors: dict | None,
              on_unspilled: Callable[[str, Any, Any], None] | None = None
              ) -> Callable[[str], Any]:
    """Values of inputs by key; failed inputs (collect_errors) arrive as their exceptions;
    a spilled input is read back from disk, and offered back to memory (``on_unspilled``)."""

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


def work_for(key: str, ts: Any) -> Work:
    return Work(key, ts.fn, ts.args, ts.kwargs, ts.want, ts.options)


def _nothing() -> None:
    """Scheduled on an async task's loop to wake it from waiting."""
