"""A real browser (headless Debian chromium) opens the dashboard while tasks run.

It checks the documents' data (the task stream's source fills up and keeps growing) and the
pixels of the task stream's canvas (rectangles in the function's colour), directly, under a
prefix, behind a proxy that strips its own prefix (as Binder's ``/proxy/<port>/`` does), and
with a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import pytest

from nbcluster import Client, LocalCluster
from nbcluster.dashboard.components import color_of
from nbcluster.dashboard.server import start_dashboard
from nbcluster.loop_thread import LoopThread

sync_api = pytest.importorskip("playwright.sync_api")
from labserver import CHROMIUM, WAIT_MS, chromium  # noqa: E402

# three pages, each with three waits of up to WAIT_MS (60 s)
pytestmark = [pytest.mark.timeout(600),
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian chromium")]


def nap(x):
    time.sleep(0.02)   # a task that lasts long enough to be drawn
    return x


# --------------------------------------------------------------------------- a stripping proxy
def start_proxy(thread: LoopThread) -> int:
    """``/proxy/<port>/<path>`` -> ``http://127.0.0.1:<port>/<path>``, websockets included."""
    from tornado import httpclient, web, websocket
    from tornado.netutil import bind_sockets

    class Http(web.RequestHandler):
        async def get(self, port, rest):
            query = f"?{self.request.query}" if self.request.query else ""
            headers = {k: v for k, v in self.request.headers.items()
                       if k.lower() in ("cookie", "accept", "authorization")}
            resp = await httpclient.AsyncHTTPClient().fetch(
                f"http://127.0.0.1:{port}/{rest}{query}", headers=headers, raise_error=False,
                follow_redirects=False)
            self.set_status(resp.code)
            for k in ("Content-Type", "Location"):
                if k in resp.headers:
                    self.set_header(k, resp.headers[k])
            for cookie in resp.headers.get_list("Set-Cookie"):
                self.add_header("Set-Cookie", cookie)
            self.write(resp.body)

    class Ws(websocket.WebSocketHandler):
        def check_origin(self, origin):
            return True

        def select_subprotocol(self, subprotocols):
            self.protocols = list(subprotocols)
            return subprotocols[0] if subprotocols else None

        async def open(self, port, rest):
            req = httpclient.HTTPRequest(f"ws://127.0.0.1:{port}/{rest}", headers={
                k: v for k, v in self.request.headers.items() if k.lower() in ("cookie", "origin")})
            self.upstream = await websocket.websocket_connect(
                req, subprotocols=getattr(self, "protocols", None),
                on_message_callback=self.from_upstream)

        def from_upstream(self, msg):
            if msg is None:
                self.close()
            else:
                self.write_message(msg, binary=isinstance(msg, bytes))

        def on_message(self, msg):
            self.upstream.write_message(msg, binary=isinstance(msg, bytes))

        def on_close(self):
            if getattr(self, "upstream", None) is not None:
                self.upstream.close()

    async def serve():
        from tornado.httpserver import HTTPServer

        app = web.Application([(r"/proxy/(\d+)/(.*/ws)", Ws), (r"/proxy/(\d+)/(.*)", Http)])
        sockets = bind_sockets(0, "127.0.0.1")
        server = HTTPServer(app)
        server.add_sockets(sockets)
        return sockets[0].getsockname()[1]
    return thread.run(serve())


# --------------------------------------------------------------------------- the test
def on_loop(cluster, fn):
    async def call():
        return fn()
    return asyncio.run_coroutine_threadsafe(call(), cluster._thread.loop).result(10)


COUNT = "() => { const d = window.Bokeh && Bokeh.documents[0]; " \
        "const s = d && d.get_model_by_name('task_stream'); return s ? s.data.key.length : -1 }"
# the end time of the newest task drawn: grows while tasks run, also once the source is full
LATEST = "() => { const d = window.Bokeh && Bokeh.documents[0]; " \
         "const s = d && d.get_model_by_name('task_stream'); " \
         "return s ? s.data.right.reduce((a, b) => Math.max(a, b), -1) : -1 }"
PIXELS = """(rgb) => {
  const canvases = [];
  const walk = (root) => { for (const el of root.querySelectorAll('*')) {
      if (el.tagName === 'CANVAS') canvases.push(el);
      if (el.shadowRoot) walk(el.shadowRoot); } };
  walk(document);
  let best = 0;
  for (const c of canvases) {
    if (!c.width || !c.height) continue;
    const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < px.length; i += 4)
      if (Math.abs(px[i] - rgb[0]) < 16 && Math.abs(px[i+1] - rgb[1]) < 16 &&
          Math.abs(px[i+2] - rgb[2]) < 16 && px[i+3] > 200) n++;
    best = Math.max(best, n);
  }
  return best;
}"""


def task_rgb(name: str) -> list[int]:
    """The colour of a task's rectangle: the function's colour at alpha 0.9 over white."""
    hexa = color_of(name).lstrip("#")
    return [round(0.9 * int(hexa[i:i + 2], 16) + 0.1 * 255) for i in (0, 2, 4)]


@contextlib.contextmanager
def chromium_page(tmp_path):
    """A page in headless Debian chromium (every wait up to WAIT_MS), and the list its
    JavaScript errors go to."""
    with chromium(tmp_path / "profile", viewport={"width": 1280, "height": 900}) as page:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        yield page, errors


def keep_busy(client, futures: list, at_least: int = 3000) -> None:
    """Top up the queue of ``nap`` tasks, so the page under test (however slowly it loads on a
    loaded machine) still sees the task stream grow."""
    left = sum(not f.done() for f in futures)
    if left < at_least:
        start = len(futures)
        futures += client.map(nap, range(start, start + 2 * at_least - left))


def check_page(page, url: str, rgb: list[int], shot=None) -> int:
    page.goto(url)
    page.wait_for_function(f"({COUNT})() > 3", timeout=WAIT_MS)
    first = page.evaluate(LATEST)
    page.wait_for_function(f"({LATEST})() > {first}", timeout=WAIT_MS)   # live: newer tasks
    page.wait_for_function(f"({PIXELS})({rgb}) > 200", timeout=WAIT_MS)
    assert page.title() == "nbcluster: Status"
    if shot is not None:
        page.screenshot(path=str(shot), full_page=True)
    return page.evaluate(f"({PIXELS})({rgb})")


def test_status_page_draws_running_tasks(tmp_path):
    proxy_thread = LoopThread("nbcluster-test-proxy")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False) as cluster, \
            Client(cluster) as client:
        dash = on_loop(cluster, lambda: start_dashboard(cluster.scheduler, prefix="/pfx"))
        secure = on_loop(cluster, lambda: start_dashboard(cluster.scheduler, require_token=True))
        try:
            proxy_port = start_proxy(proxy_thread)
            futures: list = []
            rgb = task_rgb("nap")
            with chromium_page(tmp_path) as (page, errors):
                shot = tmp_path / "status.png"
                keep_busy(client, futures)   # 20 ms tasks: at least 30 s of work per page
                assert check_page(page, dash.link, rgb, shot) > 200
                assert shot.stat().st_size > 10_000
                # Binder / JupyterHub: a proxy that strips /proxy/<port>
                proxied = f"http://127.0.0.1:{proxy_port}/proxy/{dash.port}/pfx/status"
                keep_busy(client, futures)
                check_page(page, proxied, rgb, tmp_path / "proxied.png")
                # a token: the link sets the cookie the page's websocket then carries
                keep_busy(client, futures)
                check_page(page, secure.link, rgb)
                assert not errors, errors
            client.cancel(futures)
        finally:
            on_loop(cluster, dash.stop)
            on_loop(cluster, secure.stop)
            proxy_thread.stop()


# --------------------------------------------------------------------------- DNS rebinding
OPEN_WS = """([url, token]) => new Promise((done) => {
  const ws = new WebSocket(url, ['bokeh', token]);
  ws.onopen = () => { ws.close(); done('open'); };
  ws.onerror = () => done('refused');
})"""


def test_a_page_that_rebinds_its_name_reads_nothing(tmp_path, caplog):
    """Chromium resolves evil.example to 127.0.0.1, as after a DNS rebinding: the page of
    that origin gets 403s, and cannot open the dashboard's websocket either."""
    import re
    import urllib.request

    from labserver import chromium as launch

    with LocalCluster(n_workers=1, processes=False) as cluster:
        port = cluster._dashboard.port
        html = urllib.request.urlopen(cluster._dashboard.link, timeout=10).read().decode()
        token = re.search(r'"token":"([^"]+)"', html).group(1)      # a real session token
        rules = ["--host-resolver-rules=MAP evil.example 127.0.0.1"]
        with launch(tmp_path / "profile", extra_args=rules) as page:
            response = page.goto(f"http://evil.example:{port}/status")
            assert response.status == 403
            assert "DNS rebinding" in page.content()
            # its scripts, same-origin as far as the browser knows
            assert page.evaluate("() => fetch('/metrics.json').then(r => r.status)") == 403
            for url in (f"ws://evil.example:{port}/status/ws", f"ws://127.0.0.1:{port}/status/ws"):
                assert page.evaluate(OPEN_WS, [url, token]) == "refused", url
            # by the dashboard (logged), not by the browser
            assert f"not for a page of 'http://evil.example:{port}'" in caplog.text
            # the same dashboard by its own name: the page, and its websocket
            page.goto(f"http://localhost:{port}/status")
            page.wait_for_function(f"({COUNT})() >= 0", timeout=WAIT_MS)
            assert page.title() == "nbcluster: Status"
            assert page.evaluate(OPEN_WS, [f"ws://localhost:{port}/status/ws", token]) == "open"
