"""The graph page: the tasks the scheduler knows, as dots laid out by dependency depth (left
to right) and coloured by state, with their dependencies as lines.

The snapshot carries the graph only while such a page is open (``feed.want("graph")``), and
at most :data:`~nbcluster.state.snapshot.GRAPH_LIMIT` tasks (the newest); the page says so
when there are more. When only states changed, the update patches the colours rather than
resending the graph.
"""

from __future__ import annotations

from typing import Any

from bokeh.models import ColumnDataSource, HoverTool
from bokeh.models.widgets import Div
from bokeh.layouts import column
from bokeh.plotting import figure

from .components import Component
from .feed import Feed
from .palette import STATE_COLORS, color_of, prefix_of


def layout(depth: list[int]) -> tuple[list[float], list[float]]:
    """x = depth, y = place among the tasks of that depth in submission order (top down), so
    a task keeps its place while newer ones are added."""
    counts: dict[int, int] = {}
    xs: list[float] = []
    ys: list[float] = []
    for d in depth:
        n = counts.get(d, 0)
        counts[d] = n + 1
        xs.append(float(d))
        ys.append(-float(n))
    return xs, ys


class TaskGraph(Component):
    def __init__(self, feed: Feed, **figure_kwargs: Any) -> None:
        super().__init__(feed)
        feed.want("graph")
        self._closed = False
        self.nodes = ColumnDataSource({c: [] for c in (
            "x", "y", "key", "state", "color", "prefix", "outline")}, name="graph_nodes")
        self.edges = ColumnDataSource({c: [] for c in ("x0", "y0", "x1", "y1")},
                                      name="graph_edges")
        kwargs: dict[str, Any] = dict(
            title="Task graph (by dependency depth, coloured by state)", height=600,
            sizing_mode="stretch_width", tools="pan,wheel_zoom,box_zoom,reset,save",
            output_backend="webgl")
        kwargs.update(figure_kwargs)
        fig = figure(**kwargs)
        fig.segment(source=self.edges, x0="x0", y0="y0", x1="x1", y1="y1",
                    line_color="#b0bec5", line_alpha=0.5)
        dots = fig.scatter(source=self.nodes, x="x", y="y", size=9, fill_color="color",
                           line_color="outline", line_width=1)
        fig.add_tools(HoverTool(renderers=[dots], tooltips=[
            ("key", "@key"), ("state", "@state"), ("function", "@prefix")]))
        fig.axis.visible = False
        fig.grid.visible = False
        legend = " ".join(
            f'<span style="display:inline-block;width:10px;height:10px;background:{c};'
            f'border:1px solid #999;margin:0 3px 0 10px"></span>{s}'
            for s, c in STATE_COLORS.items() if s not in ("new", "forgotten"))
        self.legend = Div(text=f'<div style="font-family:sans-serif;font-size:12px">'
                               f'{legend}</div>')
        self.note = Div(text="", name="graph_note")
        self.figure = fig
        self.root = column(self.note, fig, self.legend, sizing_mode="stretch_width")
        self._keys: list[str] = []

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.feed.unwant("graph")

    def update(self) -> None:
        self.feed.refresh()
        g = self.feed.data.get("graph")
        if g is None:
            return                                # the next snapshot brings it
        keys, states = g["keys"], g["states"]
        colors = [STATE_COLORS.get(s, "#000000") for s in states]
        if keys == self._keys:                    # same tasks: patch the colours that changed
            old = self.nodes.data["state"]
            changed = [i for i, (a, b) in enumerate(zip(old, states)) if a != b]
            if changed:
                self.nodes.patch({"state": [(i, states[i]) for i in changed],
                                  "color": [(i, colors[i]) for i in changed]})
        else:
            self._keys = list(keys)
            xs, ys = layout(g["depth"])
            prefixes = [prefix_of(k) for k in keys]
            self.nodes.data = {"x": xs, "y": ys, "key": list(keys), "state": list(states),
                               "color": colors, "prefix": prefixes,
                               "outline": [color_of(p) for p in prefixes]}
            self.edges.data = {"x0": [xs[a] for a, _ in g["edges"]],
                               "y0": [ys[a] for a, _ in g["edges"]],
                               "x1": [xs[b] for _, b in g["edges"]],
                               "y1": [ys[b] for _, b in g["edges"]]}
        total = g.get("total", len(keys))
        text = (f"Showing the newest {len(keys)} of {total} tasks (a graph of more would not "
                "be readable; the counts on the status page cover all)." if total > len(keys)
                else f"{total} tasks" if total else "No tasks yet.")
        if self.note.text != text:
            self.note.text = text
