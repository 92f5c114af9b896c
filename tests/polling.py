"""Waiting on a condition of other processes (files, heartbeats, process tables).

No event crosses from those processes to the test, so these poll with a deadline; everything
that has an event is waited on through it instead."""

from __future__ import annotations

import time


def wait_until(predicate, what: str, timeout: float = 20.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
