"""wait and as_completed over futures (of one or several clients)."""

from __future__ import annotations

import queue
import threading
import time
from collections import namedtuple
from typing import Any, Iterable, Iterator

from ..durations import optional_timeout
from .blocking import get_from
from .future import Future
from .records import FINISHED, PENDING, wait_until
from .structure import collect_futures

DoneAndNotDone = namedtuple("DoneAndNotDone", ["done", "not_done"])

FIRST_COMPLETED = "FIRST_COMPLETED"
FIRST_EXCEPTION = "FIRST_EXCEPTION"
ALL_COMPLETED = "ALL_COMPLETED"


def wait(fs: Future | Iterable[Future], timeout: Any = None,
         return_when: str = ALL_COMPLETED, progress: bool = False) -> DoneAndNotDone:
    """Wait until the futures are done: all, the first, or the first to fail.
    ``timeout`` is seconds or text (``"10s"``). ``progress=True`` shows a progress bar while
    waiting (a widget in a notebook)."""
    if isinstance(timeout, Future) or isinstance(return_when, Future):
        raise TypeError("wait takes one collection of futures: wait([x, y]), not wait(x, y)")
    if return_when not in (FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED):
        raise ValueError(f"return_when must be one of ALL_COMPLETED, FIRST_COMPLETED, "
                         f"FIRST_EXCEPTION; got {return_when!r}")
    timeout = optional_timeout(timeout)
    futures = _only_futures(fs, "wait")
    if progress and futures:
        hook = type(futures[0].client)._progress_hook
        if hook is not None:
            hook(futures)
    records = [f._record for f in futures]
    pending = [r for r in records if r.status == PENDING]
    if return_when == FIRST_COMPLETED:
        enough = len(pending) < len(records)
        count, stop = 1, None
    elif return_when == FIRST_EXCEPTION:
        enough = any(r.status not in (PENDING, FINISHED) for r in records)
        count, stop = None, (lambda r: r.status != FINISHED)
    else:
        enough, count, stop = False, None, None
    if pending and not enough and not wait_until(pending, timeout, count, stop):
        if return_when != ALL_COMPLETED:
            raise TimeoutError("no future finished in time")
        from concurrent.futures import TimeoutError as CFTimeout

        left = sum(1 for r in pending if r.status == PENDING)
        raise CFTimeout(f"{left} of {len(futures)} futures did not finish within {timeout:g} s")
    done = {f for f in futures if f.done()}
    return DoneAndNotDone(done, {f for f in futures if f not in done})


def _only_futures(fs: Any, caller: str, nested: bool = True) -> list[Future]:
    """The futures in ``fs`` (one, or a collection); a TypeError naming anything else."""
    if isinstance(fs, Future):
        return [fs]
    if isinstance(fs, dict):
        items = list(fs.values())
    elif isinstance(fs, (str, bytes)) or not hasattr(fs, "__iter__"):
        raise TypeError(f"{caller} takes a future or a collection of futures, got "
                        f"{type(fs).__name__} {fs!r:.60}")
    else:
        items = list(fs)
    allowed = (Future, list, tuple, set, frozenset, dict) if nested else Future
    for x in items:
        if not isinstance(x, allowed):
            raise TypeError(f"{caller} takes futures (from submit, map or scatter), got "
                            f"{type(x).__name__} {x!r:.60}")
    return collect_futures(items) if nested else items


class as_completed(Iterator):  # noqa: N801 - reads like the function it mirrors
    """Iterate over futures in the order they finish; ``add()`` more while iterating.

    With ``with_results=True`` yields ``(future, result)`` pairs (errors are raised, unless
    ``raise_errors=False``, when the exception takes the result's place). ``has_ready()``
    says whether ``next`` would return at once; ``next_batch()`` takes everything finished.
    """

    def __init__(self, futures: Iterable[Future] = (), with_results: bool = False,
                 raise_errors: bool = True, timeout: Any = None) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._outstanding = 0
        self._lock = threading.Lock()
        self.with_results = with_results
        self.raise_errors = raise_errors
        self.timeout = optional_timeout(timeout)
        for f in _only_futures(futures, "as_completed", nested=False):
            self.add(f)

    def add(self, future: Future) -> None:
        if not isinstance(future, Future):
            raise TypeError(f"as_completed.add takes a future, got {type(future).__name__} "
                            f"{future!r:.60}")
        with self._lock:
            self._outstanding += 1
        future._record.add_callback(lambda _rec: self._queue.put(future))

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
        start = time.monotonic()
        try:
            f = get_from(self._queue, self.timeout)
        except queue.Empty:
            raise TimeoutError(f"no future finished within {self.timeout:g} s") from None
        with self._lock:
            self._outstanding -= 1
        if not self.with_results:
            return f
        try:   # the timeout covers fetching a value left on a worker too
            left = None if self.timeout is None else \
                max(0.0, self.timeout - (time.monotonic() - start))
            return f, f.result(left)
        except BaseException as e:  # noqa: BLE001
            if self.raise_errors:
                raise
            return f, e

    def has_ready(self) -> bool:
        """True when a future has finished and not been taken yet."""
        return not self._queue.empty()

    def next_batch(self, block: bool = True) -> list:
        """Everything finished and not yet taken; with ``block``, waits for at least one
        (an empty list when nothing is outstanding)."""
        batch = []
        if block and not self.has_ready() and not self.is_empty():
            batch.append(next(self))
        while self.has_ready():
            batch.append(next(self))
        return batch

    def batches(self) -> Iterator[list]:
        """Yield lists of everything finished so far (at least one each time)."""
        while not self.is_empty():
            yield self.next_batch()
