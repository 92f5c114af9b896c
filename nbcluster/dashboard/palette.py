"""Colours and number formats shared by every plot (no Bokeh here).

One palette maps a function (a key's prefix) to its colour, the same in every plot, session
and process; red, grey and near-black are kept out of it, as they mean "erred", "waiting"
and "transfer" everywhere.
"""

from __future__ import annotations

import time
import zlib

ERROR_COLOR = "#d62728"
TRANSFER_COLOR = "#444444"
RUNNING_COLOR = "#1f77b4"
WAITING_COLOR = "#c7c7c7"
DONE_COLOR = "#2ca02c"
SPILLED_COLOR = "#9e9e9e"
PROCESS_COLOR = "#c6dbef"    # memory of the process beyond the results it holds
WARN_COLOR = "#ff7f0e"
# Category20 without its reds and greys: those mean "error", "waiting" and "transfer"
PALETTE = ("#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#9467bd",
           "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2", "#bcbd22", "#dbdb8d",
           "#17becf", "#9edae5")
# a task's state in the graph page
STATE_COLORS = {"new": "#e0e0e0", "waiting": WAITING_COLOR, "delayed": "#dbdb8d",
                "queued": "#9edae5", "processing": RUNNING_COLOR, "memory": DONE_COLOR,
                "released": "#98df8a", "erred": ERROR_COLOR, "forgotten": "#ffffff"}


def color_of(name: str) -> str:
    """The same colour for the same function name, in every session and process."""
    return PALETTE[zlib.crc32(name.encode()) % len(PALETTE)]


def prefix_of(key: str) -> str:
    return key.rsplit("-", 1)[0]


def format_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"   # pragma: no cover


def format_duration(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def format_clock(t: float) -> str:
    """Epoch seconds as local wall-clock time, to the millisecond."""
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"
