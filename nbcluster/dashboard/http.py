"""The dashboard's HTTP front door: token check, small routes, and Bokeh loaded on first use.

One tornado ``HTTPServer`` serves every request through :class:`Gate`, which

- on a loopback address, answers 403 to a ``Host`` (or a websocket ``Origin``) that does not
  name this machine: see :mod:`.hosts`;
- asks for the token when one is set (``?token=`` query parameter, which also sets a cookie,
  the cookie itself, or an ``Authorization: token ...`` header) and answers 403 otherwise,
  as Jupyter does;
- answers ``/`` with a relative redirect to ``status`` and ``/metrics``, ``/metrics.json``,
  ``/pages`` from a plain tornado app (no Bokeh needed);
- hands everything else to the Bokeh application, building it on the first such request (the
  request waits; the scheduler keeps serving while Bokeh imports in a thread).

Redirects are relative, so the pages work under a prefix or behind a proxy that strips one.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

from tornado import httputil, web

from .hosts import HostCheck, refusal
from .metrics import PROMETHEUS_CONTENT_TYPE, prometheus_text

logger = logging.getLogger("nbcluster.dashboard")


def cookie_name(port: int) -> str:
    return f"nbcluster-dashboard-{port}"   # cookies are not kept apart by port: name them


class Gate(httputil.HTTPServerConnectionDelegate):
    """Route each request: 403 for a foreign Host or without the token, small routes here,
    the rest to Bokeh."""

    def __init__(self, *, prefix: str, token: str | None, cookie: str, plain_app: web.Application,
                 bokeh_app: Callable[[], Any], bokeh_ready: Callable[[], Awaitable[Any]],
                 hosts: HostCheck | None = None) -> None:
        self.prefix = prefix
        self.token = token
        self.hosts = hosts                  # None: any Host and Origin (not on loopback)
        self.refused: set[str] = set()      # logged once each (a few)
        self.cookie = cookie
        self.plain_app = plain_app
        self.bokeh_app = bokeh_app          # the app if built, else None
        self.bokeh_ready = bokeh_ready      # awaitable that builds it
        self.plain_paths = {prefix + p for p in ("/metrics", "/metrics.json", "/pages",
                                                 "/pages.json")}

    def start_request(self, server_conn: object,
                      request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        return _GatedRequest(self, server_conn, request_conn)

    def token_ok(self, given: str | None) -> bool:
        return given is not None and self.token is not None and hmac.compare_digest(
            given.encode(), self.token.encode())

    def foreign(self, headers: httputil.HTTPHeaders) -> str | None:
        """Why this request is refused for where it comes from, or None."""
        if self.hosts is None:
            return None
        host = headers.get("Host")
        if not self.hosts.host_ok(host):
            why = refusal(host)
        elif headers.get("Upgrade", "").lower() == "websocket" and \
                not self.hosts.origin_ok(origin := headers.get("Origin"), host):
            why = refusal(host, origin)
        else:
            return None
        if len(self.refused) < 20 and why not in self.refused:
            self.refused.add(why)
            logger.warning("dashboard: %s", why.strip())
        return why

    def check(self, query: str, headers: httputil.HTTPHeaders) -> tuple[bool, bool]:
        """(allowed, by the query parameter)."""
        if self.token is None:
            return True, False
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name == "token" and self.token_ok(value):
                return True, True
        auth = headers.get("Authorization", "")
        if auth.lower().startswith("token ") and self.token_ok(auth[6:].strip()):
            return True, False
        for header in headers.get_list("Cookie"):
            try:
                jar = SimpleCookie(header)
            except Exception:
                continue
            if self.cookie in jar and self.token_ok(jar[self.cookie].value):
                return True, False
        return False, False


class _WithCookie:
    """A request connection that adds Set-Cookie to the response it writes."""

    def __init__(self, conn: httputil.HTTPConnection, cookie: str) -> None:
        self._conn = conn
        self._cookie = cookie

    def write_headers(self, start_line, headers, chunk=None):
        headers.add("Set-Cookie", self._cookie)
        return self._conn.write_headers(start_line, headers, chunk)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def _redirect_for(rel: str, prefix: str, query: str) -> str | None:
    """Relative Location for the bare prefix, ``/`` and ``page/``; None for other paths."""
    if rel and not rel.endswith("/"):
        return None
    segments = [s for s in rel.split("/") if s]
    if not rel:                      # "/prefix" -> "prefix/status"
        where = prefix.rsplit("/", 1)[-1] + "/status"
    elif not segments:               # "/" or "/prefix/"
        where = "status"
    else:                            # "/prefix/status/" -> "../status"
        where = "../" + segments[-1]
    rest = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "token"]
    return where + ("?" + urlencode(rest) if rest else "")


class _GatedRequest(httputil.HTTPMessageDelegate):
    def __init__(self, gate: Gate, server_conn: object,
                 request_conn: httputil.HTTPConnection) -> None:
        self.gate = gate
        self.server_conn = server_conn
        self.conn: Any = request_conn
        self.inner: httputil.HTTPMessageDelegate | None = None

    def headers_received(self, start_line, headers):
        gate = self.gate
        path, _, query = start_line.path.partition("?")
        why = gate.foreign(headers)
        if why is not None:
            self._reply(403, why)
            return None
        allowed, by_query = gate.check(query, headers)
        if not allowed:
            self._reply(403, "Forbidden: this dashboard needs its token. Open the link with "
                             "?token=... that the cluster printed (client.dashboard_link).")
            return None
        if by_query:
            self.conn = _WithCookie(self.conn, f"{gate.cookie}={gate.token}; Path=/; HttpOnly; "
                                               "SameSite=Strict")
        if path.startswith(gate.prefix):
            where = _redirect_for(path[len(gate.prefix):], gate.prefix, query)
            if where is not None:
                self._reply(302, "", {"Location": where})
                return None
        if path in gate.plain_paths:
            app = gate.plain_app
        else:
            app = gate.bokeh_app()
            if app is None:
                return self._later(start_line, headers)
        self.inner = app.start_request(self.server_conn, self.conn)
        return self.inner.headers_received(start_line, headers)

    async def _later(self, start_line, headers) -> None:
        try:
            app = await self.gate.bokeh_ready()
        except Exception as e:
            self._reply(503, f"the dashboard could not start: {type(e).__name__}: {e}")
            return
        self.inner = app.start_request(self.server_conn, self.conn)
        result = self.inner.headers_received(start_line, headers)
        if result is not None:
            await result

    def data_received(self, chunk: bytes):
        if self.inner is not None:
            return self.inner.data_received(chunk)
        return None

    def finish(self) -> None:
        if self.inner is not None:
            self.inner.finish()

    def on_connection_close(self) -> None:
        if self.inner is not None:
            self.inner.on_connection_close()

    def _reply(self, code: int, body: str, extra: dict | None = None) -> None:
        data = body.encode()
        headers = httputil.HTTPHeaders({"Content-Type": "text/plain; charset=utf-8",
                                        "Content-Length": str(len(data)),
                                        "Cache-Control": "no-store",
                                        "X-Content-Type-Options": "nosniff"})
        for k, v in (extra or {}).items():
            headers[k] = v
        reason = httputil.responses.get(code, "Unknown")
        self.conn.write_headers(httputil.ResponseStartLine("HTTP/1.1", code, reason), headers,
                                data)
        self.conn.finish()


class _FiguresHandler(web.RequestHandler):
    def initialize(self, figures: Callable[[], dict], prometheus: bool) -> None:
        self.figures = figures
        self.prometheus = prometheus

    def get(self) -> None:
        fig = self.figures()
        self.set_header("Cache-Control", "no-store")
        if self.prometheus:
            self.set_header("Content-Type", PROMETHEUS_CONTENT_TYPE)
            self.write(prometheus_text(fig))
        else:
            self.set_header("Content-Type", "application/json")
            self.write(json.dumps(fig))


class _PagesHandler(web.RequestHandler):
    def initialize(self, pages: Callable[[], list]) -> None:
        self.pages = pages

    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps({"pages": self.pages()}))


def plain_app(prefix: str, figures: Callable[[], dict],
              pages: Callable[[], list] = list) -> web.Application:
    """``/metrics`` (Prometheus text), ``/metrics.json`` and ``/pages`` (also
    ``/pages.json``: the dashboard's pages, as JSON), under ``prefix``."""
    return web.Application([
        (prefix + "/metrics", _FiguresHandler, {"figures": figures, "prometheus": True}),
        (prefix + "/metrics.json", _FiguresHandler, {"figures": figures, "prometheus": False}),
        (prefix + r"/pages(?:\.json)?", _PagesHandler, {"pages": pages}),
    ])
