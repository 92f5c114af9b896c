"""The data every plot reads: the latest snapshot and a bounded history of task events.

A :class:`Feed` asks its source for a snapshot (``fetch(since, transfers_since) -> dict``, see
:mod:`nbcluster.state.snapshot`) at most every ``min_interval`` seconds, however many plots and
browser sessions read it, and keeps at most ``history`` task and transfer entries. Plots hold
their own cursors into it (:meth:`Feed.tasks_since`).

Taking a snapshot walks every task, so its cost grows with the number of tasks. The feed keeps
that cost under ``budget`` of the wall time: a snapshot that took 10 ms is not repeated for
0.5 s (with the default 2 %). Nothing is fetched while nobody reads.

Parts of a snapshot that cost more (the task control tables, the task graph) are fetched only
while a page that shows them is open: such a page calls :meth:`Feed.want` and, when its
session ends, :meth:`Feed.unwant`.

While fetched, the feed also keeps per worker a short history of CPU, memory and network
(bytes moved between workers, from the transfer log) for the system page, and per function
the run time of the tasks it has seen finish, for the task groups page.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from itertools import islice
from typing import Any

HISTORY = 10_000
SYSTEM_HISTORY = 600   # samples per worker (5 minutes at two a second)
MAX_RATE = 4.0   # plot refreshes per second, at most

EMPTY: dict = {"workers": [], "tasks": {}, "prefixes": {}, "task_log": [], "cursor": 0,
               "transfer_log": [], "transfer_cursor": 0, "now": 0.0,
               "totals": {"tasks": 0, "tasks_completed": 0, "tasks_failed": 0, "workers": 0,
                          "threads": 0, "processing": 0, "nbytes": 0, "rss": 0,
                          "memory_limit": 0, "clients": 0}}


class RateMeter:
    """Events per second from samples of an ever-growing total, over the last ``window`` s."""

    def __init__(self, window: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, total: int, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        samples = self._samples
        if samples and total < samples[-1][1]:   # another scheduler: start again
            samples.clear()
        samples.append((now, total))
        # keep one sample older than the window, so a slow poller still gets a rate
        while len(samples) > 2 and samples[1][0] < now - self.window:
            samples.popleft()

    def rate(self) -> float:
        samples = self._samples
        if len(samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = samples[0], samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


def _tail(log: deque, total: int, since: int) -> list:
    n = min(max(total - since, 0) if since <= total else len(log), len(log))
    out = list(islice(reversed(log), n))
    out.reverse()
    return out


class Feed:
    """Shared, throttled snapshots of one scheduler, with task and transfer history."""

    def __init__(self, fetch: Callable[[int, int], dict], *, min_interval: float = 0.2,
                 budget: float = 0.02, history: int = HISTORY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.fetch = fetch
        self.min_interval = min_interval
        self.budget = budget
        self.clock = clock
        self.data: dict = EMPTY
        self.tasks: deque = deque(maxlen=history)      # [key, worker, start, stop, ok]
        self.tasks_total = 0
        self.transfers: deque = deque(maxlen=history)  # [key, from, to, start, stop, nbytes]
        self.transfers_total = 0
        self.rate = RateMeter(clock=clock)
        self.version = 0
        self.error: str | None = None
        self._cursor = 0
        self._transfer_cursor = 0
        self._last = float("-inf")
        self._cost = 0.0
        self.wants: Counter[str] = Counter()   # snapshot extras the open pages ask for
        # worker -> deque of (time, cpu %, rss, bytes/s received, bytes/s sent, clock())
        self.system: dict[str, deque] = {}
        self.prefix_time: dict[str, list[float]] = {}  # prefix -> [seconds, tasks seen]
        self._lock = threading.Lock()

    def want(self, extra: str) -> None:
        """A page that shows ``extra`` (see :func:`~nbcluster.state.snapshot.snapshot`) opened."""
        with self._lock:
            self.wants[extra] += 1

    def unwant(self, extra: str) -> None:
        with self._lock:
            self.wants[extra] -= 1
            if self.wants[extra] <= 0:
                del self.wants[extra]

    @property
    def extras(self) -> frozenset[str]:
        return frozenset(self.wants)

    def refresh(self, force: bool = False) -> bool:
        """Take a new snapshot if the last one is old enough; True if it did."""
        with self._lock:
            now = self.clock()
            wait = max(self.min_interval, self._cost / self.budget if self.budget else 0.0)
            if not force and now - self._last < wait:
                return False
            start = self.clock()
            try:
                snap = self.fetch(self._cursor, self._transfer_cursor)
            except Exception as e:   # a plot must survive a scheduler that went away
                self.error = f"{type(e).__name__}: {e}"
                self._last = now
                return False
            end = self.clock()
            self._cost = end - start
            self._last = end
            self.error = None
            self.apply(snap, end)
            return True

    def apply(self, snap: dict, now: float | None = None) -> None:
        """Take in a snapshot fetched with this feed's cursors."""
        log = snap.get("task_log") or []
        self.tasks.extend(log)
        self.tasks_total += len(log)
        self._cursor = int(snap.get("cursor", self._cursor))
        transfers = snap.get("transfer_log") or []
        self.transfers.extend(transfers)
        self.transfers_total += len(transfers)
        self._transfer_cursor = int(snap.get("transfer_cursor", self._transfer_cursor))
        totals = snap.get("totals") or {}
        self.rate.add(int(totals.get("tasks_completed", 0)) + int(totals.get("tasks_failed", 0)),
                      now)
        for entry in log:
            spent = self.prefix_time.get(prefix := str(entry[0]).rsplit("-", 1)[0])
            if spent is None:
                spent = self.prefix_time[prefix] = [0.0, 0]
            spent[0] += max(0.0, float(entry[3]) - float(entry[2]))
            spent[1] += 1
        self._sample_system(snap, transfers, self.clock() if now is None else now)
        self.data = snap
        self.version += 1

    def _sample_system(self, snap: dict, transfers: list, now: float) -> None:
        t = float(snap.get("now") or 0.0) or time.time()
        received: dict[str, int] = {}
        sent: dict[str, int] = {}
        for _, source, target, _, _, nbytes in transfers:
            received[target] = received.get(target, 0) + int(nbytes)
            sent[source] = sent.get(source, 0) + int(nbytes)
        live = set()
        for w in snap.get("workers") or ():
            address = w["address"]
            live.add(address)
            samples = self.system.get(address)
            if samples is None:
                samples = self.system[address] = deque(maxlen=SYSTEM_HISTORY)
            dt = max(1e-3, now - samples[-1][5]) if samples else 1.0
            samples.append((t, float(w.get("cpu", 0.0)), int(w.get("rss", 0)),
                            received.get(address, 0) / dt, sent.get(address, 0) / dt, now))
        for gone in set(self.system) - live:
            del self.system[gone]

    def tasks_since(self, cursor: int) -> tuple[list, int]:
        """Task entries after ``cursor`` (at most ``history``) and the cursor to pass next."""
        return _tail(self.tasks, self.tasks_total, cursor), self.tasks_total

    def transfers_since(self, cursor: int) -> tuple[list, int]:
        return _tail(self.transfers, self.transfers_total, cursor), self.transfers_total


def call_on(loop: asyncio.AbstractEventLoop, fn: Callable[[], Any], timeout: float = 5.0,
            cancelled: Callable[[], bool] = lambda: False) -> Any:
    """``fn()`` run on ``loop``'s thread; wait here for its result (or error).

    Waits in short slices and gives up when ``cancelled()`` becomes true, so a thread that
    waits for a loop which is itself waiting for that thread (closing) is never stuck.
    """
    try:
        if asyncio.get_running_loop() is loop:
            return fn()
    except RuntimeError:
        pass
    fut: concurrent.futures.Future = concurrent.futures.Future()

    def run() -> None:
        if fut.set_running_or_notify_cancel():
            try:
                fut.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
                fut.set_exception(e)

    loop.call_soon_threadsafe(run)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fut.result(min(0.05, max(0.0, deadline - time.monotonic())))
        except concurrent.futures.TimeoutError:
            if cancelled() or time.monotonic() >= deadline:
                fut.cancel()
                raise TimeoutError("the scheduler's loop did not answer") from None


def scheduler_feed(scheduler: Any, loop: asyncio.AbstractEventLoop | None = None,
                   cancelled: Callable[[], bool] = lambda: False, log_limit: int | None = None,
                   **kwargs: Any) -> Feed:
    """A feed that reads a Scheduler's state: on its ``loop``, from another thread, or directly
    when ``loop`` is None (then call it on the scheduler's loop). ``log_limit``: at most this
    many (the newest) task and transfer entries per snapshot."""
    from ..state.snapshot import snapshot

    def fetch(since: int, tsince: int) -> dict:
        extras = feed.extras

        def take() -> dict:
            return snapshot(scheduler.state, since, tsince, log_limit=log_limit, extras=extras)
        return take() if loop is None else call_on(loop, take, cancelled=cancelled)

    feed = Feed(fetch, **kwargs)
    return feed


def client_snapshot(client: Any, since: int = 0, transfers_since: int = 0) -> dict:
    """Ask the scheduler for a snapshot through a (synchronous) Client."""
    return client.snapshot(since=since, transfers_since=transfers_since)


def client_feed(client: Any, **kwargs: Any) -> Feed:
    """A feed that asks the scheduler for snapshots over the client's connection."""
    return Feed(lambda since, tsince: client_snapshot(client, since, tsince), **kwargs)
