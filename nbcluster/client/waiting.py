"""wait and as_completed over futures (of one or several clients)."""

from __future__ import annotations

import queue
import threading
from collections import namedtuple
from typing import Iterable, Iterator

from .blocking import get_from, wait_event
from .future import PENDING, Future
from .structure import collect_futures

DoneAndNotDone = namedtuple("DoneAndNotDone", ["done", "not_done"])

FIRST_COMPLETED = "FIRST_COMPLETED"
FIRST_EXCEPTION = "FIRST_EXCEPTION"
ALL_COMPLETED = "ALL_COMPLETED"


def wait(fs: Future | Iterable[Future], timeout: float | None = None,
         return_when: str = ALL_COMPLETED, progress: bool = False) -> DoneAndNotDone:
    """Wait until the futures are done: all, the first, or the first to fail.
    ``progress=True`` shows a progress bar while waiting (a widget in a notebook)."""
    if return_when not in (FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED):
        raise ValueError(f"return_when must be one of ALL_COMPLETED, FIRST_COMPLETED, "
                         f"FIRST_EXCEPTION; got {return_when!r}")
    futures = collect_futures(fs)
    if progress and futures:
        hook = type(futures[0].client)._progress_hook
        if hook is not None:
            hook(futures)
    event = threading.Event()
    lock = threading.Lock()
    pending = [f for f in futures if f._record.status == PENDING]
    remaining = [len(pending)]

    def done_early() -> bool:
        if return_when == FIRST_COMPLETED:
            return len(pending) < len(futures)
        if return_when == FIRST_EXCEPTION:
            return any(f.status not in ("pending", "finished") for f in futures)
        return False

    def on_done(rec) -> None:
        with lock:
            remaining[0] -= 1
            if (remaining[0] == 0 or return_when == FIRST_COMPLETED
                    or (return_when == FIRST_EXCEPTION and rec.status != "finished")):
                event.set()

    if pending and not done_early():
        for f in pending:
            f._record.add_callback(on_done)
        if not wait_event(event, timeout):
            from concurrent.futures import TimeoutError as CFTimeout

            raise CFTimeout(f"{remaining[0]} of {len(futures)} futures did not finish "
                            f"within {timeout:g} s") if return_when == ALL_COMPLETED else \
                TimeoutError("no future finished in time")
    done = {f for f in futures if f.done()}
    return DoneAndNotDone(done, {f for f in futures if f not in done})


class as_completed(Iterator):  # noqa: N801 - reads like the function it mirrors
    """Iterate over futures in the order they finish; ``add()`` more while iterating.

    With ``with_results=True`` yields ``(future, result)`` pairs (errors are raised, unless
    ``raise_errors=False``, when the exception takes the result's place).
    """

    def __init__(self, futures: Iterable[Future] = (), with_results: bool = False,
                 raise_errors: bool = True, timeout: float | None = None) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._outstanding = 0
        self._lock = threading.Lock()
        self.with_results = with_results
        self.raise_errors = raise_errors
        self.timeout = timeout
        for f in futures:
            self.add(f)

    def add(self, future: Future) -> None:
        with self._lock:
            self._outstanding += 1
        future._record.add_callback(lambda _rec, f=future: self._queue.put(f))

    def update(self, futures: Iterable[Future]) -> None:
        for f in futures:
            self.add(f)

    def count(self) -> int:
        return self._outstanding

    def is_empty(self) -> bool:
        return self._outstanding == 0

    def __iter__(self) -> "as_completed":
        return self

    def __next__(self):
        with self._lock:
            if self._outstanding == 0:
                raise StopIteration
        try:
            f = get_from(self._queue, self.timeout)
        except queue.Empty:
            raise TimeoutError(f"no future finished within {self.timeout:g} s") from None
        with self._lock:
            self._outstanding -= 1
        if not self.with_results:
            return f
        try:
            return f, f.result()
        except BaseException as e:  # noqa: BLE001
            if self.raise_errors:
                raise
            return f, e

    def batches(self) -> Iterator[list]:
        """Yield lists of everything finished so far (at least one each time)."""
        while not self.is_empty():
            batch = [next(self)]
            while True:
                try:
                    f = self._queue.get_nowait()
                except queue.Empty:
                    break
                with self._lock:
                    self._outstanding -= 1
                batch.append((f, f.result()) if self.with_results else f)
            yield batch
