"""ipywidgets views of the models in ``models.py``: a progress bar per function name and the
cluster widget (table + scale/stop controls).

Views only copy model state into widget traits. Trait changes are sent from whichever thread
makes them (the client's I/O thread, a throttle timer, a poller), which keeps bars moving while
another cell blocks (ipykernel >= 6.29, != 7.0.*). Never print into an Output widget from a
thread; set traits instead.
"""

from __future__ import annotations

import threading
from html import escape
from typing import Any

from .html import STATUS_COLOURS, snapshot_html
from .models import ClusterModel, ClusterSnapshot, GroupState, Poller, ProgressModel
from .session import ClusterSession, SessionError

_BAR_STYLE = {"running": "info", "done": "success", "error": "danger"}


def _current_msg_id() -> str | None:
    try:
        from IPython import get_ipython

        kernel = getattr(get_ipython(), "kernel", None)
        if kernel is None:
            return None
        return (kernel.get_parent("shell") or {}).get("header", {}).get("msg_id")
    except Exception:  # noqa: BLE001
        return None


_warned = False


def warn_if_broken_kernel() -> None:
    """ipykernel 7.0.x drops widget updates sent from threads: say so once."""
    global _warned
    if _warned:
        return
    _warned = True
    import sys

    kernel_mod = sys.modules.get("ipykernel")
    version = getattr(kernel_mod, "__version__", "")
    if version.startswith("7.0."):
        import warnings

        warnings.warn(f"ipykernel {version} does not deliver widget updates sent from threads, "
                      "so progress bars will not move; install ipykernel>=7.1 (or 6.29)",
                      RuntimeWarning, stacklevel=3)


class ProgressWidget:
    """One row per function name: name, bar, ``done / total`` and errors (in red)."""

    def __init__(self, model: ProgressModel) -> None:
        import ipywidgets as w

        self.model = model
        self._lock = threading.Lock()
        self._rows: dict[str, tuple[Any, Any]] = {}
        rows = []
        for group in model.snapshot():
            label = w.HTML(f"<code>{escape(group.name)}</code>",
                           layout=w.Layout(width="180px", overflow="hidden"))
            bar = w.IntProgress(value=0, min=0, max=max(1, group.total), bar_style="info",
                                layout=w.Layout(width="320px"))
            count = w.HTML(self._count_html(group))
            bar.add_class("nbcluster-progress-bar")
            self._rows[group.name] = (bar, count)
            rows.append(w.HBox([label, bar, count]))
        self.header = w.HTML(self._header_html())
        self.widget = w.VBox([self.header, *rows])
        self.widget.add_class("nbcluster-progress")
        self._unsubscribe = model.subscribe(self.update)
        self.update(model)

    @staticmethod
    def _count_html(group: GroupState) -> str:
        text = f"{group.done} / {group.total}"
        if group.erred:
            text += (f" <span style='color:{STATUS_COLOURS['error']}'><b>{group.erred} "
                     f"erred</b></span>")
        if group.cancelled:
            text += f" <span style='color:{STATUS_COLOURS['cancelled']}'>{group.cancelled} cancelled</span>"
        return f"<span class='nbcluster-progress-count'>{text}</span>"

    def _header_html(self) -> str:
        m = self.model
        state = "done" if m.done >= m.total else "running"
        text = f"{m.done} / {m.total} tasks, {m.elapsed:.1f} s"
        if m.erred:
            first = ", ".join(escape(k) for k, _ in m.errors[:3])
            text += (f" <span style='color:{STATUS_COLOURS['error']}'><b>{m.erred} erred</b> "
                     f"({first}{', ...' if m.erred > 3 else ''})</span>")
        return f"<span class='nbcluster-progress-header' data-state='{state}'>{text}</span>"

    def update(self, model: ProgressModel | None = None) -> None:
        with self._lock:
            for group in self.model.snapshot():
                bar, count = self._rows[group.name]
                style = ("error" if group.erred else "done" if group.complete else "running")
                with bar.hold_sync():
                    bar.value = group.done
                    bar.bar_style = _BAR_STYLE[style]
                count.value = self._count_html(group)
            self.header.value = self._header_html()

    def close(self) -> None:
        self._unsubscribe()
        self.widget.close()


class ProgressBar:
    """What ``nbcluster.progress(futures)`` returns in a notebook: the bar is already shown;
    ``.wait()`` blocks until every future is done; ``.value`` is the fraction done."""

    def __init__(self, model: ProgressModel, view: ProgressWidget) -> None:
        self.model = model
        self.view = view
        self.widget = view.widget
        self._shown = False
        self._shown_in: str | None = None

    @property
    def value(self) -> float:
        return self.model.done / self.model.total if self.model.total else 1.0

    @property
    def done(self) -> int:
        return self.model.done

    @property
    def total(self) -> int:
        return self.model.total

    @property
    def erred(self) -> int:
        return self.model.erred

    def wait(self, timeout: float | None = None) -> bool:
        return self.model.wait(timeout)

    def show(self) -> None:
        from IPython.display import display

        display(self.widget)
        self._shown, self._shown_in = True, _current_msg_id()

    def _ipython_display_(self) -> None:
        # shown by progress() already in this cell: do not show a second copy
        if not self._shown or self._shown_in != _current_msg_id():
            self.show()

    def __repr__(self) -> str:
        return f"<ProgressBar {self.model.done}/{self.model.total}, {self.model.erred} erred>"


def progress_widget(futures: Any, display: bool = True, rate: float = 10.0) -> ProgressBar:
    """A live progress bar per function name for ``futures`` (any nesting), shown at once."""
    warn_if_broken_kernel()
    model = ProgressModel(futures, rate=rate)
    bar = ProgressBar(model, ProgressWidget(model))
    if display:
        bar.show()
    return bar


# ---------------------------------------------------------------------- cluster widget
class ClusterWidget:
    """The cluster's table, refreshed every ``interval`` seconds, with scale and stop controls."""

    def __init__(self, session: ClusterSession, interval: float = 1.0, poll: bool = True) -> None:
        import ipywidgets as w

        self.session = session
        self.model = ClusterModel(session.snapshot)
        self._lock = threading.Lock()
        self.table = w.HTML()
        self.table.add_class("nbcluster-cluster-table")
        self.workers = w.BoundedIntText(value=0, min=0, max=1024, description="Workers",
                                        layout=w.Layout(width="170px"))
        self.scale_button = w.Button(description="Scale", icon="arrows-v",
                                     layout=w.Layout(width="90px"))
        self.stop_button = w.Button(description="Stop", icon="stop", button_style="danger",
                                    layout=w.Layout(width="90px"))
        self.message = w.HTML()
        self.scale_button.on_click(lambda _b: self.scale(self.workers.value))
        self.stop_button.on_click(lambda _b: self.stop())
        controls = w.HBox([self.workers, self.scale_button, self.stop_button, self.message])
        self.widget = w.VBox([self.table, controls])
        self.widget.add_class("nbcluster-cluster")
        self._unsubscribe = [self.model.subscribe(self._render),
                             session.on_stop(self._stopped),
                             session.on_change(self.refresh)]
        self._count: int | None = None       # workers in the last snapshot shown
        self.refresh()
        if not session.can_scale:
            self.scale_button.disabled = self.workers.disabled = True
            self.scale_button.tooltip = "this cluster was not started here"
        self.poller = Poller(self.refresh, interval) if poll else None

    def refresh(self) -> ClusterSnapshot:
        snap = self.model.refresh()
        if snap.closed and self.poller is not None:     # the client was closed elsewhere
            self.poller.stop()
        return snap

    def _render(self, snap: ClusterSnapshot) -> None:
        with self._lock:
            self.table.value = snapshot_html(snap)
            if snap.error:          # the scheduler did not answer: the count is not known
                return
            count = 0 if snap.closed else len(snap.workers)
            # the box follows the cluster (scaled by %cluster scale, adapt, a worker replaced)
            # unless someone typed another number into it and has not pressed Scale yet
            if self._count is None or self.workers.value == self._count:
                self.workers.value = count
            self._count = count

    def _say(self, text: str, error: bool = False) -> None:
        colour = STATUS_COLOURS["error"] if error else "#555"
        self.message.value = f"<span style='color:{colour}'>{escape(text)}</span>"

    def scale(self, n: int) -> None:
        """Scale button: add or retire workers until there are ``n``."""
        self.scale_button.disabled = True
        self._say(f"scaling to {n} ...")
        try:
            self.session.scale(int(n))
        except SessionError as e:
            self._say(str(e), error=True)
        else:
            self._say(f"{n} workers")
        finally:
            self.scale_button.disabled = not self.session.can_scale
        self.refresh()

    def stop(self) -> None:
        """Stop button: close the client and the cluster it started."""
        self.stop_button.disabled = self.scale_button.disabled = True
        self.session.stop()

    def _stopped(self) -> None:
        if self.poller is not None:
            self.poller.stop()
        self.model.set(ClusterSnapshot(closed=True))
        self.stop_button.disabled = self.scale_button.disabled = self.workers.disabled = True
        self._say("stopped")

    def close(self) -> None:
        if self.poller is not None:
            self.poller.stop()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self.widget.close()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
