"""Future: a handle on a task's result held on the cluster.

What a Future asks of its client is public and small: ``hold_key(key)`` and
``release_key(record)`` (the handles on a key, counted), ``gather_async(future)`` (a value
that did not travel with its completion, fetched from a worker holding it) and
``fetch_sync`` (that fetch for a blocking caller, until its deadline), ``loop`` and
``asynchronous`` (where that fetch runs), and the user's own ``cancel``, ``retry`` and
``attempts``. Waiting is the record's business (see records.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from ..durations import optional_timeout
from ..errors import ClusterError
from ..protocol.serialize import TaskRef
from .records import CANCELLED, FINISHED, NO_VALUE, PENDING, KeyRecord, block_on, ended


class Future(TaskRef):
    """The result of a task on the cluster. Passing it to ``submit`` makes a dependency."""

    __slots__ = ("key", "client", "_record", "__weakref__")

    def __init__(self, key: str, client) -> None:
        self.key = key
        self.client = client
        self._record: KeyRecord = client.hold_key(key)

    # ------------------------------------------------------------------ state
    @property
    def status(self) -> str:
        return self._record.status

    def done(self) -> bool:
        return self._record.status != PENDING

    def cancelled(self) -> bool:
        return self._record.status == CANCELLED

    def result(self, timeout: Any = None) -> Any:
        """Wait for the task; return its value or raise its exception (original type).
        ``timeout`` (seconds or text) covers the fetch of a value left on a worker too."""
        rec = self._record
        seconds = optional_timeout(timeout)
        deadline = None if seconds is None else time.monotonic() + seconds
        if rec.status == PENDING:
            self._block(seconds)
        if rec.status == FINISHED:
            value = rec.loaded()
            if value is NO_VALUE:        # on a worker: fetched from one holding it
                self._no_async_client()
                client = self.client
                value = client.fetch_sync(client.gather_async(self), deadline, seconds,
                                          f"the result of {self.key}")
            return value
        exc = rec.error()
        del self, rec   # the traceback keeps this frame: hold no future in it
        raise exc

    def exception(self, timeout: float | None = None) -> BaseException | None:
        rec = self._record
        if rec.status == PENDING:
            self._block(timeout)
        return None if rec.status == FINISHED else rec.error()

    def _block(self, timeout) -> None:
        self._no_async_client()
        block_on([self._record], timeout, self.key)

    def _no_async_client(self) -> None:
        if self.client.asynchronous:
            raise ClusterError("use `await future` (or await client.gather) with an "
                               "asynchronous client")

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
        rec = self._record
        self._record = None  # type: ignore[assignment]   # released: no longer usable
        if rec is not None:
            self.client.release_key(rec)

    @property
    def attempts(self) -> list[dict]:
        """Each attempt so far: worker, start (epoch seconds), duration, exception (text)."""
        return self.client.attempts(self)

    def add_done_callback(self, fn: Callable[["Future"], None]) -> None:
        """Call ``fn(self)`` when the task ends (from the client's I/O thread, or at once)."""
        self._record.add_callback(lambda _rec: fn(self))

    def __await__(self):
        """On any loop; the value, if it did not travel with the completion, is fetched on the
        client's loop without blocking this one."""
        rec = self._record
        if rec.status == PENDING:
            yield from ended([rec]).__await__()
        if rec.status != FINISHED:
            raise rec.error()
        value = rec.loaded()
        if value is NO_VALUE:
            client = self.client
            fetch = client.gather_async(self)
            if asyncio.get_running_loop() is client.loop:
                value = yield from fetch.__await__()
            else:
                value = yield from asyncio.wrap_future(
                    asyncio.run_coroutine_threadsafe(fetch, client.loop)).__await__()
        return value

    def __del__(self) -> None:
        rec = getattr(self, "_record", None)
        if rec is not None:
            try:
                self.client.release_key(rec)
            except Exception:  # interpreter shutdown
                pass

    # Where an unpickled Future belongs (set by nbcluster: get_client, the task's client in
    # a task, else the default client).
    _client_here: Callable[[], Any] | None = None

    def __reduce__(self):
        # In a task's result, a value put in a queue...: it becomes a future of the client of
        # the process that unpickles it, which tells the scheduler it wants the key. (Passed
        # to submit, a future is an input instead: a persistent id, see serialize.py.)
        return (_unpickle_future, (self.key,))

    def __repr__(self) -> str:
        rec = self._record
        extra = f", type: {rec.typ}" if rec.typ else ""
        return f"<Future: {self.status}{extra}, key: {self.key}>"

    def _repr_html_(self) -> str:
        colour = {"finished": "#2a8", "error": "#c33", "cancelled": "#888", "lost": "#c33"}.get(
            self.status, "#e90")
        return (f"<b>Future: {self.key}</b> <span style='color:{colour}'>status: "
                f"{self.status}</span>" + (f", type: {self._record.typ}" if self._record.typ else ""))


def _unpickle_future(key: str) -> Future:
    find = Future._client_here
    if find is None:
        raise ClusterError(f"cannot unpickle the future of {key!r}: no client here")
    return find()._future_of(key)
