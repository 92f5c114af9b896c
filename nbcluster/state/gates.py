"""What holds a ready task back: rate and concurrency limits, and timers (countdown, eta,
retry back-off, expiry). Pure: time arrives as numbers from the caller."""

from __future__ import annotations

import difflib
import heapq
import itertools
import random
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .model import Queued, TaskState


class Limit:
    """A budget shared by every task under one limit key, across the whole cluster.

    ``interval`` (seconds between starts: period / count) spaces starts evenly, as a token
    bucket of capacity one; ``concurrency`` caps how many run at once."""

    __slots__ = ("key", "interval", "concurrency", "next_start", "running", "held")

    def __init__(self, key: str) -> None:
        self.key = key
        self.interval: float | None = None
        self.concurrency: int | None = None
        self.next_start = 0.0
        self.running = 0
        self.held: list[Queued] = []   # heap: waiting for the budget

    def set(self, rate: list[float] | None, concurrency: int | None) -> None:
        self.interval = rate[1] / rate[0] if rate else None
        self.concurrency = concurrency

    def can_start(self, now: float) -> bool:
        if self.concurrency is not None and self.running >= self.concurrency:
            return False
        return self.interval is None or now >= self.next_start

    def started(self, now: float) -> None:
        self.running += 1
        if self.interval is not None:
            self.next_start = max(now, self.next_start) + self.interval

    def wake_time(self, now: float) -> float | None:
        """When a held task could start (None: not time but a finishing task or a free
        thread lets it go, and that is an event of its own)."""
        if not self.held or self.interval is None or self.next_start <= now:
            return None
        if self.concurrency is not None and self.running >= self.concurrency:
            return None
        return self.next_start

    def describe(self) -> dict[str, Any]:
        return {"rate_per_second": (1 / self.interval) if self.interval else None,
                "concurrency": self.concurrency, "running": self.running,
                "waiting": len(self.held)}


class Timers:
    """Tasks to act on at a time: ("start", task) when a delay ends, ("expire", task)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str, TaskState]] = []
        self._ids = itertools.count()

    def add(self, when: float, kind: str, ts: TaskState) -> None:
        heapq.heappush(self._heap, (when, next(self._ids), kind, ts))

    def due(self, now: float) -> list[tuple[str, TaskState]]:
        out = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, kind, ts = heapq.heappop(heap)
            out.append((kind, ts))
        return out

    def next_time(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)


def backoff(base: float, count: int, cap: float | None, jitter: bool,
            rng: random.Random) -> float:
    """Exponential back-off: base, 2*base, 4*base ... up to ``cap``; full jitter if asked."""
    delay: float = base * (2 ** max(0, count - 1))
    if cap is not None:
        delay = min(delay, cap)
    if jitter:
        delay = rng.uniform(0, delay)
    return delay


def queue_typo(requested: list[str], known: set[str]) -> str | None:
    """An error if a worker asks for a queue that looks like a misspelling of a known one."""
    for name in requested:
        if name in known:
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
        if close:
            return (f"unknown queue {name!r}: did you mean {close[0]!r}? "
                    f"(known queues: {', '.join(sorted(known))})")
    return None
