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
import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from bokeh.document import Document
from bokeh.events import DocumentReady
from bokeh.layouts import column
from bokeh.models import CustomJS
from bokeh.protocol import Protocol
from jupyter_bokeh import BokehModel

from .components import COMPONENTS, Component
from .feed import MAX_RATE, Feed, client_snapshot

logger = logging.getLogger("nbcluster.dashboard")

DEFAULT_PLOTS = ("task-stream", "memory")
MAX_NEW = 1_000   # task rectangles one update sends to the notebook, at most


def _fetcher(client: Any):
    """``fetch(since, transfers_since)`` for a client, callable from any thread but its loop's."""
    if not getattr(client, "asynchronous", False):
        return lambda since, tsince: client_snapshot(client, since, tsince)

    def fetch(since: int, tsince: int) -> dict:   # an asyncio client: its loop is elsewhere
        coro = client.snapshot(since=since, transfers_since=tsince)   # a coroutine here
        return asyncio.run_coroutine_threadsafe(coro, client.loop).result(10)
    return fetch


class DashboardWidget(BokehModel):
    """A BokehModel whose plots a background thread keeps up to date.

    jupyter_bokeh's front-end hears patches only once its view exists, and reads each as a
    run of three comm messages (header, metadata, content): a view that starts listening in
    the middle of a run reads every later patch out of step. Three things keep it right:

    - each update is one patch, sent as three *identical* messages that each hold both the
      header and the content, so a view reads every patch whatever run it starts in;
    - the view tells the kernel when it has drawn the plots (a small script run on Bokeh's
      ``DocumentReady`` in the browser touches the layout's ``tags``, which comes back);
      updates start then, or after ``wait_for_view`` seconds, because the kernel hears the
      browser only between cells;
    - a view that may have missed patches (it spoke after some were sent, or it appeared
      later: the page was reloaded) is given the whole current state (at most every 2 s).
    """

    def __init__(self, layout: Any, components: Sequence[Component], feed: Feed, client: Any,
                 interval: float, wait_for_view: float = 1.0, **kwargs: Any) -> None:
        super().__init__(layout, **kwargs)
        self.components = list(components)
        self.feed = feed
        self.interval = interval
        self.wait_for_view = wait_for_view
        self._client = client
        self._stop = threading.Event()
        self._view_ready = threading.Event()
        self._lock = threading.RLock()          # the document: updates vs. a view's copy
        self._batch: list | None = None
        self._bundle_time = time.monotonic()
        self._sent_since_bundle = 0
        self._closed = False
        self.updates = 0
        self.resyncs = 0
        layout.on_change("tags", self._on_view_drawn)
        self._thread = threading.Thread(target=self._run, name="nbcluster-dashboard-widget",
                                        daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _client_closed(self) -> bool:
        return bool(getattr(self._client, "_closed", False))

    # ------------------------------------------------------------------ front-end views
    def _on_view_drawn(self, attr: str, old: Any, new: Any) -> None:
        first = not self._view_ready.is_set()
        self._view_ready.set()
        with self._lock:
            now = time.monotonic()
            if self._sent_since_bundle and (first or now - self._bundle_time >= 2.0):
                self._bundle_time = now
                self._sent_since_bundle = 0
                self.resyncs += 1
                self.render_bundle = self._model_to_traits(self._model)

    def _document_patched(self, event: Any) -> None:
        if event.setter is self:        # the change came from the browser
            return
        if self._batch is not None:
            self._batch.append(event)
        else:
            with self._lock:
                self._send_patch([event])

    def _send_patch(self, events: list) -> None:
        msg = Protocol().create("PATCH-DOC", events)
        self._sent_since_bundle += 1
        if msg.buffers:   # binary columns (numpy): Bokeh's own framing
            for part in (msg.header_json, msg.metadata_json, msg.content_json):
                self.send({"msg": "patch", "payload": part})
            for buffer in msg.buffers:
                self.send({"msg": "patch", "payload": json.dumps(buffer.ref)})
                self.send({"msg": "patch"}, [buffer.to_bytes()])
            return
        whole = json.dumps({"msgid": msg.header["msgid"], "msgtype": msg.header["msgtype"],
                            **json.loads(msg.content_json)})
        for _ in range(3):
            self.send({"msg": "patch", "payload": whole})

    # ------------------------------------------------------------------ the updating thread
    def _run(self) -> None:
        deadline = time.monotonic() + self.wait_for_view
        while not self._view_ready.wait(0.05):
            if self._stop.is_set() or time.monotonic() >= deadline:
                break
        wait = 0.0
        while not self._stop.wait(wait):
            wait = self.interval
            if self._client_closed():
                break
            try:
                if self.feed.refresh():
                    self._update()
            except Exception:  # noqa: BLE001 - a plot must not kill the kernel's thread
                if self._client_closed():
                    break
                logger.warning("dashboard widget update failed", exc_info=True)

    def _update(self) -> None:
        with self._lock:
            doc = self._model.document
            self._batch = []
            try:
                doc.hold("combine")
                try:
                    for comp in self.components:
                        comp.update()
                finally:
                    doc.unhold()
                events = self._batch
            finally:
                self._batch = None
            if events:
                self._send_patch(events)
            self.updates += 1

    def stop(self, timeout: float = 5.0) -> None:
        """Stop updating (the plots stay as they are)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def close(self) -> None:
        self.stop()
        if not self._closed:      # BokehModel.close is not idempotent, and __del__ calls it
            self._closed = True
            super().close()


_bokehjs_loaded = False


def load_bokehjs(resources: str = "inline") -> bool:
    """Put BokehJS in the notebook page once per kernel (jupyter_bokeh's views need it).

    ``"inline"`` works offline (it adds ~4 MB to the cell's output: save notebooks without
    outputs); ``"cdn"`` is small but needs the internet. Does nothing outside a kernel.
    """
    global _bokehjs_loaded
    if _bokehjs_loaded:
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return False
    from bokeh.io import output_notebook
    from bokeh.resources import CDN, INLINE

    output_notebook(resources=INLINE if resources == "inline" else CDN, hide_banner=True)
    _bokehjs_loaded = True
    return True


def dashboard_widget(client: Any, plots: Sequence[str] = DEFAULT_PLOTS, interval: float = 0.5,
                     height: int = 260, bokehjs: str | None = "inline",
                     wait_for_view: float = 1.0) -> DashboardWidget:
    """A live widget with the task stream and memory plots (or any of ``COMPONENTS``).

    ``interval`` is the refresh period in seconds (at least 0.25). ``bokehjs`` says how to
    load BokehJS into the page the first time (``"inline"``, ``"cdn"``, or None if the
    notebook already did, e.g. with ``bokeh.io.output_notebook()``). Updates start when the
    notebook has drawn the widget, or after ``wait_for_view`` seconds.
    """
    unknown = [p for p in plots if p not in COMPONENTS]
    if unknown:
        raise ValueError(f"unknown plots {unknown}; choose from {sorted(COMPONENTS)}")
    interval = max(float(interval), 1.0 / MAX_RATE)
    if bokehjs:
        load_bokehjs(bokehjs)
    feed = Feed(_fetcher(client), min_interval=0.0)
    comps = []
    for name in plots:
        cls = COMPONENTS[name]
        if name == "task-stream":
            comps.append(cls(feed, height=height, max_new=MAX_NEW))
        else:
            comps.append(cls(feed, height=height) if name != "workers" else cls(feed))
    layout = column(*[c.root for c in comps], sizing_mode="stretch_width",
                    name="nbcluster-dashboard", tags=[])
    doc = Document()
    doc.add_root(layout)
    # in the browser, once drawn: tell the kernel (after the view has started listening)
    doc.js_on_event(DocumentReady, CustomJS(args={"layout": layout}, code=(
        "setTimeout(() => { layout.tags = [...layout.tags, 'drawn'] }, 100)")))
    return DashboardWidget(layout, comps, feed, client, interval, wait_for_view)
