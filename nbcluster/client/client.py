"""Client: submit functions, get futures, gather results.

The class is put together from its bases: ``submit``/``map`` (submitting.py), ``gather``
(results.py) and the requests to the scheduler (requests.py); here are its connection, the
handles on keys its Futures count, and the operations on futures.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import uuid
from typing import Any, Callable, Iterable

from ..durations import parse_duration
from ..errors import ClusterError
from ..loop_thread import LoopThread
from ..protocol import messages as m
from .blocking import wait_future
from .connection import ClientConnection
from .data_moves import DataMoves
from .functions import FunctionCache
from .future import Future
from .records import CANCELLED, ERROR, PENDING, KeyRecord
from .publishing import Publishing
from .requests import ClusterRequests
from .schedules import Schedules
from .results import Results
from .structure import collect_futures
from .submitting import Submitting, funcname
from .worker_setup import WorkerSetup, warn_versions

_current: list["Client"] = []


def default_client() -> "Client":
    """The client made last (and not closed)."""
    for client in reversed(_current):
        if not client._closed:
            return client
    raise ClusterError("no client: create one with nbcluster.Client() or %cluster start")


class Client(Submitting, Results, ClusterRequests, Schedules, Publishing,
             WorkerSetup, DataMoves):
    """Connects to a scheduler and submits work.

    ``Client()`` starts a LocalCluster sized to this machine; ``Client(cluster)`` uses a cluster
    object; ``Client("tcp://host:port")`` connects to a running scheduler (the token comes from
    ``token=``, the ``NBCLUSTER_TOKEN`` variable, or the scheduler's connection file).
    A scheduler silent for ``heartbeat_timeout`` is lost; one that keeps a journal is sought
    again for ``reconnect_timeout`` (waiting calls keep waiting), else waiting calls fail.
    """

    # set by nbcluster/__init__ so that the client layer does not import the layers above it
    _default_cluster_factory: Callable[[], Any] | None = None
    _progress_hook: Callable[[list], Any] | None = None     # progress=True on gather/wait
    _dashboard_factory: Callable[..., Any] | None = None    # client.dashboard()

    def __init__(self, address: Any = None, *, token: str | None = None, timeout: Any = 10.0,
                 asynchronous: bool = False, set_as_default: bool = True,
                 security=None, heartbeat_timeout: Any = 30.0,
                 reconnect_timeout: Any = 60.0) -> None:
        timeout = parse_duration(timeout, "timeout")
        reconnect_timeout = parse_duration(reconnect_timeout, "reconnect_timeout")
        if reconnect_timeout < 0:
            raise ValueError(f"reconnect_timeout must not be negative, got {reconnect_timeout!r}")
        heartbeat_timeout = parse_duration(heartbeat_timeout, "heartbeat_timeout")
        if heartbeat_timeout <= 0:
            raise ValueError(f"heartbeat_timeout must be positive, got {heartbeat_timeout!r}")
        self.cluster = None
        self._own_cluster = False
        if address is None:
            if Client._default_cluster_factory is None:
                raise ClusterError("no address given and no LocalCluster available")
            address = Client._default_cluster_factory()
            self._own_cluster = True
        if not isinstance(address, str):
            self.cluster = address
            token = token if token is not None else getattr(address, "token", None)
            security = security if security is not None else getattr(address, "security", None)
            address = address.scheduler_address
        if token is None:
            from ..config import find_token

            token = find_token(address)
        self.scheduler_address = address
        self.asynchronous = asynchronous
        self._closed = False
        self._uid = uuid.uuid4().hex[:8]
        self._counter = itertools.count(1)
        # fn -> its token; each function pickled once while its futures live, not kept alive
        self._functions = FunctionCache(self._uid, funcname, lambda msg: self._conn.post(msg),
                                        lambda delay, fn: self.loop.call_soon_threadsafe(
                                            self.loop.call_later, delay, fn))
        # the loop the connection runs on: the caller's for an asynchronous client, else that
        # of the client's own I/O thread
        self.loop: asyncio.AbstractEventLoop
        self._io: LoopThread | None = None
        if asynchronous:
            self.loop = asyncio.get_running_loop()
        else:
            self._io = LoopThread(f"nbcluster-client-{self._uid}")
            self.loop = self._io.loop
        self._conn = ClientConnection(address, token, self.loop, timeout, security,
                                      heartbeat_timeout, reconnect_timeout)
        self._conn.reconnect.forget_functions = self._functions.clear
        self._records = self._conn.records
        self._started: Any = None
        if asynchronous:
            self._started = asyncio.ensure_future(self._conn.connect())
        else:
            try:
                asyncio.run_coroutine_threadsafe(self._conn.connect(), self.loop).result()
            except BaseException:
                if self._io is not None:
                    self._io.stop()
                if self._own_cluster and self.cluster is not None:
                    self.cluster.close()
                raise
            warn_versions(self._conn, address)
        if set_as_default:
            _current.append(self)

    def __await__(self):
        if self._started is not None:
            yield from self._started.__await__()
            warn_versions(self._conn, self.scheduler_address)
        return self

    @property
    def id(self) -> str:
        return self._conn.id

    # ------------------------------------------------------------------ sync helper
    def _sync(self, coro, timeout: float | None = None):
        if self.asynchronous:
            return coro
        if self._closed:
            coro.close()
            raise ClusterError("this client is closed")
        if self._io is not None and threading.current_thread() is self._io.thread:
            coro.close()
            raise ClusterError("cannot wait for the cluster from a done-callback; "
                               "use asynchronous code or another thread")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return wait_future(future, timeout)
        except BaseException:   # timed out, Ctrl-C: given up, it must not go on (nor hold
            future.cancel()      # what it waits for: a Queue.get withdraws)
            raise

    # ------------------------------------------------------------------ handles on keys
    def hold_key(self, key: str) -> KeyRecord:
        """One more handle (a Future) on ``key``: its record, made if new, shared by all."""
        rec = self._records.get(key)
        if rec is None:
            rec = self._records[key] = KeyRecord(key)
        rec.refs += 1
        return rec

    def release_key(self, record: KeyRecord) -> None:
        """One handle fewer on ``record``'s key; with none left the cluster may forget it."""
        record.refs -= 1
        if record.refs <= 0 and not self._closed:
            if self._records.get(record.key) is record:
                del self._records[record.key]
            self._conn.post(m.Release([record.key]))
            token, record.fn = record.fn, None
            if token is not None:   # after the Release: the key goes first
                self._functions.release(token)

    # ------------------------------------------------------------------ other operations
    def cancel(self, futures: Future | Iterable[Future]) -> None:
        found = collect_futures(futures)
        for f in found:
            if f._record.status == PENDING:
                f._record.cancel_reason = "cancelled by the client"
                if self._conn.listeners["task"]:
                    self._conn.emit("task", f.key, CANCELLED)
                f._record.finish(CANCELLED)
        self._conn.post(m.Cancel([f.key for f in found]))

    def fire_and_forget(self, futures: Future | Iterable[Future]) -> None:
        self._conn.post(m.FireAndForget([f.key for f in collect_futures(futures)]))

    def scatter(self, data: Any, workers: str | list[str] | None = None,
                broadcast: bool = False) -> Any:
        """Send local data to workers; returns futures in the same shape as ``data``: a dict
        (keys are the futures' keys), list, tuple, namedtuple, set or frozenset of futures (a
        range gives a list); any other object is one value, one future."""
        from .scatter import scatter

        return self._sync(scatter(self, data, workers, broadcast))

    def on(self, event: str, fn: Callable) -> Callable[[], None]:
        """Observe the client: ``"submit"`` fn(keys) on the submitting thread; ``"task"``
        fn(key, status) and ``"output"`` fn(key, stream, text) on the client's I/O thread.
        Without an ``"output"`` listener, task output is printed here, marked with its key.
        Returns a function that removes the listener."""
        if event not in self._conn.listeners:
            raise ValueError(f"unknown event {event!r}; choose from {sorted(self._conn.listeners)}")
        self._conn.listeners[event].append(fn)

        def remove() -> None:
            if fn in self._conn.listeners[event]:
                self._conn.listeners[event].remove(fn)
        return remove

    def dashboard(self, **kwargs):
        """The task stream and memory plots, live, inline in the notebook (no extra port)."""
        if Client._dashboard_factory is None:
            raise ClusterError("the inline dashboard needs bokeh and jupyter_bokeh "
                               "(pip install 'nbcluster[jupyter]')")
        return Client._dashboard_factory(self, **kwargs)

    def retry(self, futures: Future | Iterable[Future]) -> None:
        """Run failed tasks again (and the failed tasks they depend on); their futures become
        pending. Futures that did not fail are left as they are."""
        keys = []
        for f in collect_futures(futures):
            if f._record.status == ERROR:
                f._record.reset()
                keys.append(f.key)
        if keys:
            self._check_usable()
            self._conn.post(m.RetryTasks(keys))

    def get_executor(self, **options):
        """A ``concurrent.futures.Executor``: task ``options`` (``timeout=``, ``queue=``...) are
        checked here and apply to each task; its ``submit`` passes every keyword to ``fn``."""
        from .executor import ClientExecutor

        return ClientExecutor(self, **options)

    def compute(self, collection, **kwargs):
        from .delayed import compute_with

        return compute_with(self, collection, **kwargs)

    @property
    def dashboard_link(self) -> str | None:
        link = self.cluster.dashboard_link if self.cluster is not None else None
        if link is None and self.cluster is None:
            try:   # connected by address: ask the scheduler where its dashboard is
                link = self._sync(self._conn.request("info"), timeout=10).get("dashboard")
            except Exception:
                link = None
        return link

    # ------------------------------------------------------------------ closing
    def close(self) -> Any:
        """Disconnect, and close the cluster if the client started it. An asynchronous client
        returns an awaitable (``await client.close()``), also when it is closed already."""
        if self._closed:
            return _nothing() if self.asynchronous else None
        if self.asynchronous:
            self._conn.close()
            self._closed = True
            return self._close_cluster_async()
        try:
            if not self.loop.is_closed():
                asyncio.run_coroutine_threadsafe(self._close_conn(), self.loop).result(10)
        except Exception:
            pass
        self._closed = True
        if self._io is not None:
            self._io.stop()
        if self in _current:
            _current.remove(self)
        if self._own_cluster and self.cluster is not None:
            self.cluster.close()

    async def _close_conn(self) -> None:
        self._conn.close()

    async def _close_cluster_async(self) -> None:
        if self in _current:
            _current.remove(self)
        if self._own_cluster and self.cluster is not None:
            self.cluster.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    async def __aenter__(self) -> "Client":
        await self
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def status(self) -> str:
        """``"running"``, ``"reconnecting"`` (to a scheduler that keeps a journal),
        ``"disconnected"`` (the scheduler went away) or ``"closed"``."""
        if self._closed:
            return "closed"
        if self._conn.reconnect.active:
            return "reconnecting"
        return "disconnected" if self._conn.closed else "running"

    def __repr__(self) -> str:
        status = self.status
        if status == "disconnected":
            return f"<Client {self.scheduler_address} disconnected: {self._conn.lost_reason}>"
        return f"<Client {self.scheduler_address} {'closed' if self._closed else 'connected'}>"

    def _repr_html_(self) -> str:
        import html

        status = self.status
        if status != "running":   # no link to a dashboard that is gone with its scheduler
            why = f": {html.escape(self._conn.lost_reason)}" if status == "disconnected" else ""
            return (f"<div><b>nbcluster Client</b> ({status}{why})<br>Scheduler: "
                    f"<code>{self.scheduler_address}</code></div>")
        link = self.dashboard_link
        dash = f"<br>Dashboard: <a href='{link}' target='_blank'>{link}</a>" if link else ""
        return (f"<div><b>nbcluster Client</b><br>Scheduler: <code>{self.scheduler_address}</code>"
                f"<br>Futures held: {len(self._records)}{dash}</div>")


async def _nothing() -> None:
    pass


def AsyncClient(*args, **kwargs) -> Client:  # noqa: N802 - reads as a class
    """A Client for asyncio code: ``async with AsyncClient(cluster) as c: await c.submit(...)``."""
    return Client(*args, asynchronous=True, **kwargs)

