"""The other pages' components: the header with totals and the navigation bar, task groups,
the per-worker system plots, task control. Each is a Bokeh model (``.root``) plus ``update()``,
as in :mod:`.components`, and reads the same :class:`~.feed.Feed`."""

from __future__ import annotations

import html
import time
from typing import Any

from bokeh.layouts import column, row
from bokeh.models import (ColumnDataSource, DataRange1d, FactorRange, HoverTool,
                          NumeralTickFormatter)
from bokeh.models.annotations import Legend   # bokeh.models' stubs lack these
from bokeh.models.widgets import Div, Select
from bokeh.plotting import figure

from .components import Component, _Replacing, _Table, _y_range
from .feed import Feed
from .palette import (ERROR_COLOR, RUNNING_COLOR, TRANSFER_COLOR, WARN_COLOR, color_of,
                      format_bytes, format_duration)

NAV_STYLE = ("display:flex;flex-wrap:wrap;align-items:center;gap:2px;font-family:sans-serif;"
             "font-size:14px;background:#263238;padding:4px 10px;border-radius:4px")
LINK_STYLE = "color:#eceff1;text-decoration:none;padding:4px 10px;border-radius:3px"
CURRENT_STYLE = "color:#263238;background:#eceff1;font-weight:bold;padding:4px 10px;" \
                "border-radius:3px"


def nav_html(pages: list[tuple[str, str]], current: str,
             extra: list[tuple[str, str]] | None = None) -> str:
    """A navigation bar: ``pages`` ((path, title) pairs, relative), the current one marked."""
    items = ['<span style="color:#fff;font-weight:bold;margin-right:12px">nbcluster</span>']
    for path, title in pages:
        if path == current:
            items.append(f'<span aria-current="page" class="nbc-current" '
                         f'style="{CURRENT_STYLE}">{html.escape(title)}</span>')
        else:
            items.append(f'<a href="{html.escape(path)}" style="{LINK_STYLE}">'
                         f'{html.escape(title)}</a>')
    if extra:
        items.append('<span style="flex:1"></span>')
        items += [f'<a href="{html.escape(p)}" style="{LINK_STYLE};font-size:12px">'
                  f'{html.escape(t)}</a>' for p, t in extra]
    return f'<nav class="nbc-nav" style="{NAV_STYLE}">{"".join(items)}</nav>'


def _card(label: str, value: str, color: str = "#263238") -> str:
    return (f'<div style="padding:2px 14px;border-left:3px solid {color}">'
            f'<div style="font-size:11px;color:#607d8b">{html.escape(label)}</div>'
            f'<div class="nbc-total" data-name="{html.escape(label)}" '
            f'style="font-size:18px;font-weight:bold;color:#263238">{html.escape(value)}</div>'
            f'</div>')


def totals(data: dict, rate: float) -> dict[str, str]:
    """The header's figures, as text."""
    t = data.get("totals") or {}
    tasks = data.get("tasks") or {}
    used = t.get("rss", 0)
    limit = t.get("memory_limit", 0)
    waiting = sum(tasks.get(s, 0) for s in ("waiting", "queued", "delayed", "new"))
    return {
        "workers": str(t.get("workers", 0)),
        "threads": str(t.get("threads", 0)),
        "memory": format_bytes(used) + (f" / {format_bytes(limit)}" if limit else ""),
        "waiting": str(waiting),
        "running": str(tasks.get("processing", 0)),
        "done": str(t.get("tasks_completed", 0)),
        "erred": str(t.get("tasks_failed", 0)),
        "tasks/s": f"{rate:.1f}" if rate < 100 else f"{rate:.0f}",
    }


class Header(Component):
    """Totals at a glance: workers, threads, memory used of the limit, tasks waiting /
    running / done / erred, tasks per second."""

    def __init__(self, feed: Feed) -> None:
        super().__init__(feed)
        self.div = self.root = Div(text="", sizing_mode="stretch_width", name="header")
        self.figures: dict[str, str] = {}

    def update(self) -> None:
        self.feed.refresh()
        figs = totals(self.feed.data, self.feed.rate.rate())
        if figs == self.figures:
            return
        self.figures = figs
        t = self.feed.data.get("totals") or {}
        frac = t.get("rss", 0) / t["memory_limit"] if t.get("memory_limit") else 0.0
        colors = {"memory": ERROR_COLOR if frac > 0.8 else WARN_COLOR if frac > 0.6
                  else RUNNING_COLOR,
                  "erred": ERROR_COLOR if figs["erred"] != "0" else "#b0bec5",
                  "running": RUNNING_COLOR, "done": "#2ca02c"}
        cards = "".join(_card(k, v, colors.get(k, "#b0bec5")) for k, v in figs.items())
        note = ""
        if self.feed.error:
            note = (f'<div style="color:{ERROR_COLOR};padding:2px 14px">'
                    f'{html.escape(self.feed.error)}</div>')
        self.div.text = (f'<div class="nbc-header" style="display:flex;flex-wrap:wrap;gap:6px;'
                         f'font-family:sans-serif;padding:6px 0">{cards}</div>{note}')


class TaskGroups(_Replacing):
    """Per function: tasks by state, total run time, bytes of results in memory; a bar of the
    run time in the function's colour, and a table.

    Run time is summed from the task log as the dashboard reads it; when it saw only some of
    a function's tasks (nobody watched, or more ended between two refreshes than one carries),
    the total is scaled up from those it saw and shown with "~"."""

    COLUMNS = (("name", "function"), ("tasks", "tasks"), ("done", "done"),
               ("running", "running"), ("waiting", "waiting"), ("erred", "erred"),
               ("time", "total time"), ("mean", "time per task"), ("bytes", "in memory"))

    def __init__(self, feed: Feed) -> None:
        super().__init__(feed)
        self.source = ColumnDataSource({c: [] for c in (
            "name", "seconds", "color", "time_text", "nbytes", "bytes_text")},
            name="groups_plot")
        fig = figure(title="Task groups: run time by function", height=260,
                     sizing_mode="stretch_width", y_range=FactorRange(),
                     x_range=DataRange1d(start=0), tools="reset,save")
        bars = fig.hbar(source=self.source, y="name", left=0, right="seconds", height=0.8,
                        fill_color="color", line_color=None)
        fig.add_tools(HoverTool(renderers=[bars], tooltips=[
            ("function", "@name"), ("total time", "@time_text"), ("in memory", "@bytes_text")]))
        fig.xaxis.axis_label = "seconds"
        fig.ygrid.visible = False
        self.figure = fig
        self._y_range = _y_range(fig, FactorRange)
        self.table = _GroupTable(feed)
        self.root = column(fig, self.table.root, sizing_mode="stretch_width")

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for name, p in (self.feed.data.get("prefixes") or {}).items():
            ended = p.get("done", 0) + max(p.get("failed", 0), p.get("erred", 0))
            spent, seen = self.feed.prefix_time.get(name, (0.0, 0))
            estimated = bool(seen) and seen < ended
            seconds = spent / seen * ended if estimated else spent
            if not seen and ended and p.get("duration"):   # nothing seen: the recent mean
                seconds, estimated = p["duration"] * ended, True
            out.append({
                "name": name, "done": p.get("done", 0), "running": p.get("processing", 0),
                "waiting": sum(p.get(s, 0) for s in ("waiting", "queued", "delayed")),
                "erred": max(p.get("failed", 0), p.get("erred", 0)),
                "seconds": seconds, "estimated": estimated, "nbytes": p.get("nbytes", 0),
                "mean": seconds / ended if ended else p.get("duration")})
        for r in out:
            r["tasks"] = r["done"] + r["running"] + r["waiting"] + r["erred"]
        out.sort(key=lambda r: (-r["seconds"], r["name"]))
        return out

    def update(self) -> None:
        self.feed.refresh()
        rows = self.rows()
        data: dict[str, list] = {c: [] for c in self.source.data}
        for r in reversed(rows):                 # the biggest on top
            data["name"].append(r["name"])
            data["seconds"].append(r["seconds"])
            data["color"].append(color_of(r["name"]))
            data["time_text"].append(("~" if r["estimated"] else "") +
                                     format_duration(r["seconds"]))
            data["nbytes"].append(r["nbytes"])
            data["bytes_text"].append(format_bytes(r["nbytes"]))
        if list(self._y_range.factors) != data["name"]:
            self._y_range.factors = list(data["name"])
        self._set(data)
        self.table.show(rows)


class _GroupTable(_Table):
    COLUMNS = TaskGroups.COLUMNS

    def __init__(self, feed: Feed) -> None:
        super().__init__(feed)
        self._build("groups", "Task groups", 220, {})

    def show(self, rows: list[dict[str, Any]]) -> None:
        data: dict[str, list] = {c: [] for c, _ in self.COLUMNS}
        for r in rows:
            for c in ("name", "tasks", "done", "running", "waiting", "erred"):
                data[c].append(r[c])
            data["time"].append(("~" if r["estimated"] else "") + format_duration(r["seconds"]))
            data["mean"].append(format_duration(r["mean"]) if r["mean"] else "")
            data["bytes"].append(format_bytes(r["nbytes"]))
        self._set(data)

    def update(self) -> None:   # shown by TaskGroups
        pass


class SystemMonitor(Component):
    """One worker's CPU, memory and network over time (the last few minutes the dashboard
    watched); a menu picks the worker. Network: bytes it received from and sent to other
    workers, from the scheduler's transfer log."""

    def __init__(self, feed: Feed) -> None:
        super().__init__(feed)
        self.selected: str | None = None
        self.select = Select(title="Worker", options=[], value="", width=420, name="worker")
        self.select.on_change("value", self._picked)
        self.source = ColumnDataSource({c: [] for c in (
            "time", "cpu", "rss", "received", "sent")}, name="system")
        common: dict[str, Any] = dict(x_axis_type="datetime", height=200,
                                      sizing_mode="stretch_width", tools="pan,xwheel_zoom,reset")
        cpu = figure(title="CPU", **common)
        cpu.line(source=self.source, x="time", y="cpu", color=RUNNING_COLOR, line_width=2)
        cpu.yaxis.axis_label = "%"
        common["x_range"] = cpu.x_range
        mem = figure(title="Memory (process)", **common)
        mem.line(source=self.source, x="time", y="rss", color="#9467bd", line_width=2)
        mem.yaxis.formatter = NumeralTickFormatter(format="0.0 b")
        net = figure(title="Network between workers", **common)
        received: Any = net.line(source=self.source, x="time", y="received",
                                 color="#2ca02c", line_width=2)
        sent: Any = net.line(source=self.source, x="time", y="sent", color=TRANSFER_COLOR,
                             line_width=2, line_dash="dashed")
        # (Bokeh 3.10's type stubs leave ``items`` out of Legend's signature; it takes it)
        net.add_layout(Legend(items=[("received", [received]), ("sent", [sent])],  # type: ignore[call-arg, unused-ignore]
                              location="top_left"))
        net.yaxis.formatter = NumeralTickFormatter(format="0.0 b")
        net.yaxis.axis_label = "per second"
        self.figures = (cpu, mem, net)
        self._seen_version = -1
        self.root = column(self.select, cpu, mem, net, sizing_mode="stretch_width")

    def _picked(self, attr: str, old: Any, new: Any) -> None:
        self.selected = new or None
        self._seen_version = -1
        self.update()

    def update(self) -> None:
        feed = self.feed
        feed.refresh()
        workers = feed.data.get("workers") or []
        options: list[Any] = [(w["address"], f"{w['name']} ({w['address']})"
                               if w["name"] != w["address"] else w["address"])
                              for w in workers]
        if [tuple(o) for o in self.select.options if isinstance(o, (tuple, list))] != options:
            self.select.options = options
        addresses = [a for a, _ in options]
        if self.selected not in addresses:
            self.selected = addresses[0] if addresses else None
            self._seen_version = -1
        if self.select.value != (self.selected or ""):
            self.select.value = self.selected or ""
        if feed.version == self._seen_version:
            return
        self._seen_version = feed.version
        samples = list(feed.system.get(self.selected or "", ()))
        shift = time.localtime().tm_gmtoff       # Bokeh draws datetimes as UTC
        self.source.data = {
            "time": [(s[0] + shift) * 1000 for s in samples],
            "cpu": [s[1] for s in samples], "rss": [s[2] for s in samples],
            "received": [s[3] for s in samples], "sent": [s[4] for s in samples]}


class TaskControl(Component):
    """Queues with their lengths, limits with their budgets, tasks delayed until when."""

    def __init__(self, feed: Feed, clock=time.time) -> None:
        super().__init__(feed)
        self.clock = clock
        feed.want("control")
        self._closed = False
        self.queues = _Simple(feed, "queues", "Queues", (
            ("name", "queue"), ("queued", "queued"), ("delayed", "delayed"),
            ("processing", "running"), ("workers", "workers subscribed")))
        self.limits = _Simple(feed, "limits", "Limits", (
            ("name", "limit"), ("rate", "rate budget"), ("concurrency", "concurrency"),
            ("running", "running"), ("waiting", "held back"), ("next", "next start")))
        self.delayed = _Simple(feed, "delayed", "Delayed tasks", (
            ("key", "task"), ("queue", "queue"), ("until", "until"), ("in", "starts in")))
        self.note = Div(text="", name="control_note")
        self.root = column(row(self.queues.root, self.limits.root, sizing_mode="stretch_width"),
                           self.delayed.root, self.note, sizing_mode="stretch_width")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.feed.unwant("control")

    def update(self) -> None:
        self.feed.refresh()
        control = self.feed.data.get("control")
        if control is None:
            return                                # the next snapshot brings it
        now = self.clock()
        q: dict[str, list] = {c: [] for c, _ in self.queues.COLUMNS}
        for name, info in control["queues"].items():
            q["name"].append(name)
            for c in ("queued", "delayed", "processing"):
                q[c].append(info.get(c, 0))
            ws = info.get("workers") or []
            q["workers"].append(", ".join(ws[:5]) + (f" and {len(ws) - 5} more"
                                                     if len(ws) > 5 else "") or "none")
        self.queues._set(q)
        lim: dict[str, list] = {c: [] for c, _ in self.limits.COLUMNS}
        state_now = float(self.feed.data.get("now") or now)
        for key, info in control["limits"].items():
            rate = info.get("rate_per_second")
            lim["name"].append(key)
            lim["rate"].append(f"{rate:g} / s" if rate else "none")
            lim["concurrency"].append(info.get("concurrency") or "none")
            lim["running"].append(info.get("running", 0))
            lim["waiting"].append(info.get("waiting", 0))
            wait = info.get("next_start", 0.0) - state_now
            lim["next"].append(f"in {format_duration(wait)}" if rate and wait > 0 else "now")
        self.limits._set(lim)
        d: dict[str, list] = {c: [] for c, _ in self.delayed.COLUMNS}
        for key, until, queue in control["delayed"]:
            d["key"].append(key)
            d["queue"].append(queue)
            d["until"].append(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(until)))
            left = until - now
            d["in"].append(format_duration(left) if left > 0 else "due")
        self.delayed._set(d)
        total = control.get("delayed_total", 0)
        text = (f"{total} delayed tasks; the soonest {len(d['key'])} are shown."
                if total > len(d["key"]) else "")
        if self.note.text != text:
            self.note.text = text


class _Simple(_Table):
    def __init__(self, feed: Feed, name: str, title: str,
                 columns: tuple[tuple[str, str], ...]) -> None:
        super().__init__(feed)
        self.COLUMNS = columns
        self._build(name, title, 160, {})

    def update(self) -> None:   # filled by its owner
        pass
