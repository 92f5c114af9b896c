"""Waiting on a condition of other processes (files, process tables, a cluster's view of its
workers): no event crosses from them to the test, so this polls, with a deadline. Wait on an
event (a future, a threading.Event) wherever there is one."""

from __future__ import annotations

import time


def wait_until(predicate, what: str, timeout: float = 20.0, interval: float = 0.05) -> None:
    """Return once ``predicate()`` is true; raise AssertionError naming ``what`` after
    ``timeout`` seconds. Polls every millisecond at first, backing off to ``interval``."""
    deadline = time.monotonic() + timeout
    pause = min(0.001, interval)
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(pause)
        pause = min(pause * 2, interval)
