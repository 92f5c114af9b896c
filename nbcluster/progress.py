"""Progress of a set of futures: a live text bar in a terminal (widgets in ``nbcluster.jupyter``)."""

from __future__ import annotations

import sys
import threading
import time
from typing import Iterable, TextIO

from .client.structure import collect_futures


class TextProgress:
    """Counts futures as they finish and redraws one line, at most ``rate`` times a second."""

    def __init__(self, futures: Iterable, label: str = "", stream: TextIO | None = None,
                 width: int = 40, rate: float = 10.0) -> None:
        self.futures = collect_futures(futures)
        self.total = len(self.futures)
        self.done = 0
        self.errors = 0
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self.interval = 1.0 / rate
        self.start = time.perf_counter()
        self._last = 0.0
        self._lock = threading.Lock()
        self.finished = threading.Event()
        if self.total == 0:
            self.finished.set()
        for f in self.futures:
            f.add_done_callback(self._one_done)

    def _one_done(self, fut) -> None:
        with self._lock:
            self.done += 1
            if fut.status != "finished":
                self.errors += 1
            now = time.perf_counter()
            last = self.done == self.total
            if last or now - self._last >= self.interval:
                self._last = now
                self.draw()
            if last:
                self.finished.set()

    def draw(self) -> None:
        frac = self.done / self.total if self.total else 1.0
        filled = int(self.width * frac)
        bar = "#" * filled + "-" * (self.width - filled)
        err = f" {self.errors} erred" if self.errors else ""
        elapsed = time.perf_counter() - self.start
        self.stream.write(f"\r{self.label}[{bar}] {self.done}/{self.total}{err} "
                          f"{elapsed * 1000:.0f} ms")
        if self.done == self.total:
            self.stream.write("\n")
        self.stream.flush()

    def wait(self, timeout: float | None = None) -> bool:
        return self.finished.wait(timeout)


def progress(*futures, notebook: bool | None = None, label: str = "", wait: bool | None = None,
             rate: float = 10.0):
    """Show the progress of futures (any nesting of lists, tuples, dicts of futures).

    In a notebook: a live bar per function name (ipywidgets), updated from the client's I/O
    thread, so it moves while other cells run; returns a ``ProgressBar`` at once (pass
    ``wait=True`` to block until done). Elsewhere: a text bar on stderr that waits until every
    future is done (``wait=False`` returns the ``TextProgress`` at once).
    """
    if notebook is None:
        notebook = _in_notebook()
    if notebook:
        from .jupyter.widgets import progress_widget

        widget = progress_widget(futures, rate=rate)
        if wait:
            widget.wait()
        return widget
    bar = TextProgress(futures, label=label, rate=rate)
    if wait is None or wait:
        bar.wait()
    return bar


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except Exception:
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell" and _have_widgets()


def _have_widgets() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True
