"""Client: submit functions, get futures, gather results."""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import threading
import uuid
from typing import Any, Callable, Iterable

from ..durations import optional_timeout, parse_duration
from ..errors import ClusterError, FutureLostError, SerializationError
from ..protocol import messages as m
from ..protocol.serialize import Serialized, all_plain, dumps, loads
from .connection import ClientConnection, IOThread
from .blocking import wait_event, wait_future
from .functions import FunctionCache
from .future import _NO_VALUE, CANCELLED, ERROR, FINISHED, PENDING, Future, _KeyRecord
from .options import OPTION_NAMES, build_options
from .requests import ClusterRequests
from .structure import call_digest, check_iterables, collect_futures, rebuild

_current: list["Client"] = []


def default_client() -> "Client":
    """The client made last (and not closed)."""
    for client in reversed(_current):
        if not client._closed:
            return client
    raise ClusterError("no client: create one with nbcluster.Client() or %cluster start")


def _funcname(fn) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    if name == "<lambda>":
        name = "lambda"
    return name.replace("-", "_").replace(" ", "_")[:40] or "task"


class Client(ClusterRequests):
    """Connects to a scheduler and submits work.

    ``Client()`` starts a LocalCluster sized to this machine; ``Client(cluster)`` uses a cluster
    object; ``Client("tcp://host:port")`` connects to a running scheduler (the token comes from
    ``token=``, the ``NBCLUSTER_TOKEN`` variable, or the scheduler's connection file).
    """

    # set by nbcluster/__init__ so that the client layer does not import the layers above it
    _default_cluster_factory: Callable[[], Any] | None = None
    _progress_hook: Callable[[list], Any] | None = None     # progress=True on gather/wait
    _creation_hooks: list[Callable[["Client"], None]] = []  # called with each new client
    _dashboard_factory: Callable[..., Any] | None = None    # client.dashboard()

    def __init__(self, address: Any = None, *, token: str | None = None, timeout: Any = 10.0,
                 asynchronous: bool = False, set_as_default: bool = True,
                 security=None, heartbeat_timeout: Any = 30.0) -> None:
        timeout = parse_duration(timeout, "timeout")
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
        # fn -> its token; each function pickled once while it lives, and not kept alive
        self._fn_token = FunctionCache(self._uid, _funcname, lambda msg: self._conn.post(msg)).token
        self._io: IOThread | None = None
        if asynchronous:
            self._loop = asyncio.get_running_loop()
        else:
            self._io = IOThread(f"nbcluster-client-{self._uid}")
            self._loop = self._io.loop
        self._conn = ClientConnection(address, token, self._loop, timeout, security,
                                      heartbeat_timeout)
        self._records = self._conn.records
        self._started: Any = None
        if asynchronous:
            self._started = asyncio.ensure_future(self._conn.connect())
        else:
            try:
                asyncio.run_coroutine_threadsafe(self._conn.connect(), self._loop).result()
            except BaseException:
                self._io.stop()
                if self._own_cluster:
                    self.cluster.close()
                raise
        if set_as_default:
            _current.append(self)
        for hook in list(Client._creation_hooks):
            try:
                hook(self)
            except Exception:   # an observer must not stop a client from starting
                import logging

                logging.getLogger("nbcluster.client").exception("error in a client hook")

    def __await__(self):
        if self._started is not None:
            yield from self._started.__await__()
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
        if threading.current_thread() is self._io.thread:
            coro.close()
            raise ClusterError("cannot wait for the cluster from a done-callback; "
                               "use asynchronous code or another thread")
        return wait_future(asyncio.run_coroutine_threadsafe(coro, self._loop), timeout)

    def _spawn(self, coro) -> None:
        """Run ``coro`` on the client's loop, from any thread, without waiting for it."""
        if self._conn._on_loop_thread():
            self._loop.create_task(coro)
        else:
            asyncio.run_coroutine_threadsafe(coro, self._loop)

    # ------------------------------------------------------------------ submitting
    def _record_for(self, key: str) -> _KeyRecord:
        rec = self._records.get(key)
        if rec is None:
            rec = self._records[key] = _KeyRecord(key)
        return rec

    def _release_ref(self, rec: _KeyRecord) -> None:
        rec.refs -= 1
        if rec.refs <= 0 and not self._closed:
            if self._records.get(rec.key) is rec:
                del self._records[rec.key]
            self._conn.post([m.RELEASE, [rec.key]])

    def _check_usable(self) -> None:
        if self._closed:
            raise ClusterError("this client is closed")
        self._conn.check_open()

    def _spec(self, fn: Callable, args: tuple, kwargs: dict, key: str | None, options,
              prefix: str | None = None, pure: bool = False) -> list:
        """``[key, token, args, kwargs, deps, options]``; ``pure``: the key is a digest of the
        function and arguments, so the same call made again is the same task."""
        self._check_usable()
        token = self._fn_token(fn)
        if key is None:
            if not pure:
                key = f"{prefix or _funcname(fn)}-{self._uid}{next(self._counter):x}"
        elif not isinstance(key, str) or not key:
            raise TypeError(f"key must be a non-empty string, got {key!r}")
        if not kwargs and all_plain(args):
            spec = [key, token, list(args), None, [], options]
        else:
            refs: list = []
            name = _funcname(fn)
            sargs = dumps(args, refs, what=f"an argument of {name}()")
            skw = dumps(kwargs, refs, what=f"a keyword argument of {name}()") if kwargs else None
            spec = [key, token, sargs, skw, list(dict.fromkeys(refs)), options]
        if key is None:
            spec[0] = f"{prefix or _funcname(fn)}-{call_digest(spec)}"
        return spec

    def _post_specs(self, specs: list) -> list[Future]:
        """Futures for ``specs``; sends those whose key this client does not hold already."""
        records, futures, new = self._records, [], []
        for spec in specs:
            key = spec[0]
            rec = records.get(key)
            if rec is None:
                rec = records[key] = _KeyRecord(key)
                new.append(spec)
            futures.append(Future(key, self, rec))
        if new:
            if self._conn.listeners["submit"]:   # before it can run: observers see it first
                self._conn.emit("submit", [s[0] for s in new])
            self._conn.post([m.SUBMIT, new])
        return futures

    @staticmethod
    def _split_options(kwargs: dict) -> tuple[dict, dict | None]:
        """Separate task-control keywords from the function's own keyword arguments."""
        if not kwargs:
            return kwargs, None
        control = {k: kwargs.pop(k) for k in OPTION_NAMES if k in kwargs}
        return kwargs, build_options(control)

    def submit(self, fn: Callable, *args, key: str | None = None, **kwargs) -> Future:
        """Run ``fn(*args, **kwargs)`` on the cluster; futures in the arguments are inputs.

        Task control (keywords not passed to ``fn``): ``priority`` (higher first),
        ``workers`` (addresses allowed to run it), ``queue``, ``retries``, ``retry_on``,
        ``retry_backoff``, ``retry_backoff_max``, ``retry_jitter``, ``rate_limit`` ("10/s"),
        ``limit_key``, ``concurrency``, ``timeout`` (seconds), ``countdown``/``eta``,
        ``expires`` and ``collect_errors`` (inputs that failed arrive as their exceptions).
        Durations also take text: ``timeout="10 ms"``, ``countdown="2 minutes"``.

        ``pure=True``: the key is a digest of the function and its arguments, so submitting
        the same call again (from this client) gives the same task, computed once. By default
        every call is a new task (dask's ``pure=False``), which is right for functions with
        side effects or randomness.
        """
        pure = _pure_flag(kwargs)
        kwargs, options = self._split_options(kwargs)
        spec = self._spec(fn, args, kwargs, key, options, pure=pure)
        return self._post_specs([spec])[0]

    def map(self, fn: Callable, *iterables: Iterable, key: str | list | None = None,
            **kwargs) -> list[Future]:
        """``submit(fn, *args, **kwargs)`` for each tuple of ``zip(*iterables)``; the same task
        control keywords (and ``pure``) as ``submit`` apply to every task. ``key`` is a name
        the tasks' keys start with (``"load"`` gives ``load-...``), or a list of keys, one per
        task."""
        pure = _pure_flag(kwargs)
        inputs = check_iterables(iterables)
        kwargs, options = self._split_options(kwargs)
        prefix, keys = None, None
        if isinstance(key, str) and key:
            prefix = key
        elif isinstance(key, (list, tuple)):
            keys = list(key)
        elif key is not None:
            raise TypeError(f"key must be a name (a non-empty string) or a list of keys, "
                            f"got {key!r}")
        specs = []
        # Many small objects and no garbage: the cyclic GC would rescan them over and over.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for i, args in enumerate(zip(*inputs)):
                specs.append(self._spec(fn, args, kwargs, keys[i] if keys and i < len(keys)
                                        else None, options, prefix, pure))
            if keys is not None and len(keys) != len(specs):
                raise ValueError(f"map got {len(keys)} keys for {len(specs)} tasks: give one "
                                 "key per task")
            return self._post_specs(specs)
        finally:
            if gc_was_enabled:
                gc.enable()

    # ------------------------------------------------------------------ waiting, gathering
    def _wait_records(self, records: list, timeout: Any, what: str) -> None:
        if self.asynchronous:
            raise ClusterError("use `await future` (or await client.gather) with an "
                               "asynchronous client")
        timeout = optional_timeout(timeout)
        pending = [r for r in records if r.status == PENDING]
        if not pending:
            return
        event = threading.Event()
        remaining = [len(pending)]

        def one_done(_rec):
            remaining[0] -= 1
            if remaining[0] == 0:
                event.set()

        for rec in pending:
            rec.add_callback(one_done)
        try:
            finished = wait_event(event, timeout)
        except KeyboardInterrupt as e:
            e.add_note(f"stopped waiting for {what}; the task still runs on the cluster "
                       "(future.cancel() stops it)")
            raise
        if not finished:
            raise TimeoutError(f"{what} did not finish within {timeout:g} s")

    async def _wait_records_async(self, records: list) -> None:
        pending = [r for r in records if r.status == PENDING]
        if not pending:
            return
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        remaining = [len(pending)]

        def one_done(_rec):
            remaining[0] -= 1
            if remaining[0] == 0:
                if loop is self._loop:
                    done.done() or done.set_result(None)
                else:
                    loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

        for rec in pending:
            rec.add_callback(one_done)
        await done

    def _value_of(self, fut: Future) -> Any:
        rec = fut._record
        value = rec.value
        if value is _NO_VALUE:
            self._sync(self._fetch_values_async([fut]))
            value = rec.value
        if type(value) is Serialized:
            value = rec.value = loads(value)
        return value

    async def _fetch_values_async(self, futures: list) -> list:
        """Bring results that did not travel with their completion from the workers."""
        for attempt in range(6):
            need = {f.key: f._record for f in futures if f._record.value is _NO_VALUE}
            if not need:
                break
            if attempt == 5:
                raise FutureLostError(f"could not fetch {len(need)} results after 5 attempts")
            who_has = await self._conn.request("who_has", keys=list(need))
            by_worker: dict[str, list[str]] = {}
            lost = []
            for key, holders in who_has.items():
                if holders:
                    by_worker.setdefault(holders[hash(key) % len(holders)], []).append(key)
                else:
                    lost.append(key)

            async def fetch(worker, keys):
                try:
                    values, missing, errors = await self._conn.pool.get_data(worker, keys)
                except Exception:
                    return keys
                for key, text in errors.items():
                    raise SerializationError(text)
                for key, value in values.items():
                    need[key].value = value
                return missing

            results = await asyncio.gather(*(fetch(w, ks) for w, ks in by_worker.items()))
            lost += [k for missing in results for k in missing]
            if lost:
                # the result was lost with a worker: the scheduler recomputes and tells us
                for key in lost:
                    if need[key].status == FINISHED and need[key].value is _NO_VALUE:
                        need[key].reset()
                await self._wait_records_async([need[k] for k in lost])
        out = []
        for f in futures:
            v = f._record.value
            if type(v) is Serialized:
                v = f._record.value = loads(v)
            out.append(v)
        return out

    def gather(self, futures: Any, errors: str = "raise", timeout: float | None = None,
               progress: bool = False) -> Any:
        """Results for a future, or a list/tuple/dict/set structure of them (same shape back).
        ``progress=True`` shows a progress bar while waiting (a widget in a notebook)."""
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
        found = collect_futures(futures)
        if progress and Client._progress_hook is not None:
            Client._progress_hook(found)
        if self.asynchronous:
            return self._gather_async(futures, found, errors)
        self._wait_records([f._record for f in found], timeout, f"gather of {len(found)} futures")
        values = self._collect(found, errors)
        missing = [f for f in found if f.key not in values and f._record.status == FINISHED]
        if missing:
            for f, v in zip(missing, self._sync(self._fetch_values_async(missing))):
                values[f.key] = v
        for f in found:
            if f.key not in values and f._record.status == FINISHED:
                values[f.key] = self._value_of(f)
        return rebuild(futures, values, skip_missing=errors == "skip")

    async def _gather_async(self, futures, found, errors):
        await self._wait_records_async([f._record for f in found])
        values = self._collect(found, errors)
        missing = [f for f in found if f.key not in values and f._record.status == FINISHED]
        for f, v in zip(missing, await self._fetch_values_async(missing)):
            values[f.key] = v
        return rebuild(futures, values, skip_missing=errors == "skip")

    def _collect(self, found: list, errors: str) -> dict:
        values = {}
        for f in found:
            rec = f._record
            if rec.status != FINISHED:
                if errors == "raise":
                    raise rec.error()
                continue
            v = rec.value
            if v is not _NO_VALUE:
                if type(v) is Serialized:
                    v = rec.value = loads(v)
                values[f.key] = v
        return values

    # ------------------------------------------------------------------ other operations
    def cancel(self, futures: Future | Iterable[Future]) -> None:
        found = collect_futures(futures)
        for f in found:
            if f._record.status == PENDING:
                f._record.cancel_reason = "cancelled by the client"
                if self._conn.listeners["task"]:
                    self._conn.emit("task", f.key, CANCELLED)
                f._record.finish(CANCELLED)
        self._conn.post([m.CANCEL, [f.key for f in found]])

    def fire_and_forget(self, futures: Future | Iterable[Future]) -> None:
        self._conn.post([m.FIRE_AND_FORGET, [f.key for f in collect_futures(futures)]])

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
        return lambda: fn in self._conn.listeners[event] and self._conn.listeners[event].remove(fn)

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
            self._conn.post([m.RETRY, keys])

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
        link = getattr(self.cluster, "dashboard_link", None)
        if link is None and self.cluster is None:
            try:   # connected by address: ask the scheduler where its dashboard is
                link = self._sync(self._conn.request("info"), timeout=10).get("dashboard")
            except Exception:
                link = None
        return link

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        if self._closed:
            return
        if self.asynchronous:
            self._conn.close()
            self._closed = True
            return self._close_cluster_async()
        try:
            if not self._loop.is_closed():
                asyncio.run_coroutine_threadsafe(self._close_conn(), self._loop).result(10)
        except Exception:
            pass
        self._closed = True
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
        """``"running"``, ``"disconnected"`` (the scheduler went away) or ``"closed"``."""
        if self._closed:
            return "closed"
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


def _pure_flag(kwargs: dict) -> bool:
    pure = kwargs.pop("pure", False)
    if not isinstance(pure, bool):
        raise TypeError(f"pure must be True or False, got {pure!r}")
    return pure


def AsyncClient(*args, **kwargs) -> Client:  # noqa: N802 - reads as a class
    """A Client for asyncio code: ``async with AsyncClient(cluster) as c: await c.submit(...)``."""
    return Client(*args, asynchronous=True, **kwargs)


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
