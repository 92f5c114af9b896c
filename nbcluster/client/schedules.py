"""Periodic tasks: ``client.schedule(fn, every="10m" | cron="0 * * * *")``, Celery beat's job
done by the scheduler itself (kept in its journal, when it has one, so schedules go on after
a restart). A base of Client, and the handle it returns."""

from __future__ import annotations

import datetime
from typing import Any, Callable

from ..durations import parse_duration
from ..protocol import messages as m
from .functions import FunctionCache
from .future import Future

_NOT_FOR_SCHEDULES = ("countdown", "eta", "expires", "key", "pure")


class PeriodicTask:
    """A schedule on the cluster: ``cancel()``, ``next_runs``, ``runs`` (recent runs: key,
    time, state, error), ``skipped`` and ``last_result()``. Its fields are as of the last
    ``refresh()`` (made when it was created, and by each property that reads them). With an
    asynchronous client, ``await`` ``refresh()``, ``cancel()`` and ``last_result()``; the
    properties then read what the last ``refresh()`` brought."""

    def __init__(self, client: Any, info: dict[str, Any]) -> None:
        self.client = client
        self.name: str = info["name"]
        self._info = info

    def refresh(self) -> Any:
        """This schedule's fields, fetched again (a coroutine with an asynchronous client)."""
        if self.client.asynchronous:
            return self._refresh_async()
        return self._update(self.client.schedules())

    async def _refresh_async(self) -> dict[str, Any]:
        return self._update(await self.client.schedules())

    def _update(self, every_schedule: dict[str, Any]) -> dict[str, Any]:
        info = every_schedule.get(self.name)
        if info is None:
            raise KeyError(f"there is no schedule named {self.name!r} any more")
        self._info = info
        return info

    def _current(self) -> dict[str, Any]:
        return self._info if self.client.asynchronous else self.refresh()

    @property
    def next_runs(self) -> list[datetime.datetime]:
        """The next three run times (UTC)."""
        return [_utc(t) for t in self._current()["next"]]

    @property
    def runs(self) -> list[dict[str, Any]]:
        """Recent runs, oldest first: ``key``, ``at`` (UTC), ``state`` (``queued``,
        ``processing``, ``memory``, ``erred``, ``skipped`` ...) and ``error`` (its last line)."""
        return [dict(r, at=_utc(r["at"])) for r in self._current()["runs"]]

    @property
    def skipped(self) -> int:
        """Runs not started: the last one still ran (``overlap=False``), or the time passed
        while nothing could start them."""
        return int(self._current()["skipped"])

    def last_result(self, timeout: Any = None) -> Any:
        """The result of the most recent run that finished (its error raised if it failed);
        if none has finished yet, of the first one, waited for up to ``timeout``."""
        if self.client.asynchronous:
            return self._last_result_async(timeout)
        return self._last_run(self.refresh()).result(timeout)

    async def _last_result_async(self, timeout: Any) -> Any:
        import asyncio

        from ..durations import optional_timeout

        future = self._last_run(await self._refresh_async())
        return await asyncio.wait_for(future, optional_timeout(timeout))

    def _last_run(self, info: dict[str, Any]) -> Future:
        kept = info["kept"]
        for run in reversed(info["runs"]):
            if run["key"] in kept and run["state"] in ("memory", "erred"):
                return self.client._future_of(run["key"])
        if kept:              # started, not finished: the first one, then
            return self.client._future_of(kept[0])
        when = _utc(info["next"][0])
        raise LookupError(f"schedule {self.name!r} has no run yet (the first is due "
                          f"{when:%Y-%m-%d %H:%M:%S} UTC)")

    def cancel(self) -> Any:
        """Stop it: no new runs (a run under way goes on to its end)."""
        return self.client.unschedule(self.name)

    def __repr__(self) -> str:
        info = self._info
        rule = f"every {info['every']:g} s" if info["every"] else f"cron {info['cron']!r}"
        when = _utc(info["next"][0])
        return f"<PeriodicTask {self.name!r} {rule}, next {when:%Y-%m-%d %H:%M:%S} UTC>"


def _utc(t: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc)


def _start_time(start: Any) -> float | None:
    if start is None:
        return None
    if isinstance(start, datetime.datetime):
        if start.tzinfo is None:
            raise ValueError("start must be an aware datetime (with a tzinfo), or epoch seconds")
        return start.timestamp()
    if isinstance(start, (int, float)) and not isinstance(start, bool):
        return float(start)
    raise TypeError(f"start must be a datetime or epoch seconds, got {start!r}")


class Schedules:
    _conn: Any

    def _sync(self, coro, timeout: float | None = None):   # defined by Client
        raise NotImplementedError

    def _spec(self, *args, **kwargs) -> m.TaskSpec:         # defined by Submitting
        raise NotImplementedError

    def _split_options(self, kwargs: dict) -> tuple[dict, dict | None]:
        raise NotImplementedError

    _functions: FunctionCache
    _records: dict

    def schedule(self, fn: Callable, *args, every: Any = None, cron: str | None = None,
                 name: str | None = None, overlap: bool = False, keep: int = 1,
                 start: Any = None, **kwargs) -> PeriodicTask:
        """Run ``fn(*args, **kwargs)`` every ``every`` (seconds or text: ``"10m"``) or at the
        times of ``cron`` (five fields, UTC: ``"0 * * * *"`` is every hour on the hour).

        ``name`` (default: the function's name) is unique in the cluster; ``overlap=False``
        skips a run while the last one still runs; ``keep`` finished runs keep their results;
        ``start`` (a datetime or epoch seconds) is the first run (default: now for ``every``,
        the next matching time for ``cron``). Task options (``retries``, ``queue``,
        ``timeout``, ``rate_limit`` ...) apply to every run. The schedule belongs to the
        cluster: it runs on after this client closes, until ``cancel()``."""
        for option in _NOT_FOR_SCHEDULES:
            if option in kwargs:
                raise TypeError(f"schedule() takes no {option}=: each run is started at its time")
        if (every is None) == (cron is None):
            raise TypeError("schedule() needs exactly one of every= and cron=")
        seconds = None if every is None else parse_duration(every, "every")
        if seconds is not None and seconds <= 0:
            raise ValueError(f"every must be positive, got {every!r}")
        if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
            raise ValueError(f"keep must be a positive number of runs, got {keep!r}")
        name = name or getattr(fn, "__name__", None) or "schedule"
        kwargs, options = self._split_options(dict(kwargs))
        first = _start_time(start)
        token = self._functions.acquire(fn)
        try:
            spec = self._spec(fn, token, args, kwargs, None, options)
            if spec.deps:
                raise TypeError("schedule() arguments cannot hold futures: a schedule "
                                "outlives them (pass values)")
        except BaseException:
            self._functions.release(token)
            raise
        fields = (name, spec, seconds, cron, bool(overlap), keep, first)
        return self._sync(self._schedule(token, fields))

    async def _schedule(self, token: str, fields: tuple[Any, ...]) -> PeriodicTask:
        try:
            reply = await self._conn.ask(lambda rid: m.Schedule(rid, *fields))
        finally:   # the schedule keeps its function on the scheduler: this use goes back
            self._functions.release(token)
        if not reply.ok:
            raise ValueError(reply.result)
        return PeriodicTask(self, reply.result)

    def schedules(self) -> Any:
        """Every schedule in the cluster by name: its rule, ``next`` run times (epoch
        seconds), ``runs`` (recent ones), ``skipped`` and the ``kept`` result keys."""
        return self._sync(self._schedules())

    async def _schedules(self) -> dict[str, dict[str, Any]]:
        return dict(await self._conn.request("schedules"))

    def unschedule(self, name: str) -> Any:
        """Stop the schedule ``name`` (see ``PeriodicTask.cancel``)."""
        return self._sync(self._unschedule(name))

    async def _unschedule(self, name: str) -> None:
        reply = await self._conn.ask(lambda rid: m.Unschedule(rid, name))
        if not reply.ok:
            raise KeyError(reply.result)

    def _future_of(self, key: str) -> Future:
        """A future for a task this client did not submit (the scheduler is told it wants it)."""
        new = key not in self._records
        future = Future(key, self)
        if new:
            self._conn.post(m.Want([key]))
        return future

