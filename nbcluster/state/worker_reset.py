"""A worker that lost its scheduler and joins one again at the same address (a restarted
scheduler, or the same one after a partition): what it keeps and what it reports.

The scheduler it rejoins starts its run ids afresh and reassigns work itself, so the worker
keeps only finished results (in memory or spilled) and forgets every assignment: queued,
waiting and fetching tasks are dropped, running ones stopped (their outcome is never
reported). Methods of :class:`~nbcluster.state.worker_state.WorkerState`, written here to keep
that module small; pure and synchronous like the rest of the state machine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .instructions import Instruction, Stop

if TYPE_CHECKING:
    from .worker_state import WorkerState


def reset(self: WorkerState) -> list[Instruction]:
    """Forget everything but finished results; ``Stop`` each task the executor holds (the
    shell ignores their outcomes from now on)."""
    out: list[Instruction] = [Stop(key) for key in sorted(self.executing | self.seceded)]
    for key, ts in list(self.tasks.items()):
        if ts.state != "memory":
            ts.state = "forgotten"
            del self.tasks[key]
            continue
        # a result like any other now: the scheduler hears of it (HELLO) and counts it, or
        # frees it
        ts.dependents.clear()
        ts.deps = []
        ts.waiting_on = set()
        ts.fn = ts.args = ts.kwargs = ts.options = None
        ts.want = ts.cancelled = ts.fetched = ts.announced = False
        ts.who_has = []
        ts.run_id = 0
    self.ready.clear()
    self.executing.clear()
    self.seceded.clear()
    self.to_fetch.clear()
    # in_flight is kept: those transfers still run, and their ends count them down
    return out


def held(self: WorkerState) -> dict[str, int]:
    """The results held here, in memory or spilled: ``{key: nbytes}`` (for the HELLO)."""
    return {key: ts.nbytes for key, ts in self.tasks.items() if ts.state == "memory"}
