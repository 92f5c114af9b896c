"""A concurrent.futures.Executor on top of a Client.

It keeps the standard library's contract, which is what code ported from a ThreadPoolExecutor
relies on:

- ``submit(fn, *args, **kwargs)`` passes every keyword to ``fn`` (``timeout=``, ``key=``,
  ``priority=``... included). Task options are given once, to ``client.get_executor(...)``,
  and checked there.
- ``cancel()`` of a future whose task has not finished returns True, the future is then
  ``cancelled()``, and the task is cancelled on the cluster. The client does not hear when a
  task starts (that would cost a message per task), so a future is "pending" until it is
  done, never "running": ``running()`` is False, and cancelling a task that had already
  started stops it too (as ``Future.cancel()`` does), rather than letting it run on with
  nobody to receive its result.
- ``shutdown(cancel_futures=True)`` cancels what is not done; ``concurrent.futures.wait``
  and ``as_completed`` see cancelled futures as done.
- ``map(..., timeout=T)`` measures T from the call to ``map``; closing or dropping its
  iterator, or an error or timeout out of it, cancels the tasks not done yet; results already
  yielded are not kept.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from concurrent.futures._base import (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING,
                                      RUNNING)
from typing import TYPE_CHECKING, Any, Callable, Iterable

from . import future as nbf
from . import records
from .options import build_options, check_option_names

if TYPE_CHECKING:
    from .client import Client


class TaskFuture(concurrent.futures.Future):
    """A standard library future that follows one task on the cluster."""

    _invoke_callbacks: Callable[[], None]   # the standard library's (its stubs leave it out)

    def __init__(self, executor: "ClientExecutor", task: nbf.Future) -> None:
        super().__init__()
        self._executor = executor
        self._task: nbf.Future | None = task   # holds the task (and its result) on the cluster

    def cancel(self) -> bool:
        task = self._mark_cancelled()
        if task is None:
            return self.cancelled()
        task.client.cancel([task])
        self._invoke_callbacks()
        return True

    def _mark_cancelled(self) -> nbf.Future | None:
        """Pending -> cancelled, waking ``wait()``/``as_completed`` (as the standard library's
        ``cancel`` plus ``set_running_or_notify_cancel`` do); the task to cancel, or None."""
        with self._condition:
            if self._state in (RUNNING, FINISHED, CANCELLED, CANCELLED_AND_NOTIFIED):
                return None
            self._state = CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
            task, self._task = self._task, None
        self._executor._forget(self)
        return task

    def _settle(self, value: Any = None, exc: BaseException | None = None) -> None:
        try:
            if exc is None:
                self.set_result(value)
            else:
                self.set_exception(exc)
        except concurrent.futures.InvalidStateError:   # cancelled meanwhile
            pass
        self._task = None   # the value is here now: the cluster may drop it
        self._executor._forget(self)

    def _on_done(self, fut: nbf.Future) -> None:
        """On the client's I/O thread, when the task ended."""
        rec = fut._record
        if rec is None or self._state != PENDING:
            return
        if rec.status == records.CANCELLED:
            if self._mark_cancelled() is not None:
                self._invoke_callbacks()
        elif rec.status != records.FINISHED:
            self._settle(exc=rec.error())
        elif rec.value is not records.NO_VALUE:
            try:
                value = rec.loaded()
            except BaseException as e:  # noqa: BLE001 - the future's outcome
                self._settle(exc=e)
            else:
                self._settle(value)
        else:   # still on a worker: fetched on the client's loop, which this must not block
            async def fetch():
                try:
                    value = await fut
                except BaseException as e:  # noqa: BLE001
                    self._settle(exc=e)
                else:
                    self._settle(value)

            asyncio.run_coroutine_threadsafe(fetch(), fut.client.loop)


class ClientExecutor(concurrent.futures.Executor):
    """Futures from this executor are standard library futures: ``concurrent.futures.wait``
    and ``as_completed`` treat them exactly as they treat a ThreadPoolExecutor's."""

    def __init__(self, client: Client, **options: Any) -> None:
        check_option_names(options, "get_executor()")
        self._client = client
        self._raw_options = options
        self._options = build_options(options)   # a bad value raises here, not at each task
        # countdown= and expires= in seconds count from each submit
        self._per_task = "countdown" in options or "expires" in options
        self._pending: set[TaskFuture] = set()
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable, /, *args, **kwargs) -> concurrent.futures.Future:
        if self._shutdown:
            raise RuntimeError("cannot submit to an executor after shutdown")
        options = build_options(self._raw_options) if self._per_task else self._options
        # not client.submit: none of kwargs is taken as a task option
        return self._wrap(self._client.submit_call(fn, args, kwargs, options))

    def _wrap(self, task: nbf.Future) -> TaskFuture:
        cf = TaskFuture(self, task)
        with self._lock:
            self._pending.add(cf)
        task.add_done_callback(cf._on_done)
        return cf

    def _forget(self, cf: TaskFuture) -> None:
        with self._lock:
            self._pending.discard(cf)

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1) -> "MapResults":
        """Results in order; ``timeout`` counts from this call (the standard library's
        ``map``), and ``concurrent.futures.TimeoutError`` is raised once it has passed."""
        end = None if timeout is None else time.monotonic() + timeout
        if self._shutdown:
            raise RuntimeError("cannot submit to an executor after shutdown")
        tasks = self._client.map(fn, *iterables, **self._raw_options)
        return MapResults([self._wrap(t) for t in tasks], end)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shutdown = True
        with self._lock:
            pending = list(self._pending)
        if cancel_futures:
            cancel_all(pending)
        if wait:
            concurrent.futures.wait(pending)


def cancel_all(futures: list) -> None:
    """``cancel()`` each of ``futures``, with one message to the cluster for all."""
    marked = [(cf, task) for cf in futures if (task := cf._mark_cancelled()) is not None]
    if marked:
        tasks = [task for _, task in marked]
        tasks[0].client.cancel(tasks)
        del tasks
        for cf, _ in marked:
            cf._invoke_callbacks()


class MapResults:
    """The iterator ``map`` returns: it pops each future as it yields its result, and cancels
    the rest when closed, dropped, or when an error or the timeout comes out of it."""

    def __init__(self, futures: list, end: float | None) -> None:
        futures.reverse()
        self._futures = futures
        self._end = end

    def __iter__(self) -> "MapResults":
        return self

    def __next__(self) -> Any:
        if not self._futures:
            raise StopIteration
        cf = self._futures.pop()
        try:
            return cf.result(None if self._end is None else self._end - time.monotonic())
        except BaseException:
            self._futures.append(cf)
            self.close()
            raise
        finally:
            del cf

    def close(self) -> None:
        futures, self._futures = self._futures, []
        if futures:
            cancel_all(futures)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:   # interpreter shutdown
            pass
