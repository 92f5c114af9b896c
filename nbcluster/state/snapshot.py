"""A plain-data picture of the scheduler's state, for observers (dashboards, metrics, clients).

``snapshot(state, since)`` is pure: it reads a :class:`~nbcluster.state.scheduler_state.
SchedulerState` and returns dicts, lists, strings and numbers only (msgpack-able), so it can be
answered over the wire or read in the scheduler's own process. It reads no clock: ``"now"`` is
the time of the last event the state handled.

Logs are read with cursors. ``state.task_log`` is a bounded deque and ``state.task_log_total``
counts every entry ever appended; an observer passes the ``"cursor"`` of its last snapshot as
``since`` and gets only the entries appended after it (at most what the deque still holds). A
cursor larger than the total (the observer saw another scheduler) returns the whole log. The
optional ``state.transfer_log`` / ``transfer_log_total`` pair is read the same way, when present.

Shape of the result::

    {"workers": [{"address", "name", "nthreads", "processing", "executing", "ready", "nbytes",
                  "keys", "rss", "spilled", "cpu", "memory_limit", "pid", "last_seen",
                  "status", "memory_note"}, ...],
     "tasks": {state: count},
     "prefixes": {prefix: {"waiting", "queued", "processing", "memory", "released", "erred",
                           "done", "failed"}},            # done/failed: totals ever, by prefix
     "task_log": [[key, worker, start, stop, ok], ...], "cursor": int,
     "transfer_log": [[key, from_worker, to_worker, start, stop, nbytes], ...],
     "transfer_cursor": int,
     "totals": {"tasks", "tasks_completed", "tasks_failed", "workers", "threads", "nbytes",
                "rss", "memory_limit", "clients", "processing"},
     "now": float,
     "schedules": {name: summary},
     "resources": {"waiting", "impossible": {request: count}, "note"}}   # see resources.py

Each prefix row also has ``"nbytes"`` (results of that function in memory) and ``"duration"``
(its recent run time in seconds, or None). Two parts are only there when asked for with
``extras``, as they cost more (only a page that shows them asks):

- ``"control"``: ``{"queues": {name: {"queued", "processing", "delayed", "workers"}},
  "limits": {key: {"rate_per_second", "concurrency", "running", "waiting", "next_start"}},
  "delayed": [[key, until, queue], ...] (the soonest DELAYED_SHOWN), "delayed_total": int}``;
- ``"graph"``: the newest ``graph_limit`` tasks, oldest first: ``{"keys": [...],
  "states": [...], "depth": [...], "edges": [[from_index, to_index], ...], "total": int}``
  (``depth``: longest chain of dependencies among the tasks shown).
"""

from __future__ import annotations

import heapq
from collections.abc import Collection
from itertools import islice
from typing import Any

from .periodic import summary as periodic_summary
from .resources import summary as resources_summary
from .retirement import describe as describe_retirement

TASK_STATES = ("waiting", "queued", "processing", "memory", "released", "erred")
MAX_PREFIXES = 50
DELAYED_SHOWN = 100
GRAPH_LIMIT = 5_000


def _tail(log: Any, total: int, since: int, limit: int | None) -> tuple[list[Any], int]:
    """Entries of ``log`` appended after cursor ``since``, oldest first, and the new cursor."""
    if log is None:
        return [], int(total or 0)
    length = len(log)
    n = total - since if since <= total else length   # a cursor from the future: start over
    n = min(max(n, 0), length)
    if limit is not None:
        n = min(n, max(0, limit))
    if n == 0:
        return [], total
    newest_first = list(islice(reversed(log), n))
    newest_first.reverse()
    return [list(e) for e in newest_first], total


def _worker(ws: Any) -> dict[str, Any]:
    metrics = ws.metrics or {}
    identity = ws.identity or {}
    return {
        "address": ws.address,
        "name": str(ws.name),
        "nthreads": ws.nthreads,
        "processing": len(ws.processing),
        "executing": int(metrics.get("executing", 0) or 0),
        "ready": int(metrics.get("ready", 0) or 0),
        "nbytes": int(ws.nbytes),
        "keys": len(ws.has_what),
        "rss": int(metrics.get("rss", 0) or 0),
        "spilled": int(metrics.get("spilled", 0) or 0),
        "cpu": float(metrics.get("cpu", 0.0) or 0.0),
        "memory_limit": int(identity.get("memory_limit") or 0),
        "pid": identity.get("pid"),
        "last_seen": float(ws.last_seen or 0.0),
        **worker_status(ws),
    }


def _prefix_rows(state: Any, by_prefix: dict[str, Any]) -> dict[str, Any]:
    done: dict[str, int] = {}
    failed: dict[str, int] = {}
    for name, n in state.counts.items():
        if name.endswith(" erred"):
            failed[name[:-6]] = n
        else:
            done[name] = n
    rows = {}
    durations = getattr(state, "prefix_durations", {})
    for prefix in set(by_prefix) | set(done) | set(failed):
        row: dict[str, Any] = dict.fromkeys(TASK_STATES, 0)
        row["nbytes"] = 0
        row.update(by_prefix.get(prefix, ()))
        row["done"] = done.get(prefix, 0)
        row["failed"] = failed.get(prefix, 0)
        row["duration"] = durations.get(prefix)
        rows[prefix] = row
    if len(rows) > MAX_PREFIXES:   # keep the active ones, then the biggest
        def rank(item: Any) -> Any:
            r = item[1]
            return (r["processing"] + r["waiting"] + r["queued"] > 0,
                    r["done"] + r["failed"] + r["memory"])
        rows = dict(sorted(rows.items(), key=rank, reverse=True)[:MAX_PREFIXES])
    return rows


def snapshot(state: Any, since: int = 0, transfers_since: int = 0, *,
             log_limit: int | None = None, prefixes: bool = True,
             extras: Collection[str] = (), graph_limit: int = GRAPH_LIMIT) -> dict[str, Any]:
    """The state as plain data; logs only after the cursors ``since`` / ``transfers_since``.

    ``log_limit`` caps how many log entries are returned (0: none); ``prefixes=False`` skips the
    per-prefix table (the task counts by state are still computed, in the same pass).
    ``extras``: any of ``"control"``, ``"graph"`` (see the module's docstring).
    """
    unknown = set(extras) - {"control", "graph"}
    if unknown:
        raise ValueError(f"snapshot extras: unknown {sorted(unknown)}; "
                         "choose from 'control', 'graph'")
    control = "control" in extras
    workers = [_worker(ws) for ws in state.workers.values()]
    by_state: dict[str, int] = {}
    by_prefix: dict[str, dict[str, int]] = {}
    by_queue: dict[str, dict[str, int]] = {}
    for ts in state.tasks.values():
        st = ts.state
        by_state[st] = by_state.get(st, 0) + 1
        if prefixes:
            row = by_prefix.get(ts.prefix)
            if row is None:
                row = by_prefix[ts.prefix] = {"nbytes": 0}
            row[st] = row.get(st, 0) + 1
            if st == "memory":
                row["nbytes"] += ts.nbytes
        if control and st in ("queued", "processing", "delayed"):
            q = by_queue.get(ts.queue)
            if q is None:
                q = by_queue[ts.queue] = {"queued": 0, "processing": 0, "delayed": 0}
            q[st] += 1
    task_log, cursor = _tail(state.task_log, state.task_log_total, since, log_limit)
    transfer_log, transfer_cursor = _tail(getattr(state, "transfer_log", None),
                                          getattr(state, "transfer_log_total", 0),
                                          transfers_since, log_limit)
    completed = failed = 0
    for name, n in state.counts.items():
        if name.endswith(" erred"):
            failed += n
        else:
            completed += n
    totals = {
        "tasks": len(state.tasks),
        "tasks_completed": completed,
        "tasks_failed": failed,
        "workers": len(workers),
        "threads": sum(w["nthreads"] for w in workers),
        "processing": sum(w["processing"] for w in workers),
        "nbytes": sum(w["nbytes"] for w in workers),
        "rss": sum(w["rss"] for w in workers),
        "memory_limit": sum(w["memory_limit"] for w in workers),
        "clients": len(state.clients),
    }
    out = {
        "workers": workers,
        "tasks": by_state,
        "prefixes": _prefix_rows(state, by_prefix) if prefixes else {},
        "task_log": task_log,
        "cursor": cursor,
        "transfer_log": transfer_log,
        "transfer_cursor": transfer_cursor,
        "totals": totals,
        "now": float(state.now or 0.0),
        "schedules": {name: periodic_summary(state, p)
                      for name, p in state.durable.periodics.items()},
        "resources": resources_summary(state),
    }
    if control:
        out["control"] = _control(state, by_queue)
    if "graph" in extras:
        out["graph"] = graph(state, graph_limit)
    return out


def _control(state: Any, by_queue: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Queues with their lengths, limits with their budgets, tasks delayed until when."""
    queues: dict[str, dict[str, Any]] = {}
    subscribed: dict[str, list[str]] = {}
    for ws in state.workers.values():
        for name in getattr(ws, "queues", ()) or ():
            subscribed.setdefault(name, []).append(ws.address)
    for name in sorted(set(getattr(state, "queues", {})) | set(subscribed) | set(by_queue)):
        row: dict[str, Any] = {"queued": 0, "processing": 0, "delayed": 0}
        row.update(by_queue.get(name, ()))
        row["workers"] = sorted(subscribed.get(name, ()))
        queues[name] = row
    limits = {}
    for key, limit in getattr(state, "limits", {}).items():
        info = dict(limit.describe())
        info["next_start"] = float(getattr(limit, "next_start", 0.0) or 0.0)
        limits[key] = info
    # timers hold ("start", task) for delays; the soonest few, without sorting them all
    timers = getattr(getattr(state, "timers", None), "_heap", ()) or ()
    pending = [(when, ts) for when, _, kind, ts in timers
               if kind == "start" and ts.state == "delayed"]
    delayed = [[ts.key, float(when), ts.queue]
               for when, ts in heapq.nsmallest(DELAYED_SHOWN, pending, key=lambda e: e[0])]
    return {"queues": queues, "limits": limits, "delayed": delayed,
            "delayed_total": len(pending)}


def graph(state: Any, limit: int = GRAPH_LIMIT) -> dict[str, Any]:
    """The newest ``limit`` tasks and the dependencies among them, oldest first, with each
    one's depth (longest chain of dependencies among those shown)."""
    newest = list(islice(reversed(state.tasks.values()), max(0, limit)))
    newest.reverse()
    index = {id(ts): i for i, ts in enumerate(newest)}
    depth = [0] * len(newest)
    edges = []
    for i, ts in enumerate(newest):
        d = 0
        for dep in ts.deps:
            j = index.get(id(dep))
            if j is not None:
                edges.append([j, i])
                if j < i and depth[j] + 1 > d:   # deps come first in submission order
                    d = depth[j] + 1
        depth[i] = d
    return {"keys": [ts.key for ts in newest], "states": [ts.state for ts in newest],
            "depth": depth, "edges": edges, "total": len(state.tasks)}


def worker_status(ws: Any) -> dict[str, Any]:
    """``status`` (running, paused or retiring) and ``memory_note``: why it paused (and stays
    so, if it says), or why it retires; a worker with resources: ``resources`` (what it has)
    and ``free_resources`` (what no task of it holds)."""
    status = {"status": "retiring" if ws.retiring else "paused" if ws.paused else "running",
              "memory_note": describe_retirement(ws) or ws.memory_note}
    if ws.resources is not None:
        status["resources"], status["free_resources"] = dict(ws.resources), dict(ws.free)
    return status
