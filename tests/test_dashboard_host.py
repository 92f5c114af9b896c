"""A dashboard on a loopback address answers only requests addressed to this machine (issue 13,
item 7): a web page that rebinds its own name to 127.0.0.1 must not read it, and a page of
another origin must not open its websocket (Bokeh's ``autoload.js`` would let it try)."""

from __future__ import annotations

import asyncio
import re

import pytest

from test_dashboard_http import get, serve  # noqa: F401 - a fixture

pytestmark = pytest.mark.timeout(30)
PATHS = ("/status", "/task-stream", "/metrics", "/metrics.json", "/static/js/bokeh.min.js")


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch):
    for name in ("NBCLUSTER_DASHBOARD_ALLOWED_HOSTS", "JUPYTERHUB_SERVICE_PREFIX",
                 "NBCLUSTER_DASHBOARD_LINK"):
        monkeypatch.delenv(name, raising=False)


def session_token(dash) -> str:
    """A real Bokeh session token, from a page fetched the ordinary way."""
    status, _, html = get(f"{dash.address}/status")
    assert status == 200
    return re.search(r'"token":"([^"]+)"', html).group(1)


def websocket(dash, token: str, headers: dict) -> int | str:
    """The HTTP status that refused the websocket, or "open" if Bokeh sent its first message."""
    from tornado import httpclient
    from tornado import websocket as ws

    async def attempt():
        request = httpclient.HTTPRequest(f"ws://127.0.0.1:{dash.port}/status/ws",
                                         headers=headers, request_timeout=10)
        try:
            conn = await ws.websocket_connect(request, subprotocols=["bokeh", token])
        except httpclient.HTTPClientError as e:
            return e.code
        try:
            message = await asyncio.wait_for(conn.read_message(), 10)
        finally:
            conn.close()
        return "open" if message is not None else "closed"
    return asyncio.run(attempt())


def test_a_rebound_host_name_is_refused(cluster, serve):  # noqa: F811
    dash = serve()
    port = dash.port
    for path in PATHS + ("/", "/status/autoload.js?bokeh-autoload-element=x"):
        status, headers, body = get(dash.address + path, {"Host": f"evil.example:{port}"},
                                    follow=False)
        assert status == 403, path
        assert "evil.example" in body and "NBCLUSTER_DASHBOARD_ALLOWED_HOSTS" in body
        assert headers["Content-Type"].startswith("text/plain")
    for host in ("evil.example", "127.0.0.1.evil.example", "localhost.evil.example",
                 "10.0.0.1", "0.0.0.0", "[::]", "", "x" * 5000):
        assert get(dash.address + "/metrics", {"Host": host})[0] == 403, host
    # names of this machine's loopback, on any port (an ssh tunnel changes it)
    for path in PATHS:
        assert get(dash.address + path, {"Host": f"localhost:{port}"})[0] == 200, path
    for host in (f"127.0.0.1:{port}", f"[::1]:{port}", "localhost", "LOCALHOST:9999",
                 "127.0.0.2:80", "[::1]"):
        for path in ("/status", "/metrics"):
            assert get(dash.address + path, {"Host": host})[0] == 200, (host, path)


def test_a_page_of_another_origin_cannot_open_the_websocket(cluster, serve):  # noqa: F811
    dash = serve()
    token = session_token(dash)
    here = f"127.0.0.1:{dash.port}"
    for origin in ("http://evil.example", f"http://evil.example:{dash.port}", "null",
                   "http://127.0.0.1.evil.example"):
        assert websocket(dash, token, {"Origin": origin}) == 403, origin
    # a rebinding page: its Host and Origin agree, and name it
    assert websocket(dash, token, {"Host": f"evil.example:{dash.port}",
                                   "Origin": f"http://evil.example:{dash.port}"}) == 403
    # the dashboard's own page, a proxy or tunnel on this machine, and scripts (no Origin)
    for origin in (f"http://{here}", f"http://localhost:{dash.port}", "http://[::1]:8000",
                   "http://localhost:9999", None):
        headers = {"Origin": origin} if origin else {}
        assert websocket(dash, token, headers) == "open", origin


def test_names_can_be_allowed(cluster, serve, monkeypatch):  # noqa: F811
    monkeypatch.setenv("NBCLUSTER_DASHBOARD_ALLOWED_HOSTS", " dash.example , Other.Example:80 ")
    dash = serve()
    token = session_token(dash)
    for host in ("dash.example", f"dash.example:{dash.port}", "other.example:1"):
        assert get(dash.address + "/metrics", {"Host": host})[0] == 200, host
    assert get(dash.address + "/metrics", {"Host": "evil.example"})[0] == 403
    assert websocket(dash, token, {"Origin": "https://dash.example"}) == "open"
    assert websocket(dash, token, {"Origin": "https://evil.example"}) == 403
    # the argument wins over the environment; "*" turns the check off
    named = serve(allowed_hosts=["named.example"])
    assert get(named.address + "/metrics", {"Host": "named.example"})[0] == 200
    assert get(named.address + "/metrics", {"Host": "dash.example"})[0] == 403
    monkeypatch.setenv("NBCLUSTER_DASHBOARD_ALLOWED_HOSTS", "*")
    anything = serve()
    assert get(anything.address + "/metrics", {"Host": "evil.example"})[0] == 200
    assert websocket(anything, session_token(anything), {"Origin": "http://evil.example"}) \
        == "open"


def test_behind_jupyterhub_any_host_with_its_own_origin(cluster, serve, monkeypatch):  # noqa: F811
    """jupyter-server-proxy forwards the browser's Host and Origin (the hub's name), so on a
    hub any Host is accepted, as JupyterHub's single-user server does; the websocket's Origin
    must still be the page's own."""
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/ada/")
    dash = serve()
    token = session_token(dash)
    hub = {"Host": "hub.example.org", "X-Forwarded-Context": "/user/ada/proxy/1"}
    assert get(dash.address + "/status", hub)[0] == 200
    assert websocket(dash, token, {**hub, "Origin": "https://hub.example.org"}) == "open"
    assert websocket(dash, token, {**hub, "Origin": "https://evil.example"}) == 403


def test_who_is_checked():
    from nbcluster.dashboard.hosts import HostCheck, host_check

    assert host_check("127.0.0.1", None, {}) is not None
    assert host_check("::1", None, {}) is not None
    assert host_check("localhost", ["a"], {}) is not None
    # deliberately exposed: as before (a token guards it)
    assert host_check("0.0.0.0", None, {}) is None
    assert host_check("10.1.2.3", None, {}) is None
    assert host_check("127.0.0.1", ["*"], {}) is None
    assert host_check("127.0.0.1", None, {"NBCLUSTER_DASHBOARD_ALLOWED_HOSTS": "*"}) is None
    hub = host_check("127.0.0.1", None, {"JUPYTERHUB_SERVICE_PREFIX": "/user/ada/"})
    assert isinstance(hub, HostCheck) and hub.host_ok("hub.example.org")
    assert not hub.origin_ok("https://evil.example", "hub.example.org")
    with pytest.warns(UserWarning, match="'http://dash.example/' is not a host name"):
        some = host_check("127.0.0.1", "http://dash.example/, ok.example:80,[::2]", {})
    assert some is not None and some.names == {"ok.example", "::2"}
    check = HostCheck(["Dash.Example"])
    assert check.host_ok(None)          # HTTP/1.0 without Host: not a browser
    assert check.host_ok("dash.example:1") and check.host_ok("DASH.EXAMPLE")
    assert not check.host_ok("dash.example.evil") and not check.host_ok("::1")
