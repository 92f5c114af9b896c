"""Future: a handle on a task's result held on the cluster."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Callable

from ..errors import CancelledError, FutureLostError
from ..protocol.serialize import Serialized, TaskRef, loads

PENDING, FINISHED, ERROR, CANCELLED, LOST = "pending", "finished", "error", "cancelled", "lost"
_NO_VALUE = object()


class Future(TaskRef):
    """The result of a task on the cluster. Passing it to ``submit`` makes a dependency."""

    __slots__ = ("key", "client", "_record", "__weakref__")

    def __init__(self, key: str, client, _record: "_KeyRecord | None" = None) -> None:
        self.key = key
        self.client = client
        self._record = _record if _record is not None else client._record_for(key)
        self._record.refs += 1

    # ------------------------------------------------------------------ state
    @property
    def status(self) -> str:
        return self._record.status

    def done(self) -> bool:
        return self._record.status != PENDING

    def cancelled(self) -> bool:
        return self._record.status == CANCELLED

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the task; return its value or raise its exception (original type)."""
        rec = self._record
        if rec.status == PENDING:
            self.client._wait_records([rec], timeout, self.key)
        if rec.status == FINISHED:
            return self.client._value_of(self)
        exc = rec.error()
        del self, rec   # the traceback keeps this frame: hold no future in it
        raise exc

    def exception(self, timeout: float | None = None) -> BaseException | None:
        rec = self._record
        if rec.status == PENDING:
            self.client._wait_records([rec], timeout, self.key)
        return None if rec.status == FINISHED else rec.error()

    def traceback(self, timeout: float | None = None):
        exc = self.exception(timeout)
        return exc.__traceback__ if exc is not None else None

    def cancel(self) -> None:
        self.client.cancel([self])

    def retry(self) -> None:
        """Run the task again if it failed (with the failed tasks it depends on)."""
        self.client.retry([self])

    def release(self) -> None:
        """Drop this handle now rather than at garbage collection."""
        rec, self._record = self._record, None
        if rec is not None:
            self.client._release_ref(rec)

    @property
    def attempts(self) -> list[dict]:
        """Each attempt so far: worker, start (epoch seconds), duration, exception (text)."""
        return self.client.attempts(self)

    def add_done_callback(self, fn: Callable[["Future"], None]) -> None:
        """Call ``fn(self)`` when the task ends (from the client's I/O thread, or at once)."""
        self._record.add_callback(lambda _rec: fn(self))

    def __await__(self):
        rec = self._record
        if rec.status == PENDING:
            loop = asyncio.get_running_loop()
            waiter = loop.create_future()

            def wake(_rec):
                if loop.is_closed():
                    return
                if self.client._loop is loop:
                    if not waiter.done():
                        waiter.set_result(None)
                else:
                    loop.call_soon_threadsafe(lambda: waiter.done() or waiter.set_result(None))

            rec.add_callback(wake)
            yield from waiter.__await__()
        if rec.status == FINISHED:
            if self.client.asynchronous and rec.value is _NO_VALUE:
                return (yield from self.client._fetch_values_async([self]).__await__())[0]
            return self.client._value_of(self)
        raise rec.error()

    def __del__(self) -> None:
        rec = getattr(self, "_record", None)
        if rec is not None:
            try:
                self.client._release_ref(rec)
            except Exception:  # interpreter shutdown
                pass

    def __reduce__(self):
        raise TypeError("a Future is not pickled by value; pass it to submit as an argument")

    def __repr__(self) -> str:
        rec = self._record
        extra = f", type: {rec.typ}" if rec.typ else ""
        return f"<Future: {self.status}{extra}, key: {self.key}>"

    def _repr_html_(self) -> str:
        colour = {"finished": "#2a8", "error": "#c33", "cancelled": "#888", "lost": "#c33"}.get(
            self.status, "#e90")
        return (f"<b>Future: {self.key}</b> <span style='color:{colour}'>status: "
                f"{self.status}</span>" + (f", type: {self._record.typ}" if self._record.typ else ""))


class _KeyRecord:
    """What the client knows of one key, shared by every Future of that key."""

    __slots__ = ("key", "status", "value", "exc", "traceback", "refs", "callbacks", "nbytes",
                 "typ", "cancel_reason", "__weakref__")

    def __init__(self, key: str) -> None:
        self.key = key
        self.status = PENDING
        self.value: Any = _NO_VALUE     # Serialized or plain value as it arrived
        self.exc = None
        self.traceback = None
        self.refs = 0
        self.callbacks: list | None = None
        self.nbytes = 0
        self.typ = ""
        self.cancel_reason = ""

    def add_callback(self, fn: Callable[["_KeyRecord"], None]) -> None:
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
            self.value = _NO_VALUE
            self.exc = self.traceback = None

    def error(self) -> BaseException:
        if self.status == CANCELLED:
            return CancelledError(f"{self.key} was cancelled" +
                                  (f": {self.cancel_reason}" if self.cancel_reason else ""))
        if self.status == LOST:
            return FutureLostError(f"{self.key}: {self.cancel_reason}")
        exc = self.exc
        if type(exc) is Serialized:
            exc = self.exc = _load_exception(exc, self.traceback)
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


_lock = threading.Lock()


def as_cf_future(fut: Future) -> concurrent.futures.Future:
    """A standard library Future that follows ``fut``."""
    cf: concurrent.futures.Future = concurrent.futures.Future()
    cf.set_running_or_notify_cancel()

    def done(f: Future) -> None:
        rec = f._record
        if rec is None:
            return
        if rec.status == FINISHED:
            try:
                cf.set_result(f.result())
            except BaseException as e:  # noqa: BLE001
                cf.set_exception(e)
        elif rec.status == CANCELLED:
            cf.set_exception(rec.error())
        else:
            cf.set_exception(rec.error())

    fut.add_done_callback(done)
    return cf
