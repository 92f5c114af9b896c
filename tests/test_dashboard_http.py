"""The dashboard over HTTP: pages, relative resources under a prefix, metrics, the token."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request
from urllib.parse import urljoin

import pytest

from nbcluster import Client
from nbcluster.dashboard.server import PAGES, is_loopback, start_dashboard

pytestmark = pytest.mark.timeout(30)


def inc(x):
    return x + 1


def boom(x):
    raise ValueError(x)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def get(url, headers=None, follow=True, data=None):
    """(status, headers, body) of a request; errors are answers too."""
    opener = urllib.request.build_opener(*([] if follow else [_NoRedirect()]))
    req = urllib.request.Request(url, headers=headers or {}, data=data)
    try:
        with opener.open(req, timeout=15) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def on_loop(cluster, fn):
    async def call():
        return fn()
    return asyncio.run_coroutine_threadsafe(call(), cluster._thread.loop).result(10)


@pytest.fixture
def serve(cluster):
    """serve(**kwargs) -> a dashboard on the cluster's scheduler loop, stopped afterwards."""
    started = []

    def start(**kwargs):
        dash = on_loop(cluster, lambda: start_dashboard(cluster.scheduler, **kwargs))
        started.append(dash)
        return dash
    yield start
    for dash in started:
        on_loop(cluster, dash.stop)


def scripts(html):
    return re.findall(r"<script[^>]* src=\"([^\"]+)\"", html)


def test_status_page_and_one_page_per_plot(cluster, serve):
    dash = serve()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/status", dash.link)
    assert dash.bokeh_app() is None            # Bokeh is set up on the first page request
    status, _, html = get(dash.link)
    assert status == 200 and "<title>nbcluster: Status</title>" in html
    srcs = scripts(html)
    assert srcs and all(s.startswith("./static/") for s in srcs), srcs   # relative: proxies
    for src in srcs[:2]:
        assert get(urljoin(dash.link, src))[0] == 200
    for page, (title, _) in PAGES.items():
        status, _, html = get(f"{dash.address}/{page}")
        assert status == 200 and f"<title>nbcluster: {title}</title>" in html, page
    assert get(f"{dash.address}/nothing-here")[0] == 404


def test_relative_redirects(cluster, serve):
    dash = serve()
    assert get(dash.address + "/", follow=False)[1]["Location"] == "status"
    assert get(dash.address + "/memory/", follow=False)[1]["Location"] == "../memory"
    assert get(dash.address + "/", follow=True)[0] == 200


def test_metrics_prometheus_and_json(cluster, serve):
    with Client(cluster) as client:
        client.gather(client.map(inc, range(30)))
        with pytest.raises(ValueError):
            client.submit(boom, 0).result()
        held = client.submit(inc, 100)
        held.result()
        dash = serve()
        status, headers, text = get(dash.address + "/metrics")
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        samples = dict(line.rsplit(" ", 1) for line in text.splitlines()
                       if line and not line.startswith("#"))
        assert samples["nbcluster_tasks_completed_total"] == "31"
        assert samples["nbcluster_tasks_failed_total"] == "1"
        assert samples["nbcluster_workers"] == "2" and samples["nbcluster_threads"] == "2"
        assert int(samples['nbcluster_tasks{state="memory"}']) >= 1
        assert int(samples['nbcluster_memory_bytes{kind="process"}']) > 0
        assert float(samples["nbcluster_tasks_per_second"]) >= 0
        status, headers, body = get(dash.address + "/metrics.json")
        fig = json.loads(body)
        assert headers["Content-Type"] == "application/json"
        assert fig["tasks_completed"] == 31 and fig["tasks_failed"] == 1
        assert fig["workers"] == 2 and len(fig["per_worker"]) == 2
        assert fig["tasks"]["memory"] == int(samples['nbcluster_tasks{state="memory"}'])
        assert dash.bokeh_app() is None     # metrics never need Bokeh
        del held


def test_pages_render_under_a_prefix(cluster, serve):
    dash = serve(prefix="user/ada/dash/")
    assert dash.link == f"http://127.0.0.1:{dash.port}/user/ada/dash/status"
    status, _, html = get(dash.link)
    assert status == 200 and "nbcluster: Status" in html
    srcs = scripts(html)
    assert srcs and all(s.startswith("./static/") for s in srcs)
    js = urljoin(dash.link, srcs[0])
    assert js.startswith(f"http://127.0.0.1:{dash.port}/user/ada/dash/static/js/bokeh")
    assert get(js)[0] == 200
    assert get(f"{dash.address}/user/ada/dash/task-stream")[0] == 200
    assert get(f"{dash.address}/user/ada/dash/metrics")[0] == 200
    assert get(f"{dash.address}/status")[0] == 404
    assert get(f"{dash.address}/user/ada/dash/", follow=False)[1]["Location"] == "status"
    assert get(f"{dash.address}/user/ada/dash", follow=False)[1]["Location"] == "dash/status"


def test_token_is_asked_for_when_required(cluster, serve):
    dash = serve(require_token=True, token="s3cret-tok")
    assert dash.link.endswith("/status?token=s3cret-tok")
    base = dash.address
    for path in ("/status", "/task-stream", "/metrics", "/metrics.json", "/status/ws",
                 "/static/js/bokeh.min.js", "/"):
        status, _, body = get(base + path, follow=False)
        assert status == 403, path
    assert "token" in body
    assert get(base + "/status?token=wrong")[0] == 403
    assert get(base + "/metrics", headers={"Cookie": "nbcluster-dashboard-1=s3cret-tok"})[0] == 403
    # the query parameter lets the request through and sets a cookie for the page's own requests
    status, headers, html = get(dash.link)
    assert status == 200 and "nbcluster: Status" in html
    cookie = headers["Set-Cookie"]
    assert cookie.startswith(f"nbcluster-dashboard-{dash.port}=s3cret-tok;")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    jar = {"Cookie": cookie.split(";")[0]}
    assert get(base + "/metrics", headers=jar)[0] == 200
    assert get(urljoin(dash.link, scripts(html)[0]), headers=jar)[0] == 200
    assert get(base + "/metrics.json", headers={"Authorization": "token s3cret-tok"})[0] == 200
    # a redirect drops the token from the address it points to
    assert get(base + "/?token=s3cret-tok", follow=False)[1]["Location"] == "status"


def test_a_token_is_made_when_required_and_not_given(cluster, serve):
    dash = serve(require_token=True)
    assert dash.token and len(dash.token) >= 24 and dash.link.endswith(f"?token={dash.token}")
    assert get(dash.address + "/metrics")[0] == 403
    assert get(dash.address + f"/metrics?token={dash.token}")[0] == 200
    assert serve().token is None                      # loopback: no token by default
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")


def test_nothing_but_reading(cluster, serve):
    dash = serve()
    for path in ("/status", "/metrics", "/metrics.json"):
        assert get(dash.address + path, data=b"x=1")[0] in (403, 405), path
    for verb in ("PUT", "DELETE"):
        req = urllib.request.Request(dash.address + "/status", method=verb)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 405


def test_stop_frees_the_port(cluster, serve):
    dash = serve()
    assert get(dash.address + "/metrics")[0] == 200
    on_loop(cluster, dash.stop)
    with pytest.raises(OSError):
        urllib.request.urlopen(dash.address + "/metrics", timeout=5)
