"""What the client knows of each key it holds (one record, shared by every Future of the key),
and the one routine that waits for records to end: Future, gather, wait and scatter all use it,
blocking a thread (:func:`wait_until`, :func:`block_on`) or awaiting on any loop (:func:`ended`).

Records end on the client's I/O thread (or its loop, for an asynchronous client), where the
scheduler's messages arrive; waiters may be on any thread or loop.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Sequence

from ..durations import optional_timeout
from ..errors import CancelledError, FutureLostError
from ..protocol.serialize import Serialized, loads
from .blocking import wait_event

PENDING, FINISHED, ERROR, CANCELLED, LOST = "pending", "finished", "error", "cancelled", "lost"
NO_VALUE = object()     # the value did not travel with DONE: it is on a worker (see holders)

_lock = threading.Lock()
# Set by nbcluster.task_client: in a task's thread, a context manager that gives up the
# task's thread while it waits (secede, then rejoin), so the worker runs other tasks, those
# waited for among them; None elsewhere.
wait_hook: Callable[[], Any] | None = None


class KeyRecord:
    """What the client knows of one key, shared by every Future of that key."""

    __slots__ = ("key", "status", "value", "holders", "exc", "traceback", "refs", "callbacks",
                 "nbytes", "typ", "cancel_reason", "fn", "__weakref__")

    def __init__(self, key: str) -> None:
        self.key = key
        self.status = PENDING
        self.value: Any = NO_VALUE      # Serialized or plain value as it arrived
        self.holders: Sequence[str] = ()  # workers with a value that did not travel
        self.exc: BaseException | Serialized | None = None   # Serialized as it arrived
        self.traceback: str | None = None
        self.refs = 0
        self.callbacks: list | None = None
        self.nbytes = 0
        self.typ = ""
        self.cancel_reason = ""
        self.fn: str | None = None      # the function token this record holds a use of

    def add_callback(self, fn: Callable[["KeyRecord"], None]) -> None:
        """``fn(self)`` when the record ends: at once (on this thread) if it has."""
        with _lock:
            if self.status == PENDING:
                if self.callbacks is None:
                    self.callbacks = []
                self.callbacks.append(fn)
                return
        fn(self)

    def finish(self, status: str) -> None:
        """Called on the I/O thread once the outcome fields are set."""
        with _lock:
            self.status = status
            callbacks, self.callbacks = self.callbacks, None
        if callbacks:
            for cb in callbacks:
                try:
                    cb(self)
                except Exception:  # a user's callback must not break the client
                    import logging

                    logging.getLogger("nbcluster.client").exception("error in a done callback")

    def reset(self) -> None:
        with _lock:
            self.status = PENDING
            self.value = NO_VALUE
            self.holders = ()
            self.exc = self.traceback = None

    def loaded(self) -> Any:
        """The value, unpickled once; NO_VALUE while it is only on a worker."""
        value = self.value
        if type(value) is Serialized:
            value = self.value = loads(value)
        return value

    def error(self) -> BaseException:
        if self.status == CANCELLED:
            return CancelledError(f"{self.key} was cancelled" +
                                  (f": {self.cancel_reason}" if self.cancel_reason else ""))
        if self.status == LOST:
            return FutureLostError(f"{self.key}: {self.cancel_reason}")
        exc = self.exc
        if type(exc) is Serialized:
            exc = self.exc = _load_exception(exc, self.traceback)
        if not isinstance(exc, BaseException):
            raise RuntimeError(f"{self.key} has no error: it is {self.status}")
        return exc


def _load_exception(ser: Serialized, text: str | None) -> BaseException:
    try:
        exc = loads(ser)
    except Exception as e:
        from ..errors import RemoteError

        exc = RemoteError(f"a remote error that cannot be unpickled here: {e}")
    if not isinstance(exc, BaseException):
        from ..errors import RemoteError

        exc = RemoteError(repr(exc))
    if text and hasattr(exc, "add_note"):
        exc.add_note("\nRemote traceback (on the worker):\n" + text.rstrip())
    return exc


# ---------------------------------------------------------------------- the wait routine
class _Countdown:
    """A record callback that calls ``then()`` once, when ``left`` records have ended or one
    ended that ``stop`` picks out. Records end on the I/O thread, but one that had already
    ended calls back at once on the waiting thread: hence the lock."""

    __slots__ = ("left", "then", "stop", "lock")

    def __init__(self, left: int, then: Callable[[], None], stop) -> None:
        self.left = left
        self.then = then
        self.stop = stop
        self.lock = threading.Lock()

    def __call__(self, rec: KeyRecord) -> None:
        with self.lock:
            if self.left <= 0:
                return
            self.left -= 1
            if self.left and not (self.stop is not None and self.stop(rec)):
                return
            self.left = 0
        self.then()


def wait_until(records: Sequence[KeyRecord], timeout: float | None = None,
               count: int | None = None,
               stop: Callable[[KeyRecord], bool] | None = None) -> bool:
    """Block this thread until ``count`` of the records still pending (default: all of them)
    have ended, or one that ``stop`` picks out has; False when ``timeout`` s passed first.
    Ctrl-C ends the wait at once on the main thread."""
    pending = [r for r in records if r.status == PENDING]
    if not pending:
        return True
    event = threading.Event()
    countdown = _Countdown(count or len(pending), event.set, stop)
    for rec in pending:
        rec.add_callback(countdown)
    guard = None if wait_hook is None else wait_hook()
    if guard is None:
        return wait_event(event, timeout)
    with guard:    # in slices: a task cancelled while it waits stops at once
        return wait_event(event, timeout, sliced=True)


def block_on(records: Sequence[KeyRecord], timeout: Any, what: str) -> None:
    """Block until every record has ended: a TimeoutError naming ``what`` after ``timeout``
    (seconds or text); a KeyboardInterrupt says the tasks still run."""
    seconds = optional_timeout(timeout)
    try:
        if wait_until(records, seconds):
            return
    except KeyboardInterrupt as e:
        e.add_note(f"stopped waiting for {what}; the task still runs on the cluster "
                   "(future.cancel() stops it)")
        raise
    raise TimeoutError(f"{what} did not finish within {seconds:g} s")


async def ended(records: Sequence[KeyRecord]) -> None:
    """Wait, on the running loop (whichever it is), until every record has ended."""
    pending = [r for r in records if r.status == PENDING]
    if not pending:
        return
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def settle() -> None:
        if not done.done():
            done.set_result(None)

    def wake() -> None:
        if asyncio._get_running_loop() is loop:
            settle()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(settle)

    countdown = _Countdown(len(pending), wake, None)
    for rec in pending:
        rec.add_callback(countdown)
    await done
