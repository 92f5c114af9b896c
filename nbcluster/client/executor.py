"""A concurrent.futures.Executor on top of a Client."""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any, Callable, Iterable, Iterator

from .future import FINISHED, _NO_VALUE, Future


class ClientExecutor(concurrent.futures.Executor):
    """Futures from this executor are standard library futures: ``concurrent.futures.wait``
    and ``as_completed`` treat them exactly as they treat a ThreadPoolExecutor's."""

    def __init__(self, client, **submit_kwargs: Any) -> None:
        self._client = client
        self._submit_kwargs = submit_kwargs
        self._futures: set[concurrent.futures.Future] = set()
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable, /, *args, **kwargs) -> concurrent.futures.Future:
        if self._shutdown:
            raise RuntimeError("cannot submit to an executor after shutdown")
        fut = self._client.submit(fn, *args, **self._submit_kwargs, **kwargs)
        return self._wrap(fut)

    def _wrap(self, fut: Future) -> concurrent.futures.Future:
        cf: concurrent.futures.Future = concurrent.futures.Future()
        cf.set_running_or_notify_cancel()
        cf._nbcluster_future = fut  # keeps the task alive while the caller holds cf
        with self._lock:
            self._futures.add(cf)
        client = self._client

        def settle(value=None, exc=None):
            with self._lock:
                self._futures.discard(cf)
            if exc is not None:
                cf.set_exception(exc)
            else:
                cf.set_result(value)

        def on_done(f: Future) -> None:
            rec = f._record
            if rec is None:
                return
            if rec.status != FINISHED:
                settle(exc=rec.error())
            elif rec.value is not _NO_VALUE:
                try:
                    settle(client._value_of(f))
                except BaseException as e:  # noqa: BLE001
                    settle(exc=e)
            else:  # on the I/O thread: fetch without blocking it
                async def fetch():
                    try:
                        settle((await client._fetch_values_async([f]))[0])
                    except BaseException as e:  # noqa: BLE001
                        settle(exc=e)

                client._spawn(fetch())

        fut.add_done_callback(on_done)
        return cf

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1) -> Iterator:
        futures = [self._wrap(f) for f in self._client.map(fn, *iterables, **self._submit_kwargs)]

        def results():
            for cf in futures:
                yield cf.result(timeout)

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shutdown = True
        with self._lock:
            futures = list(self._futures)
        if cancel_futures:
            self._client.cancel([cf._nbcluster_future for cf in futures if not cf.done()])
        if wait:
            concurrent.futures.wait(futures)
