"""nbcluster's Jupyter server extension: dashboards reachable through the Jupyter server.

On JupyterHub and Binder the browser reaches only the Jupyter server, so a dashboard on
``127.0.0.1:PORT`` is a dead link there. This extension adds, behind Jupyter's own login:

- ``{base_url}nbcluster/dashboard/{port}/{path}``: GET and WebSocket (Bokeh's ``/ws``) proxied
  to ``http://127.0.0.1:{port}/{path}``, never to any other host, and only for ports of running
  nbcluster dashboards (see below);
- ``{base_url}nbcluster/remote/{name}/{path}``: the same for a dashboard on another machine
  (SSHCluster's scheduler, a batch job's, a pod's, or one a Client connected to), proxied to
  the origin registered under ``name`` by the kernel that started or connected to its cluster
  (``remote-<name>.json`` in the same private registry, removed when that cluster or client
  closes, ignored once that kernel is gone; see :func:`~nbcluster.dashboard.links.register_remote`).
  The request names only the entry, never a host or port: an unregistered name is a 404;
- ``{base_url}nbcluster/clusters``: JSON list of the clusters known on this machine, with the
  scheduler address, workers, threads, memory and the proxied dashboard link (remote ones
  too); POST starts a LocalCluster owned by this server, and
  ``nbcluster/clusters/<id>/scale|stop`` (POST) scale or stop a listed cluster, as far as
  :mod:`.lab_clusters` allows for its kind (the JupyterLab sidebar uses these).

Which ports: only those in nbcluster's dashboard registry (files that each dashboard writes in
nbcluster's runtime directory, private to the user, and removes when it stops), and only while
the registered process is alive and still listens on that port (:func:`live_dashboard`). So
the proxy cannot be pointed at a database, the hub's API or another user's service on this
machine, and no unknown port is ever contacted (not even to ask it what it is). Proxied
requests carry no Jupyter cookies or tokens: the dashboard's own token, if it has one, is
taken from the registry and sent as a header; ``Host`` is ``127.0.0.1:<port>`` and no
``Origin`` is sent, which a dashboard on loopback accepts (see :mod:`nbcluster.dashboard.hosts`).
A port that is not 1 to 65535 gets a 400 saying so.

Enabled by ``etc/jupyter/jupyter_server_config.d/nbcluster.json``, which ``pip install
"nbcluster[jupyter]"`` installs; by hand: ``jupyter server extension enable
nbcluster.jupyter.server_extension``. Nothing else in nbcluster imports this module.
"""

from __future__ import annotations

import asyncio
import atexit
import json
from typing import Any
from urllib.parse import parse_qsl, urlencode

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.utils import url_path_join
from tornado import httpclient, httputil, web, websocket
from tornado.routing import PathMatches, Rule

try:
    from jupyter_server.base.websocket import WebSocketMixin
except ImportError:   # jupyter_server < 2.4
    from jupyter_server.base.zmqhandlers import WebSocketMixin

from ..dashboard.links import live_dashboard, live_remote
from .lab_clusters import ControlError, ServerClusters, control, list_clusters, worker_count

AUTH_RESOURCE = "nbcluster"
NAME = "nbcluster.jupyter.server_extension"
# request headers worth passing on; cookies and Authorization stay with Jupyter
FORWARD_REQUEST = ("Accept", "Accept-Language", "If-None-Match", "If-Modified-Since",
                   "User-Agent")
FORWARD_RESPONSE = ("Content-Type", "Location", "ETag", "Cache-Control", "Last-Modified",
                    "Expires")


def _jupyter_server_extension_points() -> list[dict]:
    return [{"module": NAME}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    base = serverapp.web_app.settings["base_url"]
    # dashboard/<port>: this machine's (any port: a 400 says why); remote/<name>: registered
    dash = url_path_join(base, r"nbcluster/(dashboard|remote)/([^/]+)(/.*)?")
    serverapp.web_app.add_handlers(".*$", [
        Rule(_WebSocketUpgrade(dash), DashboardWebSocket),
        (dash, DashboardHandler),
        (url_path_join(base, "nbcluster/clusters"), ClustersHandler),
        (url_path_join(base, r"nbcluster/clusters/([^/]+)/([a-z]+)"), ClusterControlHandler),
    ])
    serverapp.log.info("nbcluster: dashboards proxied at %snbcluster/dashboard/<port>/", base)


class _WebSocketUpgrade(PathMatches):
    """The dashboard path, for requests that ask to become a websocket."""

    def match(self, request: httputil.HTTPServerRequest) -> dict[str, Any] | None:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return None
        return super().match(request)


class ProxyError(web.HTTPError):
    """The proxy's own answer (refused port, dashboard gone): shown as one line of text."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(status_code, "%s", message)   # the message may hold a "%"
        self.message = message


def _port(text: str) -> int:
    """The port the URL names: 1 to 65535, leading zeros allowed; anything else is a 400
    (``int()`` of 5,000 digits would raise, and a 500 said nothing)."""
    digits = text.lstrip("0")
    if text.isascii() and text.isdigit() and len(digits) <= 5 and 0 < int(digits or 0) < 65536:
        return int(digits)
    shown = text if len(text) <= 20 else text[:20] + "..."
    raise ProxyError(400, f"{shown!r} is not a port number (1 to 65535); the address is "
                          "nbcluster/dashboard/<port>/...")


async def _target(handler: JupyterHandler, kind: str, port: str) -> _Target:
    """Where the request goes: ``kind`` "dashboard", if ``port`` is a running dashboard's on
    this machine; "remote", if ``port`` names a remote dashboard a running kernel registered
    (else a 404 saying why)."""
    if kind == "remote":
        entry = await asyncio.to_thread(live_remote, port)
        if entry is None:
            shown = port if len(port) <= 60 else port[:60] + "..."
            raise ProxyError(404, f"no registered remote nbcluster dashboard named {shown!r}: "
                                  "only dashboards of clusters that a running kernel of this "
                                  "Jupyter server started or connected to are proxied, never "
                                  "another host or port (GET nbcluster/clusters lists them)")
        return _Target(handler, f"nbcluster/remote/{port}", entry["origin"], entry.get("token"))
    entry = await asyncio.to_thread(live_dashboard, _port(port))
    if entry is None:
        raise ProxyError(404, f"no nbcluster dashboard is running on port {port} of this "
                              "machine; only dashboards of nbcluster clusters are proxied "
                              "(GET nbcluster/clusters lists them)")
    # the dashboard's own address: a dashboard on loopback answers no other Host
    return _Target(handler, f"nbcluster/dashboard/{port}", f"http://127.0.0.1:{entry['port']}",
                   entry.get("token"))


class _Target:
    """Where one proxied request goes: the registered dashboard's ``origin``
    (``http(s)://host:port``, from a registry entry, never from the request), path and query."""

    def __init__(self, handler: JupyterHandler, mount: str, origin: str,
                 token: str | None) -> None:
        mount = url_path_join(handler.base_url, mount)
        self.path = handler.request.path[len(mount):] or "/"   # still percent-encoded
        # a ?token= was for Jupyter's login (or the dashboard's, sent below as a header)
        query = [(k, v) for k, v in parse_qsl(handler.request.query, keep_blank_values=True)
                 if k != "token"]
        self.query = ("?" + urlencode(query)) if query else ""
        self.origin = origin
        self.mount = mount
        self.headers = httputil.HTTPHeaders({"Host": origin.split("://", 1)[1]})
        if token:
            self.headers["Authorization"] = f"token {token}"

    def url(self, websocket: bool = False) -> str:
        origin = ("ws" + self.origin[4:]) if websocket else self.origin   # http(s) -> ws(s)
        return f"{origin}{self.path}{self.query}"

    def origins(self) -> list[str]:
        """How the dashboard may name itself in an absolute redirect."""
        return [self.origin, self.origin.replace("://127.0.0.1:", "://localhost:")]


class DashboardHandler(JupyterHandler):
    """GET ``nbcluster/dashboard/<port>/<path>``: the page, scripts and JSON of a dashboard."""

    auth_resource = AUTH_RESOURCE

    @web.authenticated
    @authorized
    async def get(self, kind: str, port: str, rest: str | None) -> None:
        if rest is None:      # ".../<port>": pages are relative to ".../<port>/"
            if kind == "dashboard":
                _port(port)
            self.redirect(url_path_join(self.base_url, f"nbcluster/{kind}/{port}/"))
            return
        target = await _target(self, kind, port)
        for name in FORWARD_REQUEST:
            if name in self.request.headers:
                target.headers[name] = self.request.headers[name]
        request = httpclient.HTTPRequest(target.url(), headers=target.headers,
                                         follow_redirects=False, request_timeout=60)
        resp = await httpclient.AsyncHTTPClient().fetch(request, raise_error=False)
        if resp.code == 599:
            where = f"on port {port}" if kind == "dashboard" else f"at {target.origin}"
            raise ProxyError(502, f"the dashboard {where} did not answer: {resp.error}")
        self.set_status(resp.code, resp.reason)
        for name in FORWARD_RESPONSE:
            if name in resp.headers:
                self.set_header(name, resp.headers[name])
        location = resp.headers.get("Location", "")
        for origin in target.origins():
            if location.startswith(origin):      # an absolute redirect to the dashboard itself
                self.set_header("Location", target.mount + location[len(origin):])
        if resp.code == 304:
            self.finish()
        else:
            self.finish(resp.body or b"")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None))[1]
        if not isinstance(error, ProxyError):
            return super().write_error(status_code, **kwargs)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{status_code}: {error.message}\n")


class DashboardWebSocket(WebSocketMixin, websocket.WebSocketHandler, JupyterHandler):
    """The page's websocket (Bokeh's ``.../ws``), joined to one opened to the dashboard."""

    auth_resource = AUTH_RESOURCE
    upstream: websocket.WebSocketClientConnection | None = None

    def set_default_headers(self) -> None:
        """No page headers (Content-Security-Policy and such) on a websocket handshake."""

    @authorized
    async def get(self, kind: str, port: str, rest: str | None) -> None:
        origin = self.request.headers.get("Origin")
        if origin is not None and not self.check_origin(origin):   # before the dashboard
            raise web.HTTPError(403, "cross-origin websocket refused")    # hears of it
        target = await _target(self, kind, port)
        protocols = [p.strip() for p in self.request.headers.get(
            "Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        self._pending: list[tuple[Any, bool]] | None = []
        request = httpclient.HTTPRequest(target.url(websocket=True), headers=target.headers,
                                         request_timeout=30)
        try:
            self.upstream = await websocket.websocket_connect(
                request, subprotocols=protocols or None, on_message_callback=self._from_upstream)
        except Exception as e:   # noqa: BLE001 - refused, closed, 403: the browser sees 502
            raise ProxyError(502, f"the dashboard at {target.origin} refused the websocket: "
                                     f"{e}") from None
        try:
            await super().get(kind, port, rest)    # the handshake with the browser
        finally:
            if self.ws_connection is None:         # no handshake: let go of the other end
                self.upstream.close()

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return self.upstream.selected_subprotocol if self.upstream is not None else None

    def open(self, *args: Any, **kwargs: Any) -> None:
        super().open(*args, **kwargs)              # WebSocketMixin: keep-alive pings
        pending, self._pending = self._pending, None
        for message, binary in pending or ():
            if message is None:                    # the dashboard closed it meanwhile
                self.close()
                return
            self.write_message(message, binary=binary)

    def _from_upstream(self, message: Any) -> None:
        binary = isinstance(message, bytes)
        if self._pending is not None:              # before our own handshake is done
            self._pending.append((message, binary))
            return
        if message is None:                        # the dashboard closed it
            self.close()
            return
        try:
            self.write_message(message, binary=binary)
        except websocket.WebSocketClosedError:
            if self.upstream is not None:          # it is, once messages reach the page
                self.upstream.close()

    async def on_message(self, message: Any) -> None:
        if self.upstream is not None:
            try:
                await self.upstream.write_message(message, binary=isinstance(message, bytes))
            except websocket.WebSocketClosedError:
                self.close()

    def on_close(self) -> None:
        if self.upstream is not None:
            self.upstream.close()


class ClustersHandler(APIHandler):
    """GET ``nbcluster/clusters``: ``{"clusters": [...]}``, no tokens in it. POST (JSON
    ``{"workers": n, "threads": t}``): start a LocalCluster of processes owned by this server
    (the sidebar's "New cluster"; see :mod:`.lab_clusters`)."""

    auth_resource = AUTH_RESOURCE

    @web.authenticated
    @authorized
    async def get(self) -> None:
        clusters = await list_clusters(self.base_url, OWNED)
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps({"clusters": clusters}))

    @web.authenticated
    @authorized
    async def post(self) -> None:
        try:
            body = _json_body(self)
            workers = body.get("workers")
            workers = None if workers is None else worker_count(workers)
            threads = worker_count(body.get("threads", 1), "threads")
            if threads == 0:
                raise ControlError(400, "threads must be at least 1")
            cluster = await OWNED.start(workers, threads)
        except ControlError as e:
            _refuse(self, e)
            return
        self.log.info("nbcluster: started %r for the JupyterLab sidebar", cluster)
        self.set_status(201)
        self.finish(json.dumps({"scheduler": cluster.scheduler_address,
                                "workers": len(cluster.workers)}))


class ClusterControlHandler(APIHandler):
    """POST ``nbcluster/clusters/<id>/scale`` (JSON ``{"workers": n}``) and
    ``nbcluster/clusters/<id>/stop``: only for clusters listed here, by what
    :mod:`.lab_clusters` allows for each (XSRF-checked, as every Jupyter POST)."""

    auth_resource = AUTH_RESOURCE

    @web.authenticated
    @authorized
    async def post(self, cluster_id: str, action: str) -> None:
        try:
            reply = await control(self.base_url, OWNED, cluster_id, action, _json_body(self))
        except ControlError as e:
            _refuse(self, e)
            return
        self.finish(json.dumps(reply))


def _refuse(handler: JupyterHandler, error: ControlError) -> None:
    """A JSON error as Jupyter's APIs answer, the message verbatim (it may hold a "%")."""
    handler.log.info("nbcluster: refused: %s", error.message)
    handler.set_status(error.status)
    handler.set_header("Content-Type", "application/json")
    handler.finish(json.dumps({"message": error.message}))


def _json_body(handler: JupyterHandler) -> dict:
    if not handler.request.body:
        return {}
    try:
        body = json.loads(handler.request.body)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ControlError(400, "the request body must be a JSON object")
    return body


# the clusters this server started from the sidebar; their processes end with this one
OWNED = ServerClusters()
atexit.register(OWNED.close_all)
