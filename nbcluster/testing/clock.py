"""Time as data: a clock that moves only when a test moves it."""

from __future__ import annotations


class FakeClock:
    """Starts at ``start`` (seconds) and moves only through :meth:`advance`,
    :meth:`advance_to` and :meth:`wake`. Callable, so it stands in for ``time.time``."""

    def __init__(self, start: float = 100.0) -> None:
        self._now = float(start)

    def now(self) -> float:
        return self._now

    __call__ = now

    def advance(self, seconds: float) -> float:
        """Move ``seconds`` forward; returns the new time."""
        if seconds < 0:
            raise ValueError(f"a clock does not go back ({seconds} s)")
        self._now += seconds
        return self._now

    def advance_to(self, when: float) -> float:
        if when < self._now:
            raise ValueError(f"a clock does not go back (from {self._now} to {when})")
        self._now = float(when)
        return self._now

    def wake(self, state) -> list:
        """Move to ``state``'s next wakeup (a timer or a rate limit due), if it is later than
        now, and call ``state.wake`` then: returns what it sends. Nothing due: ``[]``, and the
        clock stays where it is."""
        when = state.next_wakeup()
        if when is None:
            return []
        self._now = max(self._now, when)
        return state.wake(self._now)

    def __repr__(self) -> str:
        return f"<FakeClock {self._now:.6f}>"
