"""One task as a worker sees it (see :mod:`.worker_state` for the states)."""

from __future__ import annotations

from typing import Any


class WorkerTask:
    __slots__ = ("key", "state", "fn", "args", "kwargs", "deps", "waiting_on", "want",
                 "priority", "order", "who_has", "dependents", "nbytes", "cancelled", "fetched",
                 "options", "scattered", "spilled", "unspillable", "run_id", "announced",
                 "replica")

    def __init__(self, key: str) -> None:
        self.key = key
        self.state = "new"
        self.fn: str | None = None     # token of the function (None once it ran)
        self.args: Any = None
        self.kwargs: Any = None
        self.deps: list[str] = []
        self.waiting_on: set[str] = set()
        self.want = False
        self.priority = 0.0
        self.order = 0
        self.who_has: list[str] = []
        self.dependents: set[str] = set()
        self.nbytes = 0
        self.cancelled = False
        self.options: dict[str, Any] | None = None
        self.fetched = False   # a copy of a peer's result: the scheduler does not count it
        self.scattered = False  # put here by a client (scatter), not computed
        self.spilled = False    # its value is on disk (still here, loaded when needed)
        self.unspillable = False  # writing it to disk failed: it stays in memory
        self.run_id = 0         # the scheduler's id of this assignment, echoed in reports
        self.announced = False  # STARTED sent for its current run
        self.replica = False    # being copied to be kept here (its holder retires)

    def __lt__(self, other: "WorkerTask") -> bool:
        return (self.priority, self.order) < (other.priority, other.order)

    def __repr__(self) -> str:
        return f"<WorkerTask {self.key!r} {self.state}>"
