"""What a client asks the scheduler about its cluster, or has it do there: queues, limits,
worker counts, stories, ``run`` on every worker, restart. A base of Client (no state of its
own: it uses the client's connection and its sync facade)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable

from ..durations import optional_timeout
from ..protocol import messages as m
from ..protocol.serialize import Serialized, all_plain, dumps_function, loads
from .structure import collect_futures

if TYPE_CHECKING:
    from .cluster_protocol import ClusterLike
    from .future import Future


class ClusterRequests:
    _conn: Any
    _records: dict
    cluster: ClusterLike | None
    scheduler_address: str

    def _sync(self, coro, timeout: float | None = None):   # defined by Client
        raise NotImplementedError

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

    def snapshot(self, since: int = 0, transfers_since: int = 0) -> dict:
        """The scheduler's state as plain data (workers, tasks by state and function, the task
        log after cursor ``since``): what dashboards draw."""
        return self._sync(self._conn.request("snapshot", since=since,
                                             transfers_since=transfers_since), timeout=30)

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
        self._conn.post(m.SetLimit(key, parsed, concurrency))

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
        if self.cluster is not None:      # blocking: off the client's I/O loop
            await loop.run_in_executor(None, self.cluster.restart_workers, timeout)
        while len((await self._conn.request("info"))["workers"]) < before:
            if loop.time() > deadline:     # they join over the network: ask again shortly
                raise TimeoutError(f"restart: {before} workers did not come back within "
                                   f"{timeout:g} s")
            await asyncio.sleep(0.05)

    def retire_workers(self, workers: list[str] | None = None, timeout: Any = "60s") -> list[str]:
        """Retire ``workers`` (addresses or names; None: all) gracefully: they take no new
        work, what is queued on them moves, what runs there finishes, and every result only
        they hold is copied to another worker before they leave (with none left, it is
        recomputed if needed). Returns their addresses once they have left; a worker still
        there after ``timeout`` is disconnected. A worker of this client's own cluster is not
        replaced."""
        if workers is not None and (isinstance(workers, str) or not all(
                isinstance(w, str) for w in workers)):
            raise TypeError(f"workers must be a list of addresses or names, got {workers!r}")
        seconds = optional_timeout(timeout)
        retire = getattr(self.cluster, "retire_workers", None)
        if retire is not None:   # the cluster must not replace them
            return retire(workers, seconds)
        return self._sync(self._conn.request("retire_workers", workers=workers,
                                             timeout=seconds))

    def wait_for_workers(self, n_workers: int = 1, timeout: Any = None) -> int:
        """Block until at least ``n_workers`` workers are connected; returns how many are.
        ``timeout`` (seconds or text such as ``"30s"``): TimeoutError after it."""
        if type(n_workers) is not int or n_workers < 0:
            raise ValueError(f"n_workers must be a non-negative int, got {n_workers!r}")
        seconds = optional_timeout(timeout)
        return self._sync(self._wait_for_workers(n_workers, seconds))

    async def _wait_for_workers(self, n_workers: int, timeout: float | None) -> int:
        try:
            return await asyncio.wait_for(
                self._conn.request("wait_for_workers", n=n_workers), timeout)
        except asyncio.TimeoutError:
            have = len((await self._conn.request("info"))["workers"])
            raise TimeoutError(f"{have} of {n_workers} workers connected within {timeout:g} s "
                               f"(scheduler {self.scheduler_address})") from None

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
