"""The dashboard the scheduler serves: ``start_dashboard(scheduler, ...)``.

Pages (:data:`PAGES`): ``status`` (the main plots together), ``workers``, ``system``
(per-worker CPU, memory, network), ``groups`` (task groups), ``graph`` (the task graph),
``control`` (queues, limits, delayed tasks), and one page per plot (``task-stream``,
``memory``, ``progress``) for docking; ``pages`` (and ``pages.json``) lists them as JSON
(:func:`pages_index`), plus ``metrics`` (Prometheus) and ``metrics.json`` — see :mod:`.http`.

The scheduler's loop is left alone: the dashboard has its own thread and event loop, where
Bokeh builds pages, serializes documents, serves its 3 MB of JavaScript and talks websockets.
The only work done on the scheduler's loop is :func:`~nbcluster.state.snapshot.snapshot`
(plain data, between two events, so no lock is needed), at most every ``interval`` seconds and
within a budget of its time (see :class:`~.feed.Feed`), and only while someone watches.

The port is bound at once, so :attr:`Dashboard.link` is known immediately; Bokeh (most of a
second to import) is imported by the dashboard's thread on the first page request, or at start
with ``preload=True``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from collections.abc import Iterable
from functools import partial
from typing import Any

from tornado.netutil import bind_sockets

from ..state.snapshot import snapshot
from .feed import MAX_RATE, Feed, call_on, scheduler_feed
from .hosts import HostCheck, host_check, is_loopback
from .links import display_host, format_link, register, unregister
from .metrics import figures
from ..loop_thread import LoopThread

logger = logging.getLogger("nbcluster.dashboard")
MAX_NEW = 1_000    # tasks one refresh adds to a page (and a new page starts with), at most

# page -> (title, components on it, in order). The pages with a header are in the navigation
# bar; the others hold one plot each, to dock beside a notebook (all are in /pages).
PAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "status": ("Status", ("header", "task-stream", "memory", "progress", "workers",
                          "schedules")),
    "workers": ("Workers", ("header", "workers", "memory")),
    "system": ("System", ("header", "system")),
    "groups": ("Task groups", ("header", "groups")),
    "graph": ("Graph", ("header", "graph")),
    "control": ("Task control", ("header", "control")),
    "task-stream": ("Task stream", ("task-stream",)),
    "memory": ("Memory", ("memory",)),
    "progress": ("Progress", ("progress",)),
}
DESCRIPTIONS = {
    "status": "Task stream, memory, progress and workers together",
    "workers": "One row per worker, live",
    "system": "CPU, memory and network over time, per worker",
    "groups": "Tasks by function: count, total time, bytes",
    "graph": "The tasks the scheduler knows, by dependency depth, coloured by state",
    "control": "Queues, limits with their budgets, delayed tasks",
    "task-stream": "One bar per task, per worker thread",
    "memory": "Memory per worker: results, rest of the process, spilled",
    "progress": "Progress by function",
}


def pages_index() -> list[dict]:
    """Every page, for ``/pages``: name, title, relative path, what it shows, and whether it
    is a single plot (to dock) or a full page (in the navigation bar)."""
    return [{"name": name, "title": title, "path": name,
             "description": DESCRIPTIONS.get(name, ""),
             "kind": "page" if "header" in names else "plot"}
            for name, (title, names) in PAGES.items()]


class Dashboard:
    """A running dashboard; ``link`` is the URL of its status page (token included)."""

    def __init__(self, scheduler: Any, scheduler_loop: asyncio.AbstractEventLoop, host: str,
                 port: int, prefix: str, token: str | None, interval: float,
                 hosts: HostCheck | None = None) -> None:
        self.scheduler = scheduler
        self.scheduler_loop = scheduler_loop
        self.host = host
        self.port = port
        self.prefix = prefix
        self.token = token
        self.interval = interval
        self.hosts = hosts            # which Host / Origin it answers (None: any)
        self.closed = False
        self.feed: Feed = scheduler_feed(scheduler, scheduler_loop, cancelled=self._closing,
                                         min_interval=min(0.2, interval), log_limit=MAX_NEW)
        self._bokeh_app: Any = None
        self._http: Any = None        # tornado HTTPServer, made on the dashboard's thread
        self._thread = LoopThread("nbcluster-dashboard")

    def _closing(self) -> bool:
        return self.closed

    # ------------------------------------------------------------------ addresses
    @property
    def address(self) -> str:
        """``http://HOST:PORT`` (a wildcard host is shown as this machine's name)."""
        return f"http://{display_host(self.host)}:{self.port}"

    @property
    def link(self) -> str:
        """The status page as users should open it: ``NBCLUSTER_DASHBOARD_LINK``, or through
        the Jupyter server on JupyterHub / Binder (see :mod:`.links`), token included."""
        return format_link(self.host, self.port, self.prefix, self.token)

    def __repr__(self) -> str:
        return f"<Dashboard {self.address}{self.prefix}/status>"

    # ------------------------------------------------------------------ on the dashboard's loop
    def _serve(self, sockets: list) -> None:
        from tornado.httpserver import HTTPServer   # imported here: off the scheduler's start

        from .http import Gate, cookie_name, plain_app

        gate = Gate(prefix=self.prefix, token=self.token, cookie=cookie_name(self.port),
                    plain_app=plain_app(self.prefix, self.figures, pages_index),
                    bokeh_app=self.bokeh_app,
                    bokeh_ready=self.ready, hosts=self.hosts)
        self._http = HTTPServer(gate, xheaders=False)
        self._http.add_sockets(sockets)

    def figures(self) -> dict:
        """The numbers behind ``/metrics`` (a snapshot taken on the scheduler's loop)."""
        snap = call_on(self.scheduler_loop, lambda: snapshot(
            self.scheduler.state, log_limit=0, prefixes=False), cancelled=self._closing)
        totals = snap["totals"]
        self.feed.rate.add(totals["tasks_completed"] + totals["tasks_failed"])
        return figures(snap, self.feed.rate.rate())

    def bokeh_app(self) -> Any:
        return self._bokeh_app

    async def ready(self) -> Any:
        """The Bokeh application, built (Bokeh imported) on first use."""
        if self._bokeh_app is None:
            if self.closed:
                raise RuntimeError("the dashboard is closed")
            self._bokeh_app = _build_bokeh_app(self)
        return self._bokeh_app

    async def _shutdown(self) -> None:
        if self._http is not None:
            self._http.stop()
        app = self._bokeh_app
        if app is not None:
            try:
                for conn in list(app._clients):      # open websockets: browsers see the end
                    conn._socket.close()
                app.stop(wait=False)
            except Exception:  # noqa: BLE001 - best effort at shutdown
                logger.debug("stopping bokeh", exc_info=True)
        if self._http is not None:
            await asyncio.wait_for(self._http.close_all_connections(), 5)

    # ------------------------------------------------------------------ from any thread
    def stop(self) -> None:
        """Stop serving: close connections and sessions, end the dashboard's thread."""
        if self.closed:
            return
        self.closed = True
        unregister(self.port)
        loop, thread = self._thread.loop, self._thread.thread
        if thread is threading.current_thread():
            asyncio.ensure_future(self._shutdown()).add_done_callback(lambda f: loop.stop())
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        except Exception:  # noqa: BLE001
            logger.debug("dashboard shutdown", exc_info=True)
        try:
            loop.call_soon_threadsafe(loop.stop)
        except RuntimeError:
            pass
        thread.join(10)


def _build_page(dashboard: Dashboard, page: str) -> tuple[dict, Any, str]:
    """The components and layout of a page: Bokeh models in no document yet (any thread)."""
    from bokeh.layouts import column, row
    from bokeh.models.widgets import Div

    from .components import COMPONENTS, TaskStream
    from .graph import TaskGraph
    from .panels import Header, SystemMonitor, TaskControl, TaskGroups, nav_html

    kinds = {**COMPONENTS, "header": Header, "system": SystemMonitor, "groups": TaskGroups,
             "graph": TaskGraph, "control": TaskControl}
    title, names = PAGES[page]
    comps = {name: (kinds[name](dashboard.feed, backfill=MAX_NEW, max_new=MAX_NEW,
                                binary=True)
                    if kinds[name] is TaskStream else kinds[name](dashboard.feed))
             for name in names}
    main = [(p, t) for p, (t, n) in PAGES.items() if "header" in n]
    plots = [(p, t) for p, (t, n) in PAGES.items() if "header" not in n]
    nav = Div(text=nav_html(main, page, [*plots, ("metrics", "metrics"),
                                         ("metrics.json", "json")]),
              sizing_mode="stretch_width", name="nav")
    if page == "status":
        body = [comps["header"].root, comps["task-stream"].root,
                row(comps["memory"].root, comps["progress"].root, sizing_mode="stretch_width"),
                comps["workers"].root, comps["schedules"].root]
    else:
        body = [c.root for c in comps.values()]
    layout = column(nav, *body, sizing_mode="stretch_width", name="nbcluster-dashboard")
    return comps, layout, f"nbcluster: {title}"


def _make_page(dashboard: Dashboard, page: str, doc: Any) -> None:
    comps, layout, title = _build_page(dashboard, page)
    doc.title = title
    doc.add_root(layout)

    def closed(context: Any) -> None:      # pages that asked the feed for more stop asking
        for comp in comps.values():
            close = getattr(comp, "close", None)
            if close is not None:
                close()

    doc.on_session_destroyed(closed)

    def tick() -> None:
        if dashboard.closed:
            return
        for comp in comps.values():
            comp.update()

    tick()
    doc.add_periodic_callback(tick, int(1000 * dashboard.interval))


def _build_bokeh_app(dashboard: Dashboard) -> Any:
    from bokeh.application import Application
    from bokeh.application.handlers.function import FunctionHandler
    from bokeh.resources import Resources
    from bokeh.server.tornado import BokehTornado
    from bokeh.server.views.static_handler import StaticHandler
    from tornado.ioloop import IOLoop

    class RelativeBokehTornado(BokehTornado):
        """Pages ask for ``./static/...``: right under a prefix and behind a proxy."""

        def resources(self, absolute_url: Any = None) -> Resources:
            if absolute_url:
                return super().resources(absolute_url)
            return Resources(mode="server", root_url="./",
                             path_versioner=StaticHandler.append_version)

    # a tab closed while an update was on its way is not worth a warning in the scheduler's log
    logging.getLogger("bokeh.server.views.ws").setLevel(logging.ERROR)
    apps = {f"/{page}": Application(FunctionHandler(partial(_make_page, dashboard, page)))
            for page in PAGES}
    # Bokeh lets any Origin open the websocket: the Gate has checked it (see .hosts), and it
    # also needs a session token signed by this server.
    app = RelativeBokehTornado(
        apps, prefix=dashboard.prefix, extra_websocket_origins=["*"],
        secret_key=secrets.token_urlsafe(32).encode(), sign_sessions=True,
        generate_session_ids=True, use_index=False, redirect_root=False,
        mem_log_frequency_milliseconds=0)
    app.initialize(IOLoop.current())
    app.start()
    return app


def start_dashboard(scheduler: Any, host: str = "127.0.0.1", port: int = 0, prefix: str = "",
                    token: str | None = None, *, require_token: bool | None = None,
                    interval: float = 0.5, preload: bool = False,
                    allowed_hosts: Iterable[str] | None = None,
                    loop: asyncio.AbstractEventLoop | None = None) -> Dashboard:
    """Serve the dashboard of ``scheduler`` on ``http://host:port/prefix/status``.

    Call it on the scheduler's running event loop (or pass that ``loop``). ``port=0`` picks a
    free port. A token is required when ``host`` is not a loopback address (or with
    ``require_token=True``): pass one, or a new random one is made; it is part of
    :attr:`Dashboard.link`. ``interval`` is the plot refresh period in seconds (at least 0.25).
    ``preload`` imports Bokeh now (on the dashboard's thread) rather than on the first page
    request. On a loopback ``host`` it answers only requests addressed to this machine or to a
    name in ``allowed_hosts`` (default: ``NBCLUSTER_DASHBOARD_ALLOWED_HOSTS``; see
    :mod:`.hosts`). Returns at once; ``stop()`` ends it.
    """
    scheduler_loop = loop or asyncio.get_running_loop()
    if require_token is None:
        require_token = not is_loopback(host)
    if require_token and not token:
        token = secrets.token_urlsafe(24)
    elif not require_token:
        token = token or None
    prefix = ("/" + prefix.strip("/")) if prefix.strip("/") else ""
    interval = max(float(interval), 1.0 / MAX_RATE)
    hosts = host_check(host, allowed_hosts)
    sockets = bind_sockets(port, host)
    try:
        dash = Dashboard(scheduler, scheduler_loop, host, sockets[0].getsockname()[1], prefix,
                         token, interval, hosts)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    dash._thread.loop.call_soon_threadsafe(dash._serve, sockets)
    register(dash.port, host, prefix, token, getattr(scheduler, "address", None))  # Jupyter proxy
    if preload:
        asyncio.run_coroutine_threadsafe(dash.ready(), dash._thread.loop)
    logger.info("dashboard at %s", dash.link)
    return dash
