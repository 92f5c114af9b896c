"""What tasks print, on its way from the task threads to the scheduler (and on to clients).

Text is forwarded whole lines at a time (``print`` writes its parts separately), coalesced per
event-loop tick; what a task printed without a final newline goes when the task ends.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Callable

from ..protocol import messages as m

STREAMS: tuple[m.Stream, ...] = ("stdout", "stderr", "log")
LONGEST_PARTIAL_LINE = 4096      # characters held back waiting for a newline


class TaskOutput:
    def __init__(self, loop: asyncio.AbstractEventLoop,
                 send_many: Callable[[list], None]) -> None:
        self._loop = loop
        self._send_many = send_many
        self._lock = threading.Lock()
        self.queued: list[m.Output] = []     # Output messages not sent yet (checked on the loop)
        self._partial: dict[tuple[str, str], str] = {}   # printed text not yet ending a line

    def write(self, key: str, stream: m.Stream, text: str) -> None:
        """From a task thread: ``text`` the task ``key`` wrote to ``stream``."""
        with self._lock:
            held = self._partial.pop((key, stream), "") + text
            cut = held.rfind("\n") + 1
            if cut == 0 and len(held) < LONGEST_PARTIAL_LINE:
                self._partial[(key, stream)] = held
                return
            if cut and cut < len(held):
                self._partial[(key, stream)] = held[cut:]
                held = held[:cut]
            self.queued.append(m.Output(key, stream, held))
            wake = len(self.queued) == 1
        if wake:
            try:
                self._loop.call_soon_threadsafe(self.drain)
            except RuntimeError:     # the loop closed: the worker is gone
                pass

    def task_ended(self, key: str) -> None:
        """From a task thread, as a task ends: send what it printed without a final newline."""
        if self._partial:
            for stream in STREAMS:
                with self._lock:
                    rest = self._partial.pop((key, stream), None)
                if rest:
                    self.write(key, stream, rest + "\n")

    def drain(self) -> None:
        """On the loop: send what was printed since the last drain."""
        with self._lock:
            outputs, self.queued = self.queued, []
        merged: list[m.Output] = []
        for msg in outputs:   # print() writes text and newline separately: join them
            if merged and merged[-1].key == msg.key and merged[-1].stream == msg.stream:
                merged[-1].text += msg.text
            else:
                merged.append(msg)
        if merged:
            self._send_many(merged)
