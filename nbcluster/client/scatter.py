"""``Client.scatter``: local data onto the workers, futures back in the shape it came in."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from ..errors import ClusterError
from ..protocol import messages as m
from ..protocol.serialize import Serialized, dump_value
from .future import Future
from .records import NO_VALUE, ended

# Collections scattered item by item (anything else, a numpy array included, is one value).
_SPREAD = (list, tuple, set, frozenset, range)


def _reshape(data: Any, futures: list) -> Any:
    """``futures`` in the container type of ``data`` (a range gives a list)."""
    if isinstance(data, tuple) and hasattr(data, "_fields"):    # a namedtuple
        return type(data)(*futures)
    if isinstance(data, (tuple, set, frozenset)):
        return type(data)(futures)
    return futures


async def scatter(client, data: Any, workers: str | list[str] | None, broadcast: bool) -> Any:
    conn = client._conn
    info = await conn.request("info")
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
        holders = await _check_keys(conn, [k for k, _ in items])
    elif isinstance(data, _SPREAD):
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
    results = await asyncio.gather(*(conn.pool.put_data(w, vals) for w, vals in placed),
                                   return_exceptions=True)
    futures = {key: Future(key, client) for key, _ in items}
    for (w, vals), res in zip(placed, results):
        if not isinstance(res, BaseException):   # what did land is announced (then released)
            nbytes = {k: (v.nbytes if type(v) is Serialized else 64) for k, v in vals.items()}
            conn.post(m.UpdateData(nbytes, w))
    failed = [res for res in results if isinstance(res, BaseException)]
    if failed:
        raise failed[0]
    for key in holders:                  # replaced: fetch the new value when asked
        futures[key]._record.value = NO_VALUE
    await ended([f._record for f in futures.values()])
    if isinstance(data, dict):
        return futures
    if isinstance(data, _SPREAD):
        return _reshape(data, list(futures.values()))
    return next(iter(futures.values()))


async def _check_keys(conn, keys: list) -> dict:
    """{key: old holders} for keys scattered before; refuses keys that name tasks."""
    bad = [k for k in keys if not isinstance(k, str) or not k]
    if bad:
        raise TypeError(f"scatter: keys must be non-empty strings, got {bad[0]!r}")
    found = await conn.request("scatter_check", keys=keys)
    tasks = {k: v["task"] for k, v in found.items() if "task" in v}
    if tasks:
        named = ", ".join(f"{k!r} ({state})" for k, state in tasks.items())
        raise ValueError(f"scatter: {named} already name submitted tasks; a scattered value "
                         "cannot take a task's key (choose other keys)")
    return {k: v["holders"] for k, v in found.items() if "holders" in v}
