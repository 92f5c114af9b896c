"""``gather``: results of futures, in the shape they came in. A base of Client.

One implementation, :meth:`Results.gather_async`, on the client's loop. The synchronous
``gather`` waits on the caller's thread and, when every value is already here (small results
travel with their completion), assembles the answer there without a hop to the I/O thread;
only values still on workers send it through ``gather_async``.

A value over the inline limit stays on the worker that computed it; its DONE names the
holders, so the client asks one of them straight away. A holder that no longer has it (a
worker lost meanwhile) is dropped and the scheduler asked (``who_has``); a value nobody holds
is recomputed by the scheduler, which says DONE again.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Sequence

from ..durations import optional_timeout
from ..errors import FutureLostError, SerializationError
from .records import FINISHED, NO_VALUE, KeyRecord, block_on, ended
from .structure import collect_futures, rebuild

FETCH_ATTEMPTS = 5


class Results:
    _conn: Any
    asynchronous: bool
    _progress_hook: Callable[[list], Any] | None

    def _sync(self, coro, timeout: float | None = None):   # defined by Client
        raise NotImplementedError

    def gather(self, futures: Any, errors: str = "raise", timeout: float | None = None,
               progress: bool = False) -> Any:
        """Results for a future, or a list/tuple/dict/set structure of them (same shape back).
        ``progress=True`` shows a progress bar while waiting (a widget in a notebook)."""
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
        seconds = optional_timeout(timeout)
        found = collect_futures(futures)
        hook = type(self)._progress_hook
        if progress and hook is not None:
            hook(found)
        what = f"gather of {len(found)} futures"
        if self.asynchronous:
            coro = self.gather_async(futures, errors)
            return coro if seconds is None else _within(coro, seconds, what)
        deadline = None if seconds is None else time.monotonic() + seconds
        records = [f._record for f in found]
        block_on(records, seconds, what)
        for rec in records:
            if rec.status == FINISHED and rec.value is NO_VALUE:   # on a worker: fetch it
                return self.fetch_sync(self.gather_async(futures, errors), deadline, seconds,
                                       what)
        return _assemble(futures, records, errors)

    def fetch_sync(self, coro, deadline: float | None, seconds: float | None, what: str) -> Any:
        """Run ``coro`` (fetching values from workers) on the client's loop until
        ``deadline`` (``time.monotonic()``): a TimeoutError naming ``what`` after it, and the
        fetch is given up (a holder that never answers must not hold the caller)."""
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return self._sync(coro, left)
        except TimeoutError:
            if deadline is None or time.monotonic() < deadline:
                raise     # not ours: raised by the fetch itself
            raise TimeoutError(f"{what} did not finish within {seconds:g} s: the values are "
                               "on workers that did not send them in time (busy, stuck, or "
                               "unreachable from here)") from None

    async def gather_async(self, futures: Any, errors: str = "raise") -> Any:
        """``gather`` as a coroutine on the client's loop (``client.loop``): what ``gather``
        returns for an asynchronous client."""
        records = [f._record for f in collect_futures(futures)]
        await ended(records)
        if errors == "raise":
            for rec in records:
                if rec.status != FINISHED:
                    raise rec.error()
        await self._fetch(records)
        return _assemble(futures, records, errors)

    async def _fetch(self, records: Sequence[KeyRecord]) -> None:
        """Bring the values of finished records that did not travel with their DONE."""
        for attempt in range(FETCH_ATTEMPTS + 1):
            need = {r.key: r for r in records if r.status == FINISHED and r.value is NO_VALUE}
            if not need:
                return
            if attempt == FETCH_ATTEMPTS:
                raise FutureLostError(f"could not fetch {len(need)} results after "
                                      f"{FETCH_ATTEMPTS} attempts")
            by_worker, lost = await self._locate(need)
            await asyncio.gather(*(self._fetch_from(worker, keys, need)
                                   for worker, keys in by_worker.items()))
            if lost:
                # nobody holds it (lost with a worker): the scheduler recomputes, says DONE again
                for key in lost:
                    if need[key].status == FINISHED and need[key].value is NO_VALUE:
                        need[key].reset()
                await ended([need[k] for k in lost])

    async def _locate(self, need: dict[str, KeyRecord]) -> tuple[dict[str, list], list]:
        """``{worker: keys}`` to ask, from the holders DONE named, else from the scheduler;
        and the keys nobody holds."""
        by_worker: dict[str, list[str]] = {}
        ask = []
        for key, rec in need.items():
            holders = rec.holders
            if holders:
                by_worker.setdefault(holders[hash(key) % len(holders)], []).append(key)
            else:
                ask.append(key)
        lost = []
        if ask:
            for key, holders in (await self._conn.request("who_has", keys=ask)).items():
                if holders:
                    by_worker.setdefault(holders[hash(key) % len(holders)], []).append(key)
                else:
                    lost.append(key)
        return by_worker, lost

    async def _fetch_from(self, worker: str, keys: list, need: dict[str, KeyRecord]) -> None:
        try:
            values, missing, errors = await self._conn.pool.get_data(worker, keys)
        except Exception:   # the worker is gone: ask the others, or the scheduler
            values, missing, errors = {}, keys, {}
        for text in errors.values():
            raise SerializationError(text)
        for key, value in values.items():
            need[key].value = value
        for key in missing:   # not there after all (a lost worker): don't ask it again
            rec = need[key]
            if worker in rec.holders:
                rec.holders = [h for h in rec.holders if h != worker]


async def _within(coro, seconds: float, what: str) -> Any:
    """``await coro``, or a TimeoutError naming ``what`` after ``seconds``."""
    try:
        return await asyncio.wait_for(coro, seconds)
    except TimeoutError:
        raise TimeoutError(f"{what} did not finish within {seconds:g} s") from None


def _assemble(futures: Any, records: Sequence[KeyRecord], errors: str) -> Any:
    """``futures`` with every future replaced by its value (all here by now); the first
    error raised, or (``errors="skip"``) the futures that did not finish left out."""
    values = {}
    for rec in records:
        if rec.status != FINISHED:
            if errors == "raise":
                raise rec.error()
            continue
        value = rec.loaded()
        if value is not NO_VALUE:
            values[rec.key] = value
    return rebuild(futures, values, skip_missing=errors == "skip")
