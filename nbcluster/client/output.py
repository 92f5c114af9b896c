"""Marking what a task printed with the task's key, line by line."""

from __future__ import annotations


class OutputMarker:
    """Prefixes each line of task output with ``[key] ``, remembering per (key, stream)
    whether the last text ended a line, so a line split across messages is marked once."""

    def __init__(self, limit: int = 10_000) -> None:
        self._line_start: dict[tuple[str, str], bool] = {}
        self._limit = limit

    def mark(self, key: str, stream: str, text: str) -> str:
        at_start = self._line_start.get((key, stream), True)
        parts = []
        for line in text.splitlines(keepends=True):
            parts.append(f"[{key}] {line}" if at_start else line)
            at_start = line.endswith("\n")
        if len(self._line_start) >= self._limit:
            self._line_start.clear()
        self._line_start[(key, stream)] = at_start
        return "".join(parts)
