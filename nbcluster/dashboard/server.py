"""The dashboard the scheduler serves: ``start_dashboard(scheduler, ...)``.

Pages: ``status`` (all plots together), ``task-stream``, ``memory``, ``progress``, ``workers``;
plus ``metrics`` (Prometheus) and ``metrics.json`` — see :mod:`.http`. Everything runs on the
scheduler's own event loop and reads its state between events, so no lock is needed and the
scheduler's hot path never calls into the dashboard: plots pull a snapshot at a fixed interval,
only while someone watches.

The port is bound at once, so :attr:`Dashboard.link` is known immediately; Bokeh itself (most
of a second to import) is imported in a thread on the first page request, or at start with
``preload=True``, while the scheduler keeps serving.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import socket
import threading
from typing import Any, Callable

from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.netutil import bind_sockets

from ..state.snapshot import snapshot
from .feed import MAX_RATE, Feed, scheduler_feed
from .http import Gate, cookie_name, plain_app
from .metrics import figures

logger = logging.getLogger("nbcluster.dashboard")
BACKFILL = 2_000   # tasks a new page starts with (it then keeps up to 10,000)

# page -> (title, components on it, in order)
PAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "status": ("Status", ("task-stream", "memory", "progress", "workers")),
    "task-stream": ("Task stream", ("task-stream",)),
    "memory": ("Memory", ("memory",)),
    "progress": ("Progress", ("progress",)),
    "workers": ("Workers", ("workers",)),
}


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Dashboard:
    """A running dashboard; ``link`` is the URL of its status page (token included)."""

    def __init__(self, scheduler: Any, host: str, port: int, prefix: str, token: str | None,
                 interval: float, feed: Feed) -> None:
        self.scheduler = scheduler
        self.host = host
        self.port = port
        self.prefix = prefix
        self.token = token
        self.interval = interval
        self.feed = feed
        self.closed = False
        self._bokeh_app: Any = None
        self._building: asyncio.Future | None = None
        self._http: HTTPServer | None = None

    # ------------------------------------------------------------------ addresses
    @property
    def address(self) -> str:
        """``http://HOST:PORT`` (a wildcard host is shown as this machine's name)."""
        host = self.host
        if host in ("", "0.0.0.0", "::"):
            host = socket.gethostname()
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def link(self) -> str:
        base = f"{self.address}{self.prefix}/status"
        return f"{base}?token={self.token}" if self.token else base

    def __repr__(self) -> str:
        return f"<Dashboard {self.address}{self.prefix}/status>"

    # ------------------------------------------------------------------ figures
    def figures(self) -> dict:
        """The numbers behind ``/metrics``; call on the scheduler's loop."""
        snap = snapshot(self.scheduler.state, log_limit=0, prefixes=False)
        totals = snap["totals"]
        self.feed.rate.add(totals["tasks_completed"] + totals["tasks_failed"])
        return figures(snap, self.feed.rate.rate())

    # ------------------------------------------------------------------ Bokeh, lazily
    def bokeh_app(self) -> Any:
        return self._bokeh_app

    def ready(self) -> asyncio.Future:
        """Build the Bokeh app (importing Bokeh in a thread) if not yet; await the result."""
        self._start_build()
        return asyncio.shield(self._building)

    def _start_build(self) -> None:
        if self._building is None:
            self._building = asyncio.get_running_loop().create_future()
            in_thread(self._load, "import").add_done_callback(self._finish_build)

    def _load(self) -> None:
        """In a thread: import Bokeh and build one page, so the first visit finds it warm."""
        from bokeh.server.tornado import BokehTornado  # noqa: F401 - the slow imports

        _build_page(self, "status")

    def _finish_build(self, fut: asyncio.Future) -> None:
        result = self._building
        error = fut.exception()
        if error is None and self.closed:
            error = RuntimeError("the dashboard is closed")
        if error is None:
            try:
                self._bokeh_app = _build_bokeh_app(self)
            except Exception as e:  # noqa: BLE001
                error = e
        if error is not None:
            logger.error("dashboard could not start Bokeh: %r", error)
            result.set_exception(error)
            result.exception()   # retrieved: no "never retrieved" warning when nobody waits
        else:
            result.set_result(self._bokeh_app)

    # ------------------------------------------------------------------ closing
    def stop(self) -> None:
        """Stop listening and close open connections and sessions; call on the loop."""
        if self.closed:
            return
        self.closed = True
        if self._http is not None:
            self._http.stop()
            try:
                asyncio.ensure_future(self._http.close_all_connections())
            except RuntimeError:   # no running loop: nothing left to close on
                pass
        app = self._bokeh_app
        if app is not None:
            try:
                for conn in list(app._clients):      # open websockets: browsers see the end
                    conn._socket.close()
                for context in app.applications.values():
                    for session in list(context.sessions):
                        session.destroy()            # and their periodic callbacks stop
                app.stop(wait=False)
            except Exception:  # noqa: BLE001 - best effort at shutdown
                logger.debug("stopping bokeh", exc_info=True)


def in_thread(fn: Callable[[], Any], what: str) -> asyncio.Future:
    """Run ``fn`` in a new thread; a future of its result on the running loop."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def run() -> None:
        try:
            value, error = fn(), None
        except BaseException as e:  # noqa: BLE001 - handed to the loop
            value, error = None, e

        def done() -> None:
            if not fut.done():
                fut.set_result(value) if error is None else fut.set_exception(error)
        try:
            loop.call_soon_threadsafe(done)
        except RuntimeError:   # the loop closed meanwhile
            pass

    threading.Thread(target=run, name=f"nbcluster-dashboard-{what}", daemon=True).start()
    return fut


def _build_page(dashboard: Dashboard, page: str) -> tuple[dict, Any, str]:
    """The components and layout of a page: Bokeh models in no document yet (any thread)."""
    from bokeh.layouts import column, row
    from bokeh.models import Div

    from .components import COMPONENTS, TaskStream

    title, names = PAGES[page]
    comps = {name: (COMPONENTS[name](dashboard.feed, backfill=BACKFILL)
                    if COMPONENTS[name] is TaskStream else COMPONENTS[name](dashboard.feed))
             for name in names}
    links = " | ".join(
        f"<b>{PAGES[p][0]}</b>" if p == page else f'<a href="{p}">{PAGES[p][0]}</a>'
        for p in PAGES)
    nav = Div(text=f'<span style="font-family:sans-serif">nbcluster &middot; {links} | '
                   '<a href="metrics">metrics</a> | <a href="metrics.json">json</a></span>',
              sizing_mode="stretch_width")
    if page == "status":
        body = [comps["task-stream"].root,
                row(comps["memory"].root, comps["progress"].root, sizing_mode="stretch_width"),
                comps["workers"].root]
    else:
        body = [c.root for c in comps.values()]
    layout = column(nav, *body, sizing_mode="stretch_width", name="nbcluster-dashboard")
    return comps, layout, f"nbcluster: {title}"


def _page_handler(dashboard: Dashboard, page: str) -> Any:
    from bokeh.application.handlers.handler import Handler

    class PageHandler(Handler):
        """Builds each session's plots in a thread, then attaches them on the loop."""

        def __init__(self) -> None:
            super().__init__()
            self._built: dict[str, tuple] = {}

        async def on_session_created(self, session_context: Any) -> None:
            built = await in_thread(lambda: _build_page(dashboard, page), "page")
            self._built[session_context.id] = built

        def modify_document(self, doc: Any) -> None:
            context = doc.session_context
            built = self._built.pop(context.id, None) if context is not None else None
            comps, layout, title = built or _build_page(dashboard, page)
            doc.title = title
            doc.add_root(layout)

            def tick() -> None:
                for comp in comps.values():
                    comp.update()

            tick()
            doc.add_periodic_callback(tick, int(1000 * dashboard.interval))

    return PageHandler()


def _build_bokeh_app(dashboard: Dashboard) -> Any:
    from bokeh.application import Application
    from bokeh.resources import Resources
    from bokeh.server.tornado import BokehTornado
    from bokeh.server.views.static_handler import StaticHandler

    class RelativeBokehTornado(BokehTornado):
        """Pages ask for ``./static/...``: right under a prefix and behind a proxy."""

        def resources(self, absolute_url: Any = None) -> Resources:
            if absolute_url:
                return super().resources(absolute_url)
            return Resources(mode="server", root_url="./",
                             path_versioner=StaticHandler.append_version)

    apps = {f"/{page}": Application(_page_handler(dashboard, page)) for page in PAGES}
    # Any origin may open the websocket (a proxy changes it), but only with a session token
    # signed by this server, which a page of another origin cannot read.
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
                    interval: float = 0.5, preload: bool = False) -> Dashboard:
    """Serve the dashboard of ``scheduler`` on ``http://host:port/prefix/status``.

    Call it on the scheduler's running event loop. ``port=0`` picks a free port. A token is
    required when ``host`` is not a loopback address (or ``require_token=True``): pass one, or
    a new random one is made; it is part of :attr:`Dashboard.link`. ``interval`` is the plot
    refresh period in seconds (at least 0.25). ``preload`` imports Bokeh now, in a thread,
    rather than on the first page request.
    """
    asyncio.get_running_loop()   # raises if not on a loop: the server needs the scheduler's
    if require_token is None:
        require_token = not is_loopback(host)
    if require_token and not token:
        token = secrets.token_urlsafe(24)
    elif not require_token:
        token = token or None
    prefix = ("/" + prefix.strip("/")) if prefix.strip("/") else ""
    interval = max(float(interval), 1.0 / MAX_RATE)
    sockets = bind_sockets(port, host)
    bound = sockets[0].getsockname()[1]
    feed = scheduler_feed(scheduler, min_interval=min(0.2, interval))
    dash = Dashboard(scheduler, host, bound, prefix, token, interval, feed)
    gate = Gate(prefix=prefix, token=token, cookie=cookie_name(bound),
                plain_app=plain_app(prefix, dash.figures), bokeh_app=dash.bokeh_app,
                bokeh_ready=dash.ready)
    dash._http = HTTPServer(gate, xheaders=False)
    dash._http.add_sockets(sockets)
    if preload:
        dash._start_build()
    logger.info("dashboard at %s", dash.link)
    return dash
