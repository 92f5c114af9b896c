"""Dashboards through the Jupyter server (JupyterHub / Binder): the link template, and the
server extension's proxy and cluster list against a real JupyterLab server with a token
(``tests/labserver.py``) and headless chromium.

The extension is enabled by the config file the package ships
(``extension/jupyter-config/jupyter_server_config.d/nbcluster.json``, via ``JUPYTER_CONFIG_PATH``),
so the tests do not depend on how nbcluster was installed (an editable install does not enable it).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nbcluster import Client, LocalCluster
from nbcluster.config import write_connection_file
from nbcluster.dashboard import links
from nbcluster.dashboard.links import DashboardLinkWarning, format_link
from nbcluster.dashboard.server import start_dashboard
from test_dashboard_http import get, on_loop, scripts

pytest.importorskip("jupyter_server")
pytestmark = pytest.mark.timeout(60)
REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "extension" / "jupyter-config"


@pytest.fixture(autouse=True)
def no_link_env(monkeypatch):
    """Each test starts from a plain environment (as if not on a hub), with Jupyter's
    configuration enabling the extension (as a non-editable install does)."""
    for name in ("NBCLUSTER_DASHBOARD_LINK", "JUPYTERHUB_SERVICE_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JUPYTER_CONFIG_PATH", str(CONFIG))


# --------------------------------------------------------------------------- the link template
def test_plain_link_when_nothing_is_set():
    assert format_link("127.0.0.1", 8787) == "http://127.0.0.1:8787/status"
    assert format_link("::1", 8787, "/pfx") == "http://[::1]:8787/pfx/status"


def test_jupyterhub_prefix_makes_the_link_go_through_the_jupyter_server(monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/ada/")
    assert format_link("127.0.0.1", 8787) == "/user/ada/nbcluster/dashboard/8787/status"
    assert format_link("127.0.0.1", 8787, "/pfx") == "/user/ada/nbcluster/dashboard/8787/pfx/status"


def test_without_the_extension_enabled_the_link_uses_jupyter_server_proxy(monkeypatch, tmp_path):
    from nbcluster.dashboard.links import extension_enabled

    import jupyter_core.paths

    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/ada/")
    # only this directory, which enables nothing (not the machine's system-wide config)
    monkeypatch.setattr(jupyter_core.paths, "jupyter_config_path", lambda: [str(tmp_path)])
    assert not extension_enabled()
    assert format_link("127.0.0.1", 8787) == "/user/ada/proxy/8787/status"
    folder = tmp_path / "jupyter_server_config.d"
    folder.mkdir()
    (folder / "nbcluster.json").write_text((CONFIG / "jupyter_server_config.d" /
                                            "nbcluster.json").read_text())
    assert extension_enabled()
    assert format_link("127.0.0.1", 8787) == "/user/ada/nbcluster/dashboard/8787/status"


def test_template_from_the_environment_wins(monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/ada/")
    monkeypatch.setenv("HUB_HOST", "https://hub.example.org")
    monkeypatch.setenv("NBCLUSTER_DASHBOARD_LINK",
                       "{HUB_HOST}{JUPYTERHUB_SERVICE_PREFIX}proxy/{port}{prefix}/status#{host}")
    assert format_link("127.0.0.1", 8787, "/p") == \
        "https://hub.example.org/user/ada/proxy/8787/p/status#127.0.0.1"


@pytest.mark.parametrize("template, culprit", [
    ("{JUPYTERHUB_SERVICE_PREFIX}proxy/{port}/status", "{JUPYTERHUB_SERVICE_PREFIX}"),
    ("{NO_SUCH_VARIABLE}/{port}", "{NO_SUCH_VARIABLE}"),
    ("/proxy/{port/status", "not a valid format string"),
])
def test_a_bad_template_falls_back_to_the_plain_link_with_a_warning(monkeypatch, template,
                                                                    culprit):
    monkeypatch.setenv("NBCLUSTER_DASHBOARD_LINK", template)
    with pytest.warns(DashboardLinkWarning, match="NBCLUSTER_DASHBOARD_LINK") as record:
        assert format_link("127.0.0.1", 8787) == "http://127.0.0.1:8787/status"
    assert culprit in str(record[0].message)


def test_the_token_is_appended(monkeypatch):
    assert format_link("0.0.0.0", 1, token="t-1").endswith(":1/status?token=t-1")
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/ada/")
    assert format_link("127.0.0.1", 2, token="t/2") == \
        "/user/ada/nbcluster/dashboard/2/status?token=t%2F2"
    monkeypatch.setenv("NBCLUSTER_DASHBOARD_LINK", "/x/{port}/status?theme=dark")
    assert format_link("127.0.0.1", 2, token="t") == "/x/2/status?theme=dark&token=t"


def test_every_place_that_shows_the_link_shows_the_templated_one(monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/ada/")
    from nbcluster.jupyter.html import client_html, cluster_html

    with LocalCluster(n_workers=1, processes=False) as cluster, Client(cluster) as client:
        want = f"/user/ada/nbcluster/dashboard/{cluster._dashboard.port}/status"
        assert cluster.dashboard_link == want == client.dashboard_link
        for html in (cluster._repr_html_(), client._repr_html_(), client_html(client),
                     cluster_html(cluster)):
            assert f"href='{want}'" in html
        secure = on_loop(cluster, lambda: start_dashboard(cluster.scheduler, token="tok"))
        try:
            assert secure.link == f"/user/ada/nbcluster/dashboard/{secure.port}/status?token=tok"
        finally:
            on_loop(cluster, secure.stop)


def test_cluster_magic_shows_the_templated_link(monkeypatch, capsys):
    from test_jupyter_magics import _shell

    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/ada/")
    ip = _shell()
    ip.run_line_magic("load_ext", "nbcluster")
    try:
        ip.run_line_magic("cluster", "start -n 1 --no-processes")
        assert "Dashboard: /user/ada/nbcluster/dashboard/" in capsys.readouterr().out
        ip.run_line_magic("cluster", "dashboard")
        assert capsys.readouterr().out.strip().startswith(
            "Dashboard: /user/ada/nbcluster/dashboard/")
    finally:
        ip.run_line_magic("cluster", "stop")
        ip.run_line_magic("unload_ext", "nbcluster")


def test_a_cluster_of_processes_makes_the_link_in_its_scheduler(monkeypatch, capfd):
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/ada/")
    with LocalCluster(n_workers=1, processes=True) as cluster:
        assert cluster.dashboard_link.startswith("/user/ada/nbcluster/dashboard/")
    monkeypatch.setenv("NBCLUSTER_DASHBOARD_LINK", "{NOT_SET_ANYWHERE}proxy/{port}/status")
    with LocalCluster(n_workers=1, processes=True) as cluster:     # starts all the same
        assert cluster.dashboard_link.startswith("http://127.0.0.1:")
    assert "{NOT_SET_ANYWHERE} is neither" in capfd.readouterr().err


# --------------------------------------------------------------------------- a Jupyter server
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, token, nbcluster runtime dir) of JupyterLab with the extension enabled."""
    from labserver import running_lab

    tmp = tmp_path_factory.mktemp("jupyter")
    with pytest.MonkeyPatch.context() as env:      # the server's environment
        env.setenv("NBCLUSTER_RUNTIME_DIR", str(tmp / "nbcluster"))
        env.setenv("JUPYTER_CONFIG_PATH", str(CONFIG))
        env.delenv("JUPYTERHUB_SERVICE_PREFIX", raising=False)
        with running_lab(tmp, "empty.ipynb", []) as (base, token):
            assert "nbcluster.jupyter.server_extension | extension was successfully loaded" \
                in (tmp / "lab.log").read_text()
            yield base, token, tmp / "nbcluster"


@pytest.fixture
def jupyter(server, monkeypatch):
    """The server, with this test's clusters registered where its extension looks."""
    base, token, runtime = server
    monkeypatch.setenv("NBCLUSTER_RUNTIME_DIR", str(runtime))
    return base, token


@pytest.fixture
def cluster(jupyter, inproc_cluster):
    """The shared in-process cluster, started once its dashboard registers with the server."""
    return inproc_cluster


def test_the_proxied_dashboard_needs_the_jupyter_login(jupyter, cluster):
    base, token = jupyter
    page = f"{base}/nbcluster/dashboard/{cluster._dashboard.port}/status"
    status, _, html = get(f"{page}?token={token}")
    assert status == 200 and "<title>nbcluster: Status</title>" in html
    assert get(page.replace("/dashboard/", "/dashboard/0") + f"?token={token}")[0] == 200
    for src in scripts(html):             # relative to the page: through the proxy too
        assert src.startswith("./static/")
        assert get(f"{page.rsplit('/', 1)[0]}/{src[2:]}?token={token}")[0] == 200
    auth = {"Authorization": f"token {token}"}
    status, _, body = get(page.replace("/status", "/metrics.json"), headers=auth)
    assert status == 200 and json.loads(body)["workers"] == 2
    # without Jupyter's token: the login page, and nothing of the dashboard
    status, headers, _ = get(page, follow=False)
    assert status in (302, 403)
    if status == 302:
        assert "/login" in headers["Location"]
    assert get(page + "?token=wrong", follow=False)[0] in (302, 403)
    # ".../<port>" and ".../<port>/" lead to the status page
    status, headers, _ = get(page.rsplit("/", 1)[0], headers=auth, follow=False)
    assert status == 302 and headers["Location"].endswith(f"/{cluster._dashboard.port}/")
    status, headers, _ = get(page.rsplit("/", 1)[0] + "/", headers=auth, follow=False)
    assert status == 302 and headers["Location"] == "status"


def test_a_dashboard_with_a_token_is_proxied_without_showing_it(jupyter, cluster):
    base, token = jupyter
    secure = on_loop(cluster, lambda: start_dashboard(cluster.scheduler, require_token=True))
    try:
        assert get(f"http://127.0.0.1:{secure.port}/status")[0] == 403     # directly: no
        status, _, html = get(f"{base}/nbcluster/dashboard/{secure.port}/status?token={token}")
        assert status == 200 and "nbcluster: Status" in html   # the proxy sent its token
    finally:
        on_loop(cluster, secure.stop)


def test_the_websocket_needs_the_jupyter_login_and_its_origin(jupyter, cluster):
    from bokeh.util.token import generate_jwt_token
    from tornado import httpclient, websocket

    base, token = jupyter
    page = f"{base}/nbcluster/dashboard/{cluster._dashboard.port}/status"
    forged = generate_jwt_token("a-session", secret_key=b"not the dashboard's key" * 2,
                                signed=True)

    async def attempt(headers):
        request = httpclient.HTTPRequest(f"ws{page[4:]}/ws", headers=headers,
                                         request_timeout=10)
        try:
            ws = await websocket.websocket_connect(request, subprotocols=["bokeh", forged])
        except httpclient.HTTPClientError as e:
            return e.code
        message = await asyncio.wait_for(ws.read_message(), 10)
        ws.close()
        return message

    assert asyncio.run(attempt({})) == 403
    _, headers, _ = get(f"{page}?token={token}")          # the browser's login cookie
    login = "; ".join(c.split(";", 1)[0] for c in headers.get_all("Set-Cookie"))
    assert asyncio.run(attempt({"Cookie": login, "Origin": "http://evil.example"})) == 403
    # logged in, same origin: it reaches the dashboard, which closes it (a forged session)
    assert asyncio.run(attempt({"Cookie": login, "Origin": base})) is None


def test_ports_that_are_not_nbcluster_dashboards_are_refused(jupyter, cluster, tmp_path):
    base, token = jupyter
    jupyter_port = int(base.rsplit(":", 1)[1])
    with socket.socket() as other:          # some other service on this machine
        other.bind(("127.0.0.1", 0))
        other.listen()
        other_port = other.getsockname()[1]
        for port in (other_port, jupyter_port, 1):
            status, _, body = get(f"{base}/nbcluster/dashboard/{port}/status?token={token}")
            assert status == 404, port
            assert f"no nbcluster dashboard is running on port {port}" in body
        # a registry entry left by a process that is gone does not count
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        links.registry_path(other_port).write_text(json.dumps(
            {"port": other_port, "pid": dead.pid, "host": "127.0.0.1", "prefix": "",
             "token": None, "scheduler": "tcp://127.0.0.1:1", "started": 0}))
        try:
            assert get(f"{base}/nbcluster/dashboard/{other_port}/?token={token}")[0] == 404
        finally:
            links.registry_path(other_port).unlink()
    # a dashboard that stopped is refused at once
    dash = on_loop(cluster, lambda: start_dashboard(cluster.scheduler))
    page = f"{base}/nbcluster/dashboard/{dash.port}/metrics.json?token={token}"
    assert get(page)[0] == 200
    on_loop(cluster, dash.stop)
    assert get(page)[0] == 404


def test_what_is_not_a_port_gets_a_400_that_says_so(jupyter, cluster):
    from tornado import httpclient, websocket

    base, token = jupyter
    for port in ("9" * 5000, "0", "65536", "00000065536", "-1", "evil.example:80", "1e3",
                 "%D9%A1", "+80"):                        # %D9%A1: an Arabic-Indic one
        status, headers, body = get(f"{base}/nbcluster/dashboard/{port}/status?token={token}")
        assert status == 400, port[:20]
        assert "is not a port number (1 to 65535)" in body and len(body) < 200, body
        assert headers["Content-Type"].startswith("text/plain")

    async def attempt(port):
        url = f"ws{base[4:]}/nbcluster/dashboard/{port}/status/ws"
        request = httpclient.HTTPRequest(url, headers={"Authorization": f"token {token}"},
                                         request_timeout=10)
        try:
            (await websocket.websocket_connect(request)).close()
        except httpclient.HTTPClientError as e:
            return e.code
    assert asyncio.run(attempt("9" * 5000)) == 400
    assert asyncio.run(attempt("-1")) == 400
    # leading zeros still name the port (as before)
    page = f"{base}/nbcluster/dashboard/000{cluster._dashboard.port}/metrics.json?token={token}"
    assert get(page)[0] == 200


def test_clusters_lists_the_clusters_on_this_machine(jupyter, cluster):
    base, token = jupyter
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        alive = f"tcp://127.0.0.1:{listening.getsockname()[1]}"
        paths = [write_connection_file(alive, "secret-1"),
                 write_connection_file("tcp://127.0.0.1:1", "secret-2")]   # nobody there
        try:
            status, _, body = get(f"{base}/nbcluster/clusters?token={token}")
        finally:
            for path in paths:
                path.unlink()
    assert status == 200 and "secret" not in body
    clusters = {c["scheduler"]: c for c in json.loads(body)["clusters"]}
    ours = clusters[cluster.scheduler_address]
    port = cluster._dashboard.port
    assert ours["workers"] == 2 and ours["dashboard_port"] == port
    assert ours["dashboard"] == f"/nbcluster/dashboard/{port}/status"
    assert get(base + ours["dashboard"] + f"?token={token}")[0] == 200
    assert clusters[alive]["dashboard"] is None
    assert "tcp://127.0.0.1:1" not in clusters
    assert get(f"{base}/nbcluster/clusters", follow=False)[0] == 403


def test_chromium_renders_the_proxied_status_page(jupyter, cluster, tmp_path):
    from test_dashboard_browser import CHROMIUM, check_page, chromium_page, nap, task_rgb

    if not os.path.exists(CHROMIUM):
        pytest.skip("needs Debian chromium")
    pytest.importorskip("playwright.sync_api")
    base, token = jupyter
    with Client(cluster) as client:
        futures = client.map(nap, range(1500))      # 15 s of work: runs all through the test
        with chromium_page(tmp_path) as (page, errors):
            sockets = []
            page.on("websocket", lambda ws: sockets.append(ws.url))
            url = f"{base}/nbcluster/dashboard/{cluster._dashboard.port}/status?token={token}"
            assert check_page(page, url, task_rgb("nap")) > 200   # live: data and pixels
            assert sockets and all(s.startswith(f"ws{base[4:]}/nbcluster/dashboard/")
                                   for s in sockets)
            assert not errors, errors
        client.cancel(futures)


# --------------------------------------------------------------------------- remote dashboards
def test_links_to_other_machines_are_told_from_links_to_this_one(monkeypatch):
    assert links.remote_origin("http://node7:8787/status?token=t%2F1") == \
        ("http://node7:8787", "", "t/1")
    assert links.remote_origin("https://[fd00::7]:99/pfx/status") == \
        ("https://[fd00::7]:99", "/pfx", None)
    for here in ("http://127.0.0.1:8787/status", "http://localhost:1/status",
                 f"http://{socket.gethostname()}:8787/status", "http://0.0.0.0:1/status",
                 "/user/ada/nbcluster/dashboard/8787/status", "ftp://node7:21/status", None):
        assert links.remote_origin(here) is None, here
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/ada/")
    assert links.through_jupyter("http://node7:8787/p/status?token=x", "node7-8787") == \
        "/user/ada/nbcluster/remote/node7-8787/p/status"
    assert links.through_jupyter("http://node7:8787/status", None) == "http://node7:8787/status"


class _RemoteCluster:
    """A cluster kind whose scheduler (and dashboard) would be on another machine."""

    @staticmethod
    def make():
        from nbcluster.deploy.cluster import Cluster

        class Remote(Cluster):
            def __init__(self):
                super().__init__(memory_limit=None)
                self._start(0)

            def _start_scheduler(self, first):
                self.scheduler_address = "tcp://node7.example:8786"
                self._dashboard_link = "http://node7.example:8787/status?token=dash-token"

            def _stop_scheduler(self):
                pass
        return Remote()


def test_a_cluster_registers_its_remote_dashboard_while_it_is_open(monkeypatch, tmp_path):
    monkeypatch.setenv("NBCLUSTER_RUNTIME_DIR", str(tmp_path))
    cluster = _RemoteCluster.make()
    try:
        [entry] = links.live_remotes()
        assert entry["name"] == "node7.example-8787" and entry["pid"] == os.getpid()
        assert entry["origin"] == "http://node7.example:8787" and entry["token"] == "dash-token"
        assert entry["scheduler"] == "tcp://node7.example:8786"
        assert oct(links.remote_path(entry["name"]).stat().st_mode & 0o777) == "0o600"
        assert cluster.dashboard_link == "http://node7.example:8787/status?token=dash-token"
        monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/ada/")
        assert cluster.dashboard_link == "/user/ada/nbcluster/remote/node7.example-8787/status"
    finally:
        cluster.close()
    assert links.live_remotes() == [] and not list(tmp_path.glob("remote-*"))


def test_a_registered_remote_dashboard_is_proxied_and_nothing_else(jupyter, cluster):
    from bokeh.util.token import generate_jwt_token
    from tornado import httpclient, websocket

    base, token = jupyter
    secure = on_loop(cluster, lambda: start_dashboard(cluster.scheduler, require_token=True))
    # as a kernel registers a dashboard of another machine (here on loopback: tests bind no
    # other address)
    name = links.register_origin(f"http://127.0.0.1:{secure.port}", "", secure.token,
                                 cluster.scheduler_address)
    try:
        page = f"{base}/nbcluster/remote/{name}/status"
        status, _, html = get(f"{page}?token={token}")
        assert status == 200 and "nbcluster: Status" in html      # the proxy sent its token
        assert secure.token not in html
        status, _, body = get(page.replace("/status", "/metrics.json") + f"?token={token}")
        assert status == 200 and json.loads(body)["workers"] == 2
        assert get(page, follow=False)[0] in (302, 403)           # Jupyter's login first
        status, _, body = get(f"{base}/nbcluster/clusters?token={token}")
        [listed] = [c for c in json.loads(body)["clusters"] if c.get("remote")]
        assert listed["dashboard"] == f"/nbcluster/remote/{name}/status"
        assert listed["workers"] == 2 and secure.token not in body

        async def websocket_reaches_the_dashboard():
            request = httpclient.HTTPRequest(
                f"ws{page[4:]}/ws", headers={"Authorization": f"token {token}"},
                request_timeout=10)
            forged = generate_jwt_token("a-session", secret_key=b"not the dashboard's" * 2,
                                        signed=True)
            ws = await websocket.websocket_connect(request, subprotocols=["bokeh", forged])
            message = await asyncio.wait_for(ws.read_message(), 10)   # it closes a forgery
            ws.close()
            return message
        assert asyncio.run(websocket_reaches_the_dashboard()) is None

        # what is not registered by a running kernel is refused, saying why
        assert name == f"127.0.0.1-{secure.port}"
        for other in ("node7-8787", f"127.0.0.1-{cluster._dashboard.port}", "..", "%2e%2e",
                      f"127.0.0.1:{secure.port}"):
            status, _, body = get(f"{base}/nbcluster/remote/{other}/status?token={token}")
            assert status == 404, other
            assert "only dashboards of clusters that a running kernel" in body, body
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        entry = json.loads(links.remote_path(name).read_text())
        links.remote_path(name).write_text(json.dumps(dict(entry, pid=dead.pid)))
        assert get(f"{page}?token={token}")[0] == 404            # its kernel is gone
        links.remote_path(name).write_text(json.dumps(entry))
        assert get(f"{page}?token={token}")[0] == 200
    finally:
        links.unregister_remote(name)
        on_loop(cluster, secure.stop)
    assert get(f"{page}?token={token}")[0] == 404                # unregistered: at once


# --------------------------------------------------------------------------- the Lab sidebar's API
def _post(url, token, body=None, raw=None):
    data = raw if raw is not None else json.dumps(body or {}).encode()
    status, _, text = get(url, headers={"Authorization": f"token {token}",
                                        "Content-Type": "application/json"}, data=data)
    return status, (json.loads(text) if text.startswith("{") else text)


def _listed(base, token):
    status, _, body = get(f"{base}/nbcluster/clusters?token={token}")
    assert status == 200, body
    return {c["id"]: c for c in json.loads(body)["clusters"]}


def test_a_kernels_clusters_are_listed_with_figures_and_only_their_scheduler_process_stopped(
        jupyter, inproc_cluster, proc_cluster):
    from nbcluster.testing import wait_until

    base, token = jupyter
    listed = _listed(base, token)
    inproc = listed[f"dashboard-{inproc_cluster._dashboard.port}"]
    [procs] = [c for c in listed.values() if c["scheduler"] == proc_cluster.scheduler_address]
    assert inproc["workers"] == 2 and inproc["threads"] == 2
    assert inproc["memory"]["process"] > 0 and "processing" in inproc["tasks"]
    assert inproc["dashboard_base"] + "status" == inproc["dashboard"]
    # in-process: the registered process is the "kernel" (here, this test): never signalled
    assert (inproc["owner"], inproc["can_stop"], inproc["can_scale"]) == ("kernel", False, False)
    status, reply = _post(f"{base}/nbcluster/clusters/{inproc['id']}/stop", token)
    assert status == 409 and "%cluster stop" in reply["message"], reply
    # a scheduler process: stop ends it (its workers follow); scaling is the notebook's
    assert (procs["owner"], procs["can_stop"], procs["can_scale"]) == ("scheduler", True, False)
    status, reply = _post(f"{base}/nbcluster/clusters/{procs['id']}/scale", token, {"workers": 3})
    assert status == 409 and "cluster.scale(n)" in reply["message"], reply
    status, reply = _post(f"{base}/nbcluster/clusters/{procs['id']}/stop", token)
    assert status == 200 and reply == {"id": procs["id"], "stopped": True}
    proc_cluster._scheduler_proc.wait(10)
    wait_until(lambda: procs["id"] not in _listed(base, token), "the stopped cluster to go",
               timeout=10)
    assert inproc_cluster.status == "running"


def test_new_cluster_scale_and_stop_from_the_sidebars_api(jupyter):
    import psutil

    from nbcluster.testing import wait_until

    base, token = jupyter
    url = f"{base}/nbcluster/clusters"
    for bad, why in [({"workers": -1}, "from 0 to 256"), ({"workers": "2"}, "got '2'"),
                     ({"threads": 0}, "at least 1"), ([1], "JSON object")]:
        status, reply = _post(url, token, raw=json.dumps(bad).encode())
        assert status == 400 and why in reply["message"], (bad, reply)
    status, reply = _post(url, token, {"workers": 1})
    assert status == 201 and reply["workers"] == 1, reply
    address = reply["scheduler"]
    [ours] = [c for c in _listed(base, token).values() if c["scheduler"] == address]
    assert (ours["owner"], ours["can_scale"], ours["can_stop"]) == ("server", True, True)
    assert ours["connect"] == f"%load_ext nbcluster\n%cluster connect {address}"
    scheduler = psutil.Process(ours["pid"])
    try:
        status, reply = _post(f"{url}/{ours['id']}/scale", token, {"workers": 2})
        assert status == 200 and reply["workers"] == 2, reply
        wait_until(lambda: _listed(base, token)[ours["id"]]["workers"] == 2, "2 workers",
                   timeout=15)
        assert _post(f"{url}/{ours['id']}/scale", token, {"workers": 1e9})[0] == 400
        assert _post(f"{url}/{ours['id']}/resize", token)[0] == 404
        assert _post(f"{url}/dashboard-1/stop", token)[0] == 404
    finally:
        status, reply = _post(f"{url}/{ours['id']}/stop", token)
    assert status == 200, reply
    scheduler.wait(10)
    assert ours["id"] not in _listed(base, token)


def test_the_sidebars_posts_need_jupyters_xsrf_token(jupyter):
    import http.cookiejar
    import urllib.request

    base, token = jupyter
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.open(f"{base}/lab?token={token}", timeout=15).read()      # logged in by cookie
    assert any(c.name.startswith("username-") for c in jar)
    for path in ("nbcluster/clusters", "nbcluster/clusters/dashboard-1/stop"):
        request = urllib.request.Request(f"{base}/{path}", data=b"{}", method="POST")
        try:
            opener.open(request, timeout=15)
            status = 200
        except urllib.error.HTTPError as e:
            status = e.code
        assert status == 403, path                   # a cross-site form cannot post here
    assert get(f"{base}/nbcluster/clusters", data=b"{}")[0] == 403   # nor anyone logged out
