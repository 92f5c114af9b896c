"""Client: submit functions, get futures, gather results."""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import threading
import uuid
from typing import Any, Callable, Iterable

from ..errors import ClusterError, FutureLostError, SerializationError
from ..protocol import messages as m
from ..protocol.serialize import Serialized, all_plain, dump_value, dumps, dumps_function, loads
from .connection import ClientConnection, IOThread
from .blocking import wait_event, wait_future
from .future import _NO_VALUE, CANCELLED, FINISHED, PENDING, Future, _KeyRecord
from .options import OPTION_NAMES, build_options
from .structure import collect_futures, rebuild

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


class Client:
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

    def __init__(self, address: Any = None, *, token: str | None = None, timeout: float = 10.0,
                 asynchronous: bool = False, set_as_default: bool = True,
                 security=None) -> None:
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
        self._fn_tokens: dict[int, tuple[str, Callable]] = {}
        self._io: IOThread | None = None
        if asynchronous:
            self._loop = asyncio.get_running_loop()
        else:
            self._io = IOThread(f"nbcluster-client-{self._uid}")
            self._loop = self._io.loop
        self._conn = ClientConnection(address, token, self._loop, timeout, security)
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

    def _fn_token(self, fn: Callable) -> str:
        entry = self._fn_tokens.get(id(fn))
        if entry is not None and entry[1] is fn:
            return entry[0]
        if not callable(fn):
            raise TypeError(f"submit needs a callable as its first argument, got {fn!r}")
        blob = dumps_function(fn)
        token = f"{_funcname(fn)}-{self._uid}-{len(self._fn_tokens)}"
        self._fn_tokens[id(fn)] = (token, fn)
        self._conn.post([m.FUNCTION, token, blob])
        return token

    def _spec(self, fn: Callable, args: tuple, kwargs: dict, key: str | None, options) -> list:
        if self._closed:
            raise ClusterError("this client is closed")
        token = self._fn_token(fn)
        if key is None:
            key = f"{_funcname(fn)}-{self._uid}{next(self._counter):x}"
        elif not isinstance(key, str) or not key:
            raise TypeError(f"key must be a non-empty string, got {key!r}")
        if not kwargs and all_plain(args):
            return [key, token, list(args), None, [], options]
        refs: list = []
        name = _funcname(fn)
        sargs = dumps(args, refs, what=f"an argument of {name}()")
        skw = dumps(kwargs, refs, what=f"a keyword argument of {name}()") if kwargs else None
        return [key, token, sargs, skw, list(dict.fromkeys(refs)), options]

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
        """
        kwargs, options = self._split_options(kwargs)
        spec = self._spec(fn, args, kwargs, key, options)
        fut = Future(spec[0], self, self._record_for(spec[0]))
        if self._conn.listeners["submit"]:   # before it can run: observers see it first
            self._conn.emit("submit", [spec[0]])
        self._conn.post([m.SUBMIT, [spec]])
        return fut

    def map(self, fn: Callable, *iterables: Iterable, key: str | list | None = None,
            **kwargs) -> list[Future]:
        """``submit(fn, *args, **kwargs)`` for each tuple of ``zip(*iterables)``; the same task
        control keywords as ``submit`` apply to every task."""
        if not iterables:
            raise TypeError("map needs at least one iterable")
        kwargs, options = self._split_options(kwargs)
        specs = []
        futures = []
        keys = key if isinstance(key, (list, tuple)) else None
        # Many small objects and no garbage: the cyclic GC would rescan them over and over.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for i, args in enumerate(zip(*iterables)):
                spec = self._spec(fn, args, kwargs, keys[i] if keys else None, options)
                specs.append(spec)
                futures.append(Future(spec[0], self, self._record_for(spec[0])))
        finally:
            if gc_was_enabled:
                gc.enable()
        if self._conn.listeners["submit"]:
            self._conn.emit("submit", [s[0] for s in specs])
        self._conn.post([m.SUBMIT, specs])
        return futures

    # ------------------------------------------------------------------ waiting, gathering
    def _wait_records(self, records: list, timeout: float | None, what: str) -> None:
        if self.asynchronous:
            raise ClusterError("use `await future` (or await client.gather) with an "
                               "asynchronous client")
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
        """Send local data to workers; returns futures (same shape as ``data``)."""
        return self._sync(self._scatter(data, workers, broadcast))

    async def _scatter(self, data, workers, broadcast):
        info = await self._conn.request("info")
        targets = list(info["workers"])
        if workers is not None:
            wanted = [workers] if isinstance(workers, str) else list(workers)
            unknown = [w for w in wanted if w not in targets]
            if unknown:
                raise ValueError(f"scatter: unknown workers {unknown}; known: {targets}")
            targets = wanted
        if not targets:
            raise ClusterError("scatter: the cluster has no workers")
        holders: dict = {}
        if isinstance(data, dict):
            items = list(data.items())
            holders = await self._scatter_check([k for k, _ in items])
        elif isinstance(data, (list, tuple, set, frozenset)):
            items = [(f"{type(v).__name__}-{uuid.uuid4().hex}", v) for v in data]
        else:
            items = [(f"{type(data).__name__}-{uuid.uuid4().hex}", data)]
        plan: dict[str, dict] = {}
        for i, (key, value) in enumerate(items):
            dests = targets if broadcast else [targets[i % len(targets)]]
            # a key scattered before is replaced: its old holders get the new value too
            dests = dests + [w for w in holders.get(key, ()) if w not in dests]
            payload = dump_value(value, what=f"scattered value {key!r}")
            for w in dests:
                plan.setdefault(w, {})[key] = payload
        placed = list(plan.items())
        results = await asyncio.gather(*(self._conn.pool.put_data(w, vals) for w, vals in placed),
                                       return_exceptions=True)
        futures = {key: Future(key, self, self._record_for(key)) for key, _ in items}
        for (w, vals), res in zip(placed, results):
            if not isinstance(res, BaseException):   # what did land is announced (then released)
                nbytes = {k: (v.nbytes if type(v) is Serialized else 64) for k, v in vals.items()}
                self._conn.post([m.UPDATE_DATA, nbytes, w])
        failed = [res for res in results if isinstance(res, BaseException)]
        if failed:
            raise failed[0]
        for key in holders:                  # replaced: fetch the new value when asked
            futures[key]._record.value = _NO_VALUE
        await self._wait_records_async([f._record for f in futures.values()])
        if isinstance(data, dict):
            return futures
        if isinstance(data, (list, tuple, set, frozenset)):
            return list(futures.values()) if not isinstance(data, tuple) else tuple(futures.values())
        return next(iter(futures.values()))

    async def _scatter_check(self, keys: list) -> dict:
        """{key: old holders} for keys scattered before; refuses keys that name tasks."""
        bad = [k for k in keys if not isinstance(k, str) or not k]
        if bad:
            raise TypeError(f"scatter: keys must be non-empty strings, got {bad[0]!r}")
        found = await self._conn.request("scatter_check", keys=keys)
        tasks = {k: v["task"] for k, v in found.items() if "task" in v}
        if tasks:
            named = ", ".join(f"{k!r} ({state})" for k, state in tasks.items())
            raise ValueError(f"scatter: {named} already name submitted tasks; a scattered value "
                             "cannot take a task's key (choose other keys)")
        return {k: v["holders"] for k, v in found.items() if "holders" in v}

    def run(self, fn: Callable, *args, workers: list[str] | None = None) -> Any:
        """Run ``fn(*args)`` once on every worker: ``{worker address: result}``."""
        return self._sync(self._run(fn, args, workers))

    async def _run(self, fn, args, workers):
        blob = dumps_function(fn)
        if not all_plain(args):
            raise TypeError("client.run takes plain arguments (numbers, strings, None)")
        reply = await self._conn.request("run", blob=blob, args=list(args), workers=workers)
        if reply["errors"]:
            worker, exc = next(iter(reply["errors"].items()))
            err = loads(exc) if type(exc) is Serialized else RuntimeError(str(exc))
            if isinstance(err, BaseException):
                err.add_note(f"(raised on worker {worker})")
                raise err
            raise RuntimeError(f"run failed on {worker}: {err}")
        return {w: (loads(v) if type(v) is Serialized else v) for w, v in reply["results"].items()}

    def on(self, event: str, fn: Callable) -> Callable[[], None]:
        """Observe the client: ``"submit"`` fn(keys) on the submitting thread; ``"task"``
        fn(key, status) and ``"output"`` fn(key, stream, text) on the client's I/O thread.
        Without an ``"output"`` listener, task output is printed here, marked with its key.
        Returns a function that removes the listener."""
        if event not in self._conn.listeners:
            raise ValueError(f"unknown event {event!r}; choose from {sorted(self._conn.listeners)}")
        self._conn.listeners[event].append(fn)
        return lambda: fn in self._conn.listeners[event] and self._conn.listeners[event].remove(fn)

    def snapshot(self, since: int = 0, transfers_since: int = 0) -> dict:
        """The scheduler's state as plain data (workers, tasks by state and function, the task
        log after cursor ``since``): what dashboards draw."""
        return self._sync(self._conn.request("snapshot", since=since,
                                             transfers_since=transfers_since), timeout=30)

    def dashboard(self, **kwargs):
        """The task stream and memory plots, live, inline in the notebook (no extra port)."""
        if Client._dashboard_factory is None:
            raise ClusterError("the inline dashboard needs bokeh and jupyter_bokeh "
                               "(pip install 'nbcluster[jupyter]')")
        return Client._dashboard_factory(self, **kwargs)

    def queues(self) -> dict:
        """Per queue: ``queued`` (waiting, also with no worker to take them), ``processing``,
        and the ``workers`` subscribed to it."""
        return self._sync(self._conn.request("queues"))

    def limits(self) -> dict:
        """Per limit key: its rate, concurrency, tasks running and tasks held back."""
        return self._sync(self._conn.request("limits"))

    def set_limit(self, key: str, rate: str | float | None = None,
                  concurrency: int | None = None) -> None:
        """Change (or set) a cluster-wide limit on a running cluster. ``key`` is a
        ``limit_key`` or ``"function:NAME"`` for the limit of one function."""
        from .options import parse_rate

        if not isinstance(key, str) or not key:
            raise TypeError(f"set_limit needs a limit key (a string), got {key!r}")
        if concurrency is not None and (type(concurrency) is not int or concurrency < 1):
            raise ValueError(f"concurrency must be a positive int, got {concurrency!r}")
        parsed = list(parse_rate(rate)) if rate is not None else None
        self._conn.post([m.SET_LIMIT, key, parsed, concurrency])

    def attempts(self, future: Future) -> list[dict]:
        rows = self._sync(self._conn.request("attempts", key=future.key))
        return [{"worker": w, "start": s, "duration": d, "exception": e} for w, s, d, e in rows]

    def restart(self, timeout: float = 60.0) -> None:
        """Start afresh: every task is forgotten (all futures, of every client, become
        cancelled), workers drop their data, and the cluster's workers are replaced by new
        processes when this client started or was given the cluster (LocalCluster,
        SSHCluster). Returns once as many workers as before are connected."""
        return self._sync(self._restart(timeout), timeout=timeout + 5)

    async def _restart(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        before = len((await self._conn.request("info"))["workers"])
        await self._conn.request("restart")
        restart_workers = getattr(self.cluster, "restart_workers", None)
        if restart_workers is not None:    # blocking: off the client's I/O loop
            await loop.run_in_executor(None, restart_workers, timeout)
        while len((await self._conn.request("info"))["workers"]) < before:
            if loop.time() > deadline:     # they join over the network: ask again shortly
                raise TimeoutError(f"restart: {before} workers did not come back within "
                                   f"{timeout:g} s")
            await asyncio.sleep(0.05)

    def load(self) -> dict:
        """Work waiting and what each worker runs and holds (what adaptive scaling reads):
        ``{"work_seconds", "tasks": {state: n}, "workers": {address: {"processing", "keys",
        "nthreads"}}}``."""
        return self._sync(self._conn.request("load"))

    def scheduler_info(self) -> dict:
        return self._sync(self._conn.request("info"))

    def who_has(self, futures=None) -> dict:
        keys = [f.key for f in collect_futures(futures)] if futures is not None else list(self._records)
        return self._sync(self._conn.request("who_has", keys=keys))

    def story(self, key_or_future) -> list:
        key = getattr(key_or_future, "key", key_or_future)
        return self._sync(self._conn.request("story", key=key))

    def get_executor(self, **submit_kwargs):
        from .executor import ClientExecutor

        return ClientExecutor(self, **submit_kwargs)

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

    def __repr__(self) -> str:
        state = "closed" if self._closed else "connected"
        return f"<Client {self.scheduler_address} {state}>"

    def _repr_html_(self) -> str:
        link = self.dashboard_link
        dash = f"<br>Dashboard: <a href='{link}' target='_blank'>{link}</a>" if link else ""
        return (f"<div><b>nbcluster Client</b><br>Scheduler: <code>{self.scheduler_address}</code>"
                f"<br>Futures held: {len(self._records)}{dash}</div>")


def AsyncClient(*args, **kwargs) -> Client:  # noqa: N802 - reads as a class
    """A Client for asyncio code: ``async with AsyncClient(cluster) as c: await c.submit(...)``."""
    return Client(*args, asynchronous=True, **kwargs)


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
