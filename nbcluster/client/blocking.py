"""Blocking waits of the user's thread that Ctrl-C (Jupyter's stop button) always ends at once.

A process-directed SIGINT goes to one of the process's threads. If that is not the main thread
(a kernel has several: ZMQ, I/O, the client's own), the main thread's blocked wait is not woken,
and the KeyboardInterrupt only arrives when the wait ends on its own (measured: 1.5 s late, once
in a few full test runs). So the main thread waits in slices; each wake-up runs the pending
signal handler. A wait that ends within the first slice (almost all of them) costs nothing
more.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from typing import Any

SLICE = 0.1      # seconds: the longest a stop request can go unnoticed


def wait_event(event: threading.Event, timeout: float | None, sliced: bool = False) -> bool:
    """``event.wait(timeout)``, interruptible on the main thread (or anywhere if ``sliced``:
    a task's thread, where a cancel arrives as an exception)."""
    if not sliced and threading.current_thread() is not threading.main_thread():
        return event.wait(timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        step = SLICE if deadline is None else min(SLICE, deadline - time.monotonic())
        if step <= 0:
            return event.is_set()
        if event.wait(step):
            return True


def get_from(q: "queue.Queue", timeout: float | None) -> Any:
    """``q.get(timeout=timeout)``, interruptible on the main thread (raises queue.Empty)."""
    if threading.current_thread() is not threading.main_thread():
        return q.get(timeout=timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        step = SLICE if deadline is None else min(SLICE, deadline - time.monotonic())
        if step <= 0:
            return q.get_nowait()
        try:
            return q.get(timeout=step)
        except queue.Empty:
            continue


def wait_future(future: concurrent.futures.Future, timeout: float | None) -> Any:
    """``future.result(timeout)``, interruptible on the main thread."""
    if threading.current_thread() is threading.main_thread():
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        if not wait_event(done, timeout):
            raise concurrent.futures.TimeoutError()
    return future.result(timeout)
