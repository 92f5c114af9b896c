"""The dashboard inline in a notebook, with no extra port: ``dashboard_widget(client)``.

The plots live in a Bokeh document wrapped in jupyter_bokeh's ``BokehModel`` widget, so their
updates travel to the browser over the kernel's own comm channel (this works on Binder and
behind JupyterHub as they are). A background thread asks the scheduler for a snapshot through
the client every ``interval`` seconds and updates the plots; it is the only thread that writes
to the document, and it keeps running while other cells block. It stops when the widget is
closed or the client closes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Sequence

from bokeh.layouts import column
from jupyter_bokeh import BokehModel

from .components import COMPONENTS, Component
from .feed import MAX_RATE, Feed, client_snapshot

logger = logging.getLogger("nbcluster.dashboard")

DEFAULT_PLOTS = ("task-stream", "memory")


def _fetcher(client: Any):
    """``fetch(since, transfers_since)`` for a client, callable from any thread but its loop's."""
    if not getattr(client, "asynchronous", False):
        return lambda since, tsince: client_snapshot(client, since, tsince)

    def fetch(since: int, tsince: int) -> dict:   # an asyncio client: its loop is elsewhere
        coro = client._conn.request("snapshot", since=since, transfers_since=tsince)
        return asyncio.run_coroutine_threadsafe(coro, client._loop).result(10)
    return fetch


class DashboardWidget(BokehModel):
    """A BokehModel whose plots a background thread keeps up to date."""

    def __init__(self, layout: Any, components: Sequence[Component], feed: Feed, client: Any,
                 interval: float, **kwargs: Any) -> None:
        super().__init__(layout, **kwargs)
        self.components = list(components)
        self.feed = feed
        self.interval = interval
        self._client = client
        self._stop = threading.Event()
        self.updates = 0
        self._thread = threading.Thread(target=self._run, name="nbcluster-dashboard-widget",
                                        daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _client_closed(self) -> bool:
        return bool(getattr(self._client, "_closed", False))

    def _run(self) -> None:
        wait = 0.0
        while not self._stop.wait(wait):
            wait = self.interval
            if self._client_closed():
                break
            try:
                if not self.feed.refresh():
                    continue
                doc = self._model.document
                doc.hold("combine")
                try:
                    for comp in self.components:
                        comp.update()
                finally:
                    doc.unhold()
                self.updates += 1
            except Exception:  # noqa: BLE001 - a plot must not kill the kernel's thread
                if self._client_closed():
                    break
                logger.warning("dashboard widget update failed", exc_info=True)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop updating (the plots stay as they are)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def close(self) -> None:
        self.stop()
        super().close()


def dashboard_widget(client: Any, plots: Sequence[str] = DEFAULT_PLOTS, interval: float = 0.5,
                     height: int = 260) -> DashboardWidget:
    """A live widget with the task stream and memory plots (or any of ``COMPONENTS``).

    ``interval`` is the refresh period in seconds (at least 0.25).
    """
    unknown = [p for p in plots if p not in COMPONENTS]
    if unknown:
        raise ValueError(f"unknown plots {unknown}; choose from {sorted(COMPONENTS)}")
    interval = max(float(interval), 1.0 / MAX_RATE)
    feed = Feed(_fetcher(client), min_interval=0.0)
    comps = []
    for name in plots:
        cls = COMPONENTS[name]
        comps.append(cls(feed, height=height) if name != "workers" else cls(feed))
    layout = column(*[c.root for c in comps], sizing_mode="stretch_width",
                    name="nbcluster-dashboard")
    return DashboardWidget(layout, comps, feed, client, interval)
