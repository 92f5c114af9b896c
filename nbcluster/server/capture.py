"""Capture what tasks print or log, per task, so the worker can forward it to the client.

``sys.stdout``/``sys.stderr`` are replaced once per process by routers: text written from a
thread that is running a task goes to that task's sink; anything else goes to the real stream.
Root logging records emitted from a task thread are forwarded the same way (stream "log").
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Callable

from ..protocol import messages as m

Sink = Callable[[str, m.Stream, str], None]     # (key, stream, text)
_current = threading.local()
_lock = threading.Lock()
_installed = False


def set_current_task(key: str | None, sink: Sink | None = None) -> None:
    _current.task = (key, sink) if key is not None else None


def current_key() -> str | None:
    """The key of the task running in this thread, if any."""
    task = getattr(_current, "task", None)
    return None if task is None else task[0]


class _Router:
    def __init__(self, stream_name: str, original) -> None:
        self._name = stream_name
        self._original = original

    def write(self, text: str) -> int:
        task = getattr(_current, "task", None)
        if task is None:
            return self._original.write(text)
        if text:
            task[1](task[0], self._name, text)
        return len(text)

    def flush(self) -> None:
        if getattr(_current, "task", None) is None:
            self._original.flush()

    def __getattr__(self, name):
        return getattr(self._original, name)


class _LogForwarder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        task = getattr(_current, "task", None)
        if task is not None:
            try:
                task[1](task[0], "log", self.format(record) + "\n")
            except Exception:
                self.handleError(record)


def install() -> None:
    """Route task output (idempotent; once per process)."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
        sys.stdout = _Router("stdout", sys.stdout)
        sys.stderr = _Router("stderr", sys.stderr)
        logging.getLogger().addHandler(_LogForwarder())
