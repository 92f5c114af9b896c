"""HTML for the notebook: cluster snapshots, lists of futures, Client and LocalCluster.

``register_formatters(ip)`` teaches IPython to show lists of futures as a table and gives Client
and LocalCluster a live summary (workers, threads, memory, tasks); the engine's own
``_repr_html_`` stays the fallback when the extension is not loaded.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Any

from .models import (ClusterSnapshot, client_closed, flatten_futures, format_bytes, jobs_text,
                     key_name, schedule_line)

if TYPE_CHECKING:
    from ..deploy.local import LocalCluster

STATUS_COLOURS = {"finished": "#2a8a4a", "error": "#c62828", "lost": "#c62828",
                  "cancelled": "#777", "pending": "#e08e00"}
_TABLE = "border-collapse:collapse;font-size:12px;text-align:left"
_CELL = "padding:0 8px;line-height:1.5;white-space:nowrap;border-bottom:1px solid #ddd;text-align:left"


def _link(url: str | None) -> str:
    if not url:
        return "<span style='color:#777'>not available</span>"
    u = escape(url, quote=True)
    return f"<a href='{u}' target='_blank'>{escape(url)}</a>"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th style='{_CELL}'>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td style='{_CELL}'>{c}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table style='{_TABLE}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def tasks_html(tasks: dict[str, int]) -> str:
    if not tasks:
        return "<span style='color:#777'>none</span>"
    parts = []
    for state, n in sorted(tasks.items()):
        colour = STATUS_COLOURS.get(state, "#333")
        if state in ("memory", "done"):
            colour = STATUS_COLOURS["finished"]
        elif state in ("processing", "waiting", "queued", "ready", "executing"):
            colour = STATUS_COLOURS["pending"]
        elif state in ("erred",):
            colour = STATUS_COLOURS["error"]
        parts.append(f"<span style='color:{colour}'>{escape(state)}: {n}</span>")
    return ", ".join(parts)


def snapshot_html(snap: ClusterSnapshot, title: str = "nbcluster") -> str:
    """The cluster table shown by the cluster widget, ``%cluster status`` and reprs."""
    if snap.closed:
        return f"<div class='nbcluster-status'><b>{escape(title)}</b>: no cluster (stopped)</div>"
    kind = f" ({escape(snap.kind)})" if snap.kind else ""
    error = (f"<div style='color:{STATUS_COLOURS['error']}'>{escape(snap.error)}</div>"
             if snap.error else "")
    rows = []
    for w in snap.workers:
        limit = f" / {format_bytes(w.memory_limit)}" if w.memory_limit else ""
        name = escape(w.name) if w.status == "running" else \
            f"{escape(w.name)} <span style='color:{STATUS_COLOURS['error']}'>({escape(w.status)})</span>"
        rows.append([name, f"<code>{escape(w.address)}</code>", str(w.nthreads),
                     f"{format_bytes(w.rss)}{limit}",
                     format_bytes(w.memory) + (f" ({format_bytes(w.spilled)} on disk)"
                                               if w.spilled else ""), f"{w.cpu:.0f}%",
                     str(w.processing), str(w.keys)])
    workers = (_table(["worker", "address", "threads", "memory", "results", "cpu",
                       "processing", "keys"], rows)
               if rows else "<div style='color:#777'>no workers</div>")
    if snap.schedules:
        workers += _table(["schedule", "rule, next run, last run"],
                          [[f"<code>{escape(n)}</code>", escape(schedule_line(s))]
                           for n, s in sorted(snap.schedules.items())])
    return (
        f"<div class='nbcluster-status' style='line-height:1.5'><b>{escape(title)}</b>{kind}"
        f" &middot; scheduler <code>{escape(snap.scheduler)}</code>"
        f" &middot; dashboard: {_link(snap.dashboard_link)}<br>"
        + (f"<span class='nbcluster-jobs'>jobs: {jobs_text(snap.jobs)}</span><br>"
           if snap.jobs else "") +
        f"<b>{len(snap.workers)}</b> workers, <b>{snap.nthreads}</b> threads, "
        f"<b>{format_bytes(snap.rss)}</b> memory (results {format_bytes(snap.memory)})"
        f" &middot; tasks: {tasks_html(snap.tasks)}{error}"
        + (f"<div style='color:{STATUS_COLOURS['error']}'>{escape(snap.resources_note)}</div>"
           if snap.resources_note else "") + f"{workers}</div>")


def futures_html(futures: list) -> str:
    """A list of futures: counts by status and function, then the first rows."""
    futs = flatten_futures(futures)
    by_status: dict[str, int] = {}
    by_name: dict[str, dict[str, int]] = {}
    for f in futs:
        st = f.status
        by_status[st] = by_status.get(st, 0) + 1
        counts = by_name.setdefault(key_name(f.key), {})
        counts[st] = counts.get(st, 0) + 1
    summary = ", ".join(f"<span style='color:{STATUS_COLOURS.get(s, '#333')}'>{escape(s)}: {n}"
                        "</span>" for s, n in sorted(by_status.items()))
    rows = [[f"<code>{escape(name)}</code>",
             ", ".join(f"<span style='color:{STATUS_COLOURS.get(s, '#333')}'>{escape(s)}: {n}"
                       "</span>" for s, n in sorted(c.items()))]
            for name, c in by_name.items()]
    shown = futs[:10]
    more = f"<div style='color:#777'>... and {len(futs) - len(shown)} more</div>" \
        if len(futs) > len(shown) else ""
    items = "".join(f"<li>{future_html(f)}</li>" for f in shown)
    return (f"<div class='nbcluster-futures'><b>{len(futs)} futures</b>: {summary}"
            f"{_table(['function', 'status'], rows)}<ul style='margin:2px 0'>{items}</ul>"
            f"{more}</div>")


def future_html(fut: Any) -> str:
    st = fut.status
    colour = STATUS_COLOURS.get(st, "#333")
    return (f"Future <code>{escape(fut.key)}</code> <span style='color:{colour}'>{escape(st)}"
            "</span>")


def client_html(client: Any) -> str | None:
    """Client summary with a live snapshot; ``None`` falls back to the engine's repr."""
    from ..client import Client

    if not isinstance(client, Client):
        return getattr(client, "_repr_html_", lambda: None)()
    status = "closed" if client_closed(client) else str(getattr(client, "status", "running"))
    if status in ("closed", "disconnected"):
        # said in so many words (the engine's HTML would still show a dead dashboard link)
        why = "closed" if status == "closed" else "disconnected (the scheduler went away)"
        return (f"<div class='nbcluster-client'><b>nbcluster Client</b>: {why} "
                f"(<code>{escape(str(getattr(client, 'scheduler_address', '?')))}</code>)</div>")
    if getattr(client, "asynchronous", False):
        return client._repr_html_()
    try:
        info = client.scheduler_info()
    except Exception:  # noqa: BLE001 - fall back on the engine's repr
        return client._repr_html_()
    from ..deploy import Cluster

    cluster = client.cluster
    kind = "remote" if cluster is None else cluster.kind if isinstance(cluster, Cluster) else ""
    snap = ClusterSnapshot.from_info(info, dashboard_link=client.dashboard_link, kind=kind)
    snap.jobs = dict(getattr(cluster, "job_counts", None) or {})   # a batch system's jobs
    return snapshot_html(snap, title="nbcluster Client")


def cluster_html(cluster: LocalCluster) -> str | None:
    """LocalCluster summary (asks the scheduler through a client attached to it, if any)."""
    if cluster.closed:
        return (f"<div><b>LocalCluster</b>: closed "
                f"(<code>{escape(str(cluster.scheduler_address))}</code>)</div>")
    from ..client import default_client

    try:
        client = default_client()
    except Exception:  # noqa: BLE001
        client = None
    if client is not None and client.cluster is cluster and not client.asynchronous:
        try:
            snap = ClusterSnapshot.from_info(
                client.scheduler_info(), dashboard_link=cluster.dashboard_link,
                kind="processes" if cluster.processes else "in-process")
            return snapshot_html(snap, title="LocalCluster")
        except Exception:  # noqa: BLE001
            pass
    return cluster._repr_html_()


def _list_html(obj: Any) -> str | None:
    from ..client import Future

    if not obj or len(obj) > 100_000 or not all(isinstance(x, Future) for x in obj):
        return None
    return futures_html(list(obj))


class StatusReport:
    """What ``%cluster status`` returns: text in a terminal, a table in a notebook."""

    def __init__(self, snapshot: ClusterSnapshot) -> None:
        self.snapshot = snapshot

    def __repr__(self) -> str:
        return self.snapshot.text()

    def _repr_html_(self) -> str:
        return snapshot_html(self.snapshot)


def register_formatters(ip: Any) -> None:
    fmt = ip.display_formatter.formatters["text/html"]
    fmt.for_type(list, _list_html)
    fmt.for_type(tuple, _list_html)
    fmt.for_type_by_name("nbcluster.client.client", "Client", client_html)
    fmt.for_type_by_name("nbcluster.deploy.local", "LocalCluster", cluster_html)


def unregister_formatters(ip: Any) -> None:
    fmt = ip.display_formatter.formatters["text/html"]
    for typ in (list, tuple):
        if fmt.type_printers.get(typ) is _list_html:
            fmt.pop(typ)
    for name, printer in (("nbcluster.client.client.Client", client_html),
                          ("nbcluster.deploy.local.LocalCluster", cluster_html)):
        mod, cls = name.rsplit(".", 1)
        try:
            fmt.pop(name)
        except (KeyError, ValueError):
            try:
                from importlib import import_module

                typ = getattr(import_module(mod), cls)
                if fmt.type_printers.get(typ) is printer:
                    fmt.pop(typ)
            except Exception:  # noqa: BLE001
                pass
