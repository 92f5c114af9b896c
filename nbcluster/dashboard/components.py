"""The plots. Each is a Bokeh model (``.root``) plus ``update()``, which reads a :class:`Feed`
and writes ColumnDataSources; tests build one on a feed, run tasks, call ``update()`` and read
``.source.data``.

Call ``update()`` from the thread that owns the Bokeh document (the server's loop, or the
widget's poller), never from two threads at once.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, TypeVar

from bokeh.layouts import column
from bokeh.models import (ColumnDataSource, DataRange1d, DatetimeTickFormatter, FactorRange,
                          FixedTicker, HoverTool, NumeralTickFormatter, Range, Range1d)
from bokeh.models.renderers import DataRenderer
from bokeh.models.widgets import DataTable, Div, TableColumn   # bokeh.models' stubs lack these
from bokeh.plotting import figure

from .feed import HISTORY, Feed
from .palette import (DONE_COLOR, ERROR_COLOR, PALETTE, PROCESS_COLOR,  # noqa: F401 - API
                      RUNNING_COLOR, SPILLED_COLOR, TRANSFER_COLOR, WAITING_COLOR, WARN_COLOR,
                      color_of, format_bytes, format_clock, format_duration, prefix_of)

TOOLS = "pan,xwheel_zoom,box_zoom,reset,save"
R = TypeVar("R", bound=Range)


def _axis_ms(t: float) -> float:
    """Epoch seconds to the plot's x value: Bokeh draws datetimes as UTC, so shift them by
    the local UTC offset (at that moment, for daylight saving) to read as local time."""
    return (t + time.localtime(t).tm_gmtoff) * 1000


def _y_range(fig: figure, kind: type[R]) -> R:
    """The plot's y range, which ``update()`` writes: ``figure_kwargs`` may not change its kind."""
    y_range = fig.y_range
    if not isinstance(y_range, kind):
        raise TypeError(f"y_range must be a {kind.__name__}, not {type(y_range).__name__}")
    return y_range


def _label(w: dict) -> str:
    name, address = w.get("name") or "", w["address"]
    return address if not name or name == address else f"{name} ({address})"


class Component:
    """A plot fed by a :class:`Feed`; ``root`` is what goes in a layout or a document."""

    root: Any

    def __init__(self, feed: Feed) -> None:
        self.feed = feed

    def update(self) -> None:   # pragma: no cover - every subclass has its own
        raise NotImplementedError


class TaskStream(Component):
    """One row per worker thread, one rectangle per task from its start to its end.

    Coloured by function, red for errors; transfers are hatched grey marks on the receiving
    worker's first row. The sources keep the last ``window`` tasks (and transfers); one update
    adds at most ``max_new`` (the newest: more would be narrower than a pixel anyway), which
    bounds what goes to the browser whatever the task rate. With ``binary=True`` the numeric
    columns are numpy arrays, which Bokeh's server sends as binary buffers (about 3x cheaper
    to encode than JSON numbers); the notebook widget needs plain lists.
    """

    NUMERIC = ("left", "right", "bottom", "top", "duration")   # duration in ms

    def __init__(self, feed: Feed, window: int = HISTORY, backfill: int | None = None,
                 max_new: int | None = None, binary: bool = False,
                 **figure_kwargs: Any) -> None:
        super().__init__(feed)
        self.window = window
        self.binary = binary
        self.max_new = min(window, max_new or window)
        # a new plot starts with the last ``backfill`` tasks (all the window holds, by default)
        self._backfill = window if backfill is None else min(backfill, window)
        self._cursor = self._transfer_cursor = -1
        self._rows: dict[str, int] = {}          # worker address -> first row
        self._lanes: dict[str, list[float]] = {}  # worker address -> busy-until, per thread
        self._nrows = 0
        # worker address -> recent transfers it received: (start, stop, nbytes)
        self._inbound: dict[str, deque[tuple[float, float, int]]] = {}
        columns = ("left", "right", "bottom", "top", "color", "key", "worker", "duration",
                   "start", "transfer")
        self.source = ColumnDataSource(
            {c: self._column([]) if c in self.NUMERIC else [] for c in columns},
            name="task_stream")
        self.transfer_source = ColumnDataSource({c: [] for c in (
            "left", "right", "bottom", "top", "key", "source", "target", "nbytes",
            "duration")}, name="task_stream_transfers")
        kwargs: dict[str, Any] = dict(
            title="Task stream", x_axis_type="datetime", height=300,
            sizing_mode="stretch_width", tools=TOOLS, min_border_right=20,
            x_range=DataRange1d(follow="end", follow_interval=20_000, range_padding=0),
            y_range=Range1d(start=-0.5, end=0.5), output_backend="canvas")
        kwargs.update(figure_kwargs)
        fig = figure(**kwargs)
        tasks = fig.quad(source=self.source, left="left", right="right", bottom="bottom",
                         top="top", fill_color="color", line_color="color", line_alpha=0.6,
                         fill_alpha=0.9, name="tasks")
        transfers = fig.quad(source=self.transfer_source, left="left", right="right",
                             bottom="bottom", top="top", fill_color=TRANSFER_COLOR,
                             fill_alpha=0.35, line_color=TRANSFER_COLOR, hatch_pattern="/",
                             hatch_color=TRANSFER_COLOR, hatch_alpha=0.6, name="transfers")
        fig.add_tools(HoverTool(renderers=[tasks], tooltips=[
            ("key", "@key"), ("worker", "@worker"), ("start", "@start"),
            ("duration", "@duration{0,0.000} ms"), ("transfer", "@transfer")]))
        fig.add_tools(HoverTool(renderers=[transfers], tooltips=[
            ("transfer", "@key"), ("from", "@source"), ("to", "@target"),
            ("size", "@nbytes"), ("duration", "@duration")]))
        fig.xaxis.formatter = DatetimeTickFormatter(
            milliseconds="%H:%M:%S.%3N", seconds="%H:%M:%S", minsec="%H:%M:%S",
            minutes="%H:%M", hourmin="%H:%M", context=None)
        self._ticker = fig.yaxis.ticker = FixedTicker(ticks=[])
        fig.ygrid.visible = False
        fig.yaxis.axis_label = "worker threads"
        fig.xaxis.axis_label = f"local time ({time.strftime('%Z') or 'scheduler clock'})"
        self.figure = self.root = fig
        self._y_range = _y_range(fig, Range1d)

    def _column(self, values: list) -> Any:
        if not self.binary:
            return values
        import numpy as np  # Bokeh's own dependency

        return np.asarray(values, dtype=float)

    def _place(self, workers: list[dict]) -> bool:
        changed = False
        for w in workers:
            if w["address"] not in self._rows:
                self._add_rows(w["address"], int(w.get("nthreads") or 1), _label(w))
                changed = True
        return changed

    def _add_rows(self, address: str, nthreads: int, label: str) -> None:
        self._rows[address] = self._nrows
        self._lanes[address] = [float("-inf")] * nthreads
        self._nrows += nthreads
        fig = self.figure
        ticker = self._ticker
        mid = self._rows[address] + (nthreads - 1) / 2
        ticker.ticks = [*ticker.ticks, mid]
        fig.yaxis.major_label_overrides = {**fig.yaxis.major_label_overrides,
                                           mid: label if len(label) < 40 else address}
        self._y_range.start, self._y_range.end = self._nrows - 0.5, -0.5   # first worker on top

    def _lane(self, address: str, start: float, stop: float) -> tuple[int, float]:
        """The first thread of ``address`` free at ``start`` (tasks carry no thread id), and
        when that thread's previous task ended."""
        if address not in self._rows:
            self._add_rows(address, 1, address)
        lanes = self._lanes[address]
        best = 0
        for i, busy in enumerate(lanes):
            if busy <= start + 1e-6:
                best = i
                break
            if busy < lanes[best]:
                best = i
        before = lanes[best]
        lanes[best] = max(lanes[best], stop)
        return self._rows[address] + best, before

    def _transfer_text(self, worker: str, since: float, start: float) -> str:
        """Data the worker received after its thread's previous task and before this one
        started: most likely this task's inputs (transfers name no task that waits for them)."""
        nbytes, n, spent = 0, 0, 0.0
        for t0, t1, size in self._inbound.get(worker, ()):
            if t1 <= start + 1e-3 and t1 >= max(since, start - 10.0):
                nbytes += size
                n += 1
                spent += t1 - t0
        if not n:
            return "none"
        return f"{format_bytes(nbytes)} in {format_duration(spent)} ({n} input" \
               f"{'s' if n > 1 else ''})"

    def update(self) -> None:
        feed = self.feed
        feed.refresh()
        if self._cursor < 0:
            self._cursor = max(0, feed.tasks_total - self._backfill)
            self._transfer_cursor = max(0, feed.transfers_total - self._backfill)
        self._place(feed.data.get("workers", []))
        transfers, self._transfer_cursor = feed.transfers_since(self._transfer_cursor)
        if transfers:
            tnew: dict[str, Any] = {c: [] for c in self.transfer_source.data}
            for key, source, target, start, stop, nbytes in transfers[-self.max_new:]:
                if target not in self._rows:
                    self._add_rows(target, 1, target)
                row = self._rows[target]
                inbound = self._inbound.get(target)
                if inbound is None:
                    inbound = self._inbound[target] = deque(maxlen=32)
                inbound.append((start, stop, int(nbytes)))
                tnew["left"].append(_axis_ms(start))
                tnew["right"].append(_axis_ms(stop))
                tnew["bottom"].append(row - 0.4)
                tnew["top"].append(row + 0.4)
                tnew["key"].append(key)
                tnew["source"].append(source)
                tnew["target"].append(target)
                tnew["nbytes"].append(format_bytes(nbytes))
                tnew["duration"].append(format_duration(stop - start))
            self.transfer_source.stream(tnew, rollover=self.window)
        entries, self._cursor = feed.tasks_since(self._cursor)
        if entries:
            entries = sorted(entries[-self.max_new:], key=lambda e: e[2])
            new: dict[str, Any] = {c: [] for c in self.source.data}   # lists, or arrays
            for key, worker, start, stop, ok in entries:
                row, before = self._lane(worker, start, stop)
                new["left"].append(_axis_ms(start))
                new["right"].append(_axis_ms(stop))
                new["bottom"].append(row - 0.4)
                new["top"].append(row + 0.4)
                new["color"].append(color_of(prefix_of(key)) if ok else ERROR_COLOR)
                new["key"].append(key)
                new["worker"].append(worker)
                new["duration"].append((stop - start) * 1000)
                new["start"].append(format_clock(start))
                new["transfer"].append(self._transfer_text(worker, before, start))
            for c in self.NUMERIC:
                new[c] = self._column(new[c])
            self.source.stream(new, rollover=self.window)


class _Replacing(Component):
    """A component whose whole source is rebuilt each update (one row per worker/function)."""

    source: ColumnDataSource

    def _set(self, data: dict) -> bool:
        if data != self.source.data:
            self.source.data = data
            return True
        return False


class MemoryByWorker(_Replacing):
    """Per worker, stacked: results in memory, the rest of the process (psutil RSS beyond
    them), results spilled to disk; a dashed mark at its limit.

    The axis follows the data, not the limit: it ends a little past the largest bar, or at the
    largest limit when that is near, so a small cluster on a big machine still shows its bars;
    any part that is not zero is drawn at least MIN_FRACTION of the axis wide. The label says
    "used / limit"; the bar turns orange past 60 % of the limit and red past 80 %.
    """

    MIN_FRACTION = 0.006

    def __init__(self, feed: Feed, **figure_kwargs: Any) -> None:
        super().__init__(feed)
        self.source = ColumnDataSource({c: [] for c in (
            "worker", "address", "nbytes", "rss", "limit", "color", "nbytes_text", "rss_text",
            "limit_text", "disk_end", "spilled_text", "process_text", "memory_end",
            "process_end", "limit_mark", "label", "label_x")}, name="memory")
        kwargs: dict[str, Any] = dict(
            title="Memory by worker", height=250, sizing_mode="stretch_width",
            y_range=FactorRange(), x_range=Range1d(start=0, end=1), tools="reset,save",
            min_border_right=30)
        kwargs.update(figure_kwargs)
        fig = figure(**kwargs)
        results = fig.hbar(source=self.source, y="worker", left=0, right="memory_end",
                           height=0.7, fill_color="color", line_color=None, name="results")
        process = fig.hbar(source=self.source, y="worker", left="memory_end",
                           right="process_end", height=0.7, fill_color=PROCESS_COLOR,
                           line_color=None, name="process")
        disk = fig.hbar(source=self.source, y="worker", left="process_end", right="disk_end",
                        height=0.7, fill_color=SPILLED_COLOR, hatch_pattern="/",
                        hatch_color="white", line_color=None, name="spilled")
        fig.hbar(source=self.source, y="worker", left="limit_mark", right="limit_mark",
                 height=0.95, line_color="black", line_dash="dashed", line_width=2,
                 name="limit")
        fig.text(source=self.source, x="label_x", y="worker", text="label",
                 text_font_size="9pt", text_baseline="middle", x_offset=4)
        fig.add_tools(HoverTool(renderers=[process, results, disk], tooltips=[
            ("worker", "@address"), ("results in memory", "@nbytes_text"),
            ("rest of the process", "@process_text"), ("spilled to disk", "@spilled_text"),
            ("process memory", "@rss_text"), ("limit", "@limit_text")]))
        fig.xaxis[0].formatter = NumeralTickFormatter(format="0.0 b")
        fig.ygrid.visible = False
        self.figure = self.root = fig
        self._y_range = _y_range(fig, FactorRange)
        self._x_range: Any = fig.x_range     # a Range1d (its stub type is Range)

    def update(self) -> None:
        self.feed.refresh()
        workers = self.feed.data.get("workers", [])
        rows = []
        for w in workers:
            rss, limit, spilled = w["rss"], w["memory_limit"], w.get("spilled", 0)
            nbytes = max(0, w["nbytes"] - spilled)       # the rest is on disk
            rows.append((w, nbytes, max(0, rss - nbytes), spilled, limit))
        biggest = max((n + p + d for _, n, p, d, _ in rows), default=0)
        limits = [lim for *_, lim in rows if lim]
        end = max(biggest * 1.25, 1_000_000)
        if limits and max(limits) <= 2.5 * end:   # the limit is near: show it
            end = max(end, max(limits) * 1.05)
        floor = end * self.MIN_FRACTION

        def shown(n: int) -> float:
            return max(float(n), floor) if n > 0 else 0.0

        data: dict[str, list] = {c: [] for c in self.source.data}
        for w, nbytes, process, spilled, limit in rows:
            used = nbytes + process
            frac = used / limit if limit else 0.0
            m_end = shown(nbytes)
            p_end = m_end + shown(process)
            d_end = p_end + shown(spilled)
            data["worker"].append(_label(w))
            data["address"].append(w["address"])
            data["nbytes"].append(nbytes)
            data["rss"].append(w["rss"])
            data["limit"].append(limit)
            data["memory_end"].append(m_end)
            data["process_end"].append(p_end)
            data["disk_end"].append(d_end)
            data["limit_mark"].append(float(limit) if limit and limit <= end else float("nan"))
            data["color"].append(ERROR_COLOR if frac > 0.8 else WARN_COLOR if frac > 0.6
                                 else RUNNING_COLOR)
            data["nbytes_text"].append(format_bytes(nbytes))
            data["process_text"].append(format_bytes(process))
            data["spilled_text"].append(format_bytes(spilled))
            data["rss_text"].append(format_bytes(w["rss"]))
            data["limit_text"].append(format_bytes(limit) if limit else "none")
            data["label"].append(format_bytes(used) + (f" / {format_bytes(limit)}" if limit
                                                       else "") +
                                 (f" + {format_bytes(spilled)} on disk" if spilled else ""))
            data["label_x"].append(0.0)      # inside, from the left: never cut off
        factors = list(data["worker"])
        if list(self._y_range.factors) != factors:
            self._y_range.factors = factors
        if abs(self._x_range.end - end) > 0.05 * end:   # steady axis: move it on real change
            self._x_range.end = end
        self._set(data)


class ProgressByFunction(_Replacing):
    """Per function: done / running / waiting / erred, as one stacked bar of fractions.

    Done in the function's own colour, running in a lighter shade of it, waiting grey and
    erred red (erred tasks are counted apart, never as done)."""

    # part, fill colour (None: the function's), alpha
    PARTS = (("done", None, 0.95), ("running", None, 0.4), ("waiting", WAITING_COLOR, 0.9),
             ("erred", ERROR_COLOR, 0.95))

    def __init__(self, feed: Feed, **figure_kwargs: Any) -> None:
        super().__init__(feed)
        cols = ["name", "total", "label", "color"]
        for part, *_ in self.PARTS:
            cols += [part, f"{part}_left", f"{part}_right"]
        self.source = ColumnDataSource({c: [] for c in cols}, name="progress")
        kwargs: dict[str, Any] = dict(
            title="Progress by function", height=250, sizing_mode="stretch_width",
            y_range=FactorRange(), x_range=Range1d(start=0, end=1.0), tools="reset,save")
        kwargs.update(figure_kwargs)
        fig = figure(**kwargs)
        bars: list[DataRenderer] = [
            fig.hbar(source=self.source, y="name", left=f"{part}_left", right=f"{part}_right",
                     height=0.8, fill_color=color or "color", fill_alpha=alpha,
                     line_color=None, name=part)
            for part, color, alpha in self.PARTS]
        fig.text(source=self.source, x=0.01, y="name", text="label", text_font_size="9pt",
                 text_baseline="middle")
        fig.add_tools(HoverTool(renderers=bars, tooltips=[
            ("function", "@name"), ("done", "@done"), ("running", "@running"),
            ("waiting", "@waiting"), ("erred", "@erred")]))
        fig.xaxis.visible = False
        fig.ygrid.visible = False
        self.figure = self.root = fig
        self._y_range = _y_range(fig, FactorRange)

    def update(self) -> None:
        self.feed.refresh()
        prefixes = self.feed.data.get("prefixes", {})
        rows = []
        for name, p in prefixes.items():
            running = p.get("processing", 0)
            waiting = p.get("waiting", 0) + p.get("queued", 0) + p.get("delayed", 0)
            erred = max(p.get("failed", 0), p.get("erred", 0))
            rows.append((running + waiting > 0, name, p.get("done", 0), running, waiting, erred))
        rows.sort(key=lambda r: (not r[0], r[1]))
        data: dict[str, list] = {c: [] for c in self.source.data}
        for _, name, *counts in rows:
            total = sum(counts) or 1
            left = 0.0
            for (part, *_), n in zip(self.PARTS, counts):
                data[part].append(n)
                data[f"{part}_left"].append(left)
                left += n / total
                data[f"{part}_right"].append(left)
            data["name"].append(name)
            data["total"].append(sum(counts))
            data["color"].append(color_of(name))
            erred = counts[3]
            data["label"].append(f"{counts[0]} / {sum(counts)}" +
                                 (f" ({erred} erred)" if erred else ""))
        if list(self._y_range.factors) != data["name"]:
            self._y_range.factors = list(data["name"])
        self._set(data)


def redraw_on_change(table: DataTable) -> None:
    """Make ``table`` redraw its rows whenever its source's data is replaced or patched.

    BokehJS redraws a DataTable only when its CDSView's indices change, and replacing the data
    with as many rows as before leaves them equal: the rows kept their first values until a
    reload. Emitting the view's change signal redraws them."""
    from bokeh.models import CustomJS

    redraw = CustomJS(args={"view": table.view}, code="view.change.emit()")
    table.source.js_on_change("data", redraw)
    table.source.js_on_change("patching", redraw)


class _Table(_Replacing):
    """A titled table of COLUMNS ((field, title) pairs), its source rebuilt each update."""

    COLUMNS: tuple[tuple[str, str], ...]

    def _build(self, name: str, title: str, height: int, table_kwargs: dict[str, Any],
               **root_kwargs: Any) -> None:
        self.source = ColumnDataSource({c: [] for c, _ in self.COLUMNS}, name=name)
        kwargs: dict[str, Any] = dict(height=height, sizing_mode="stretch_width",
                                      index_position=None, reorderable=False)
        kwargs.update(table_kwargs)
        self.table = DataTable(source=self.source, columns=[
            TableColumn(field=f, title=t) for f, t in self.COLUMNS], **kwargs)
        redraw_on_change(self.table)
        self.root = column(Div(text=f"<b>{title}</b>"), self.table,
                           sizing_mode="stretch_width", **root_kwargs)


class WorkerTable(_Table):
    """Address, threads, tasks running, memory, CPU and last seen, one row per worker."""

    COLUMNS = (("name", "name"), ("address", "address"), ("status", "status"),
               ("threads", "threads"),
               ("running", "running"), ("ready", "ready"), ("results", "memory"),
               ("spilled", "on disk"),
               ("process", "process memory"), ("cpu", "CPU %"), ("last_seen", "last seen"))

    def __init__(self, feed: Feed, clock=time.time, **table_kwargs: Any) -> None:
        super().__init__(feed)
        self.clock = clock
        self._build("workers", "Workers", 180, table_kwargs)

    def update(self) -> None:
        self.feed.refresh()
        now = self.clock()
        data: dict[str, list] = {c: [] for c, _ in self.COLUMNS}
        for w in self.feed.data.get("workers", []):
            data["name"].append(w["name"])
            data["address"].append(w["address"])
            status, note = w.get("status", "running"), w.get("memory_note")
            data["status"].append(f"{status}: {note}" if note else status)   # why it paused
            data["threads"].append(w["nthreads"])
            data["running"].append(w["processing"])
            data["ready"].append(w["ready"])
            data["results"].append(format_bytes(w["nbytes"] - w.get("spilled", 0)))
            data["spilled"].append(format_bytes(w.get("spilled", 0)))
            data["process"].append(format_bytes(w["rss"]))
            data["cpu"].append(round(w["cpu"], 1))
            ago = max(0.0, now - w["last_seen"]) if w["last_seen"] else None
            data["last_seen"].append("never" if ago is None else f"{ago:.1f} s ago")
        self._set(data)


class ScheduleTable(_Table):
    """Periodic tasks (``client.schedule``): rule, next run, last run, runs skipped; shown only
    while there are some."""

    COLUMNS = (("name", "schedule"), ("rule", "rule"), ("next", "next run (UTC)"),
               ("last", "last run"), ("skipped", "skipped"))

    def __init__(self, feed: Feed, **table_kwargs: Any) -> None:
        super().__init__(feed)
        self._build("schedules", "Periodic tasks", 120, table_kwargs, visible=False)

    def update(self) -> None:
        self.feed.refresh()
        data: dict[str, list] = {c: [] for c, _ in self.COLUMNS}
        for name, s in sorted((self.feed.data.get("schedules") or {}).items()):
            data["name"].append(name)
            data["rule"].append(s["rule"])
            data["next"].append(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(s["next"])))
            data["last"].append(s["last"] or "none yet")
            data["skipped"].append(s["skipped"])
        if self._set(data):
            self.root.visible = bool(data["name"])


COMPONENTS = {"task-stream": TaskStream, "memory": MemoryByWorker,
              "progress": ProgressByFunction, "workers": WorkerTable,
              "schedules": ScheduleTable}
