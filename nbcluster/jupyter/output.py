"""Task output in the cell that submitted the task.

A client ``"submit"`` listener remembers, per key, the parent header of the cell that is running
(``kernel.get_parent("shell")``, ipykernel 6.29 and 7.x). An ``"output"`` listener (client I/O
thread) sends what the task printed or logged, each line marked ``[key]``:

* while that cell is still running: as a ``stream`` message with the cell's parent header;
* after it ended: into an output shown at the end of that cell with a display id, and updated
  in place (``update_display_data``): front ends drop stream messages whose request has
  finished, but apply display updates to any cell. Only cells that still had tasks running get
  one; it is saved with the notebook as plain output (no widget state needed to reopen it).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable

from ..client import OutputMarker
from .models import Throttle

MAX_KEYS = 100_000           # keys remembered (oldest forgotten first)
MAX_LATE_CHARS = 200_000     # task output kept in one cell's late-output display
SETTLE_SECONDS = 0.03        # at a cell's end, how long to let its last task events arrive


class _CellTarget:
    """Where the output of one cell's tasks goes."""

    __slots__ = ("msg_id", "parent", "pending", "handle", "buffer", "shown", "throttle", "chars",
                 "lock")

    def __init__(self, msg_id: str, parent: dict) -> None:
        self.msg_id = msg_id
        self.parent = parent
        self.pending: set[str] = set()
        self.handle: Any = None            # the display updated with late output
        self.shown: list[tuple[str, str]] = []   # (stream, text) in that display so far
        self.buffer: list[tuple[str, str]] = []
        self.throttle: Throttle | None = None
        self.chars = 0
        self.lock = threading.Lock()


class OutputRouter:
    """Routes task output of the clients it is attached to into their submitting cells."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.kernel = getattr(shell, "kernel", None)
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._key_target: OrderedDict[str, _CellTarget] = OrderedDict()
        self._targets: dict[str, _CellTarget] = {}
        self._running: str | None = None
        self._last_parent: dict = {}            # the parent of the latest cell
        self._marker = OutputMarker()
        self._clients: dict[int, tuple[Any, list[Callable[[], None]]]] = {}
        shell.events.register("pre_run_cell", self._pre_run_cell)
        shell.events.register("post_run_cell", self._post_run_cell)

    # ------------------------------------------------------------------ attaching
    def attach(self, client: Any) -> None:
        if id(client) in self._clients or getattr(client, "asynchronous", False):
            return
        unsubscribe = [client.on("submit", self._on_submit), client.on("task", self._on_task),
                       client.on("output", self._on_output)]
        self._clients[id(client)] = (client, unsubscribe)

    def detach(self, client: Any) -> None:
        entry = self._clients.pop(id(client), None)
        if entry is not None:
            for fn in entry[1]:
                fn()

    def attached(self, client: Any) -> bool:
        return id(client) in self._clients

    def close(self) -> None:
        for client, unsubscribe in list(self._clients.values()):
            for fn in unsubscribe:
                fn()
        self._clients.clear()
        for name, fn in (("pre_run_cell", self._pre_run_cell), ("post_run_cell", self._post_run_cell)):
            try:
                self.shell.events.unregister(name, fn)
            except ValueError:
                pass
        for target in list(self._targets.values()):
            if target.throttle is not None:
                target.throttle.flush()

    # ------------------------------------------------------------------ the kernel
    def _parent(self) -> dict:
        kernel = self.kernel
        if kernel is None:
            return {}
        try:
            parent = kernel.get_parent("shell")
        except TypeError:           # very old kernels: get_parent() without a channel
            parent = kernel.get_parent()
        return parent or {}

    @staticmethod
    def _msg_id(parent: dict) -> str:
        return (parent.get("header") or {}).get("msg_id", "")

    def _pre_run_cell(self, *args: Any) -> None:
        parent = self._parent()
        self._running = self._msg_id(parent) or None
        if self._running:
            self._last_parent = parent

    def _post_run_cell(self, *args: Any) -> None:
        msg_id, self._running = self._running, None
        if not msg_id:
            return
        with self._lock:
            target = self._targets.get(msg_id)
            if target is None:
                return
            # a cell that waited for its results: their "task" events trail the wake-up by
            # microseconds on the I/O thread; give them a moment before deciding
            self._settled.wait_for(lambda: not target.pending, timeout=SETTLE_SECONDS)
            if not target.pending and not target.buffer:
                self._targets.pop(msg_id, None)
                return
        # tasks of this cell are still running: give their later output a place in the cell
        self._show_placeholder(target)

    def _show_placeholder(self, target: _CellTarget) -> None:
        """An empty output in the ending cell that later task output replaces."""
        try:
            from IPython.display import display
        except ImportError:
            return
        target.throttle = Throttle(lambda: self._flush_late(target), 0.1)
        target.handle = display({"text/plain": ""}, raw=True, display_id=True)
        if target.buffer:
            target.throttle.request()

    # ------------------------------------------------------------------ client events
    def _on_submit(self, keys: list[str]) -> None:
        parent = self._parent()
        msg_id = self._msg_id(parent)
        if not msg_id:
            return
        with self._lock:
            target = self._targets.get(msg_id)
            if target is None:
                target = self._targets[msg_id] = _CellTarget(msg_id, parent)
                if len(self._targets) > 1000:         # forget the oldest finished cells
                    for old in list(self._targets)[:100]:
                        if not self._targets[old].pending:
                            del self._targets[old]
            kt = self._key_target
            for key in keys:
                kt[key] = target
                kt.move_to_end(key)
                target.pending.add(key)
            while len(kt) > MAX_KEYS:
                kt.popitem(last=False)

    def _on_task(self, key: str, status: str) -> None:
        with self._lock:
            target = self._key_target.get(key)
            if target is not None:
                target.pending.discard(key)
                if not target.pending:
                    self._settled.notify_all()

    def _on_output(self, key: str, stream: str, text: str) -> None:
        with self._lock:
            target = self._key_target.get(key)
            marked = self._marker.mark(key, stream, text)
        name = "stdout" if stream == "stdout" else "stderr"
        if target is None:
            # not (yet) known: output can overtake the "submit" event, or come from a task
            # submitted elsewhere. The latest cell is the best guess; not kernel.get_parent()
            # here, whose context on this thread is that of the cell that made the client.
            self._send(self._last_parent, name, marked)
        elif target.handle is not None:
            with target.lock:
                target.buffer.append((name, marked))
            if target.throttle is not None:        # made with the handle
                target.throttle.request()
        else:
            # the cell is running (or just ended without tasks left): a plain stream message
            self._send(target.parent, name, marked)

    def _send(self, parent: dict, name: str, text: str) -> None:
        kernel = self.kernel
        if kernel is None or not parent:
            import sys

            (sys.stdout if name == "stdout" else sys.stderr).write(text)
            return
        kernel.session.send(kernel.iopub_socket, "stream", {"name": name, "text": text},
                            parent=parent, ident=f"stream.{name}".encode())

    def _flush_late(self, target: _CellTarget) -> None:
        with target.lock:
            items, target.buffer = target.buffer, []
            if not items or target.handle is None:
                return
            shown = target.shown
            for name, text in items:
                if target.chars > MAX_LATE_CHARS:
                    break
                target.chars += len(text)
                if target.chars > MAX_LATE_CHARS:
                    text = text + "\n[nbcluster: more task output was not shown]\n"
                if shown and shown[-1][0] == name:
                    shown[-1] = (name, shown[-1][1] + text)
                else:
                    shown.append((name, text))
            data = late_output_bundle(shown)
        target.handle.update(data, raw=True)


def late_output_bundle(parts: list[tuple[str, str]]) -> dict:
    """Task output as one display: plain text, and HTML with stderr tinted as front ends tint
    a stream's stderr."""
    from html import escape

    spans = "".join(escape(text) if name == "stdout" else
                    f"<span style='background:#fdd'>{escape(text)}</span>"
                    for name, text in parts)
    return {"text/plain": "".join(text for _, text in parts),
            "text/html": f"<pre class='nbcluster-task-output' style='margin:0'>{spans}</pre>"}
