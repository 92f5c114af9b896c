"""The worker's memory decisions: when to pause, when to ask to be terminated, what to spill
to disk and what to keep in memory after it was read back.

These are methods of :class:`~nbcluster.state.worker_state.WorkerState`, written here so that
each module stays small; the class binds them by name (``memory_used = worker_memory.memory_used``),
so they read and change its attributes like any other method. Pure and synchronous like the
rest of the state machine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..protocol import messages as m
from .instructions import Instruction, Send, Spill, Terminate, Unspill

if TYPE_CHECKING:
    from .worker_state import WorkerState, WorkerTask


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def memory_used(self: WorkerState, rss: int) -> list[Instruction]:
    """The process's memory was measured: pause above ``pause_at`` of the limit (running
    tasks go on, new ones wait), resume below it, and ask to be terminated (the process is
    replaced and its results recomputed) above ``terminate_at``."""
    out: list[Instruction] = []
    limit = self.memory_limit
    if not limit:
        return out
    share = rss / limit
    if self.terminate_at is not None and share >= self.terminate_at:
        out.append(Terminate(f"process memory {_mib(rss)} is {share:.0%} of the worker's "
                             f"limit of {_mib(limit)} (terminates at {self.terminate_at:.0%})"))
        return out
    if self.pause_at is None:
        return out
    if not self.paused and share >= self.pause_at:
        self.paused = True
        out.append(Send(m.Status("paused", f"process memory {_mib(rss)} is {share:.0%} of "
                         f"the worker's limit of {_mib(limit)} (pauses at "
                         f"{self.pause_at:.0%})")))
    elif self.paused and share < self.pause_at:
        self.paused = False
        out.append(Send(m.Status("running", f"process memory {_mib(rss)}, {share:.0%} of "
                         "the limit")))
        self._run_ready(out)
    return out


def set_memory_limit(self: WorkerState, limit: int | None) -> list[Instruction]:
    """A new memory limit (its cluster re-divided the machine's memory): the spill limit
    follows, results over it go to disk, and the scheduler hears of it."""
    self.memory_limit = limit or None
    spill_at = self.spill_at
    self.spill_limit = int(limit * spill_at) if limit and spill_at else None
    out: list[Instruction] = [Send(m.MemoryLimit(self.memory_limit))]
    if self.spill_limit is not None:
        maybe_spill(self, out)
    return out


def unspilled(self: WorkerState, key: str) -> list[Instruction]:
    """A task read ``key`` back from disk: keep it in memory again (as the most recently used
    result) unless it is large next to the spill limit, which would only churn, or results
    pushed out earlier are still being written: each value kept would push out another before
    the last one has left memory, and tasks reading spilled inputs faster than the disk takes
    them would grow the process past its limit."""
    self.writing.discard(key)      # read from its file: the file is complete
    ts = self.tasks.get(key)
    limit = self.spill_limit
    if ts is None or not ts.spilled or limit is None or ts.nbytes > limit // 2 or self.writing:
        return []
    ts.spilled = False
    self.spilled -= ts.nbytes
    self.lru[key] = None
    out: list[Instruction] = [Unspill(key)]
    maybe_spill(self, out)
    return out


def spill_failed(self: WorkerState, key: str) -> list[Instruction]:
    """Writing ``key`` to disk failed (it cannot be pickled, or the disk is full): it stays in
    memory and is not tried again."""
    self.writing.discard(key)
    ts = self.tasks.get(key)
    if ts is not None and ts.spilled:
        ts.spilled = False
        ts.unspillable = True
        self.spilled -= ts.nbytes
    return []


def spill_written(self: WorkerState, key: str) -> list[Instruction]:
    """``key``'s file is complete (or the key went meanwhile): its memory is free."""
    self.writing.discard(key)
    return []


def maybe_spill(self: WorkerState, out: list[Instruction]) -> None:
    """Results in memory over ``spill_limit``: send the least recently used to disk."""
    limit = self.spill_limit
    assert limit is not None
    in_memory = self.nbytes - self.spilled
    if in_memory <= limit:
        return
    chosen: list[WorkerTask] = []
    gone = []
    tasks = self.tasks
    for key in self.lru:
        if in_memory <= limit:
            break
        ts = tasks.get(key)
        if ts is None or ts.state != "memory" or ts.fetched or ts.unspillable or ts.spilled:
            gone.append(key)
            continue
        chosen.append(ts)
        in_memory -= ts.nbytes
    for key in gone:
        del self.lru[key]
    for ts in chosen:
        del self.lru[ts.key]
        ts.spilled = True
        self.spilled += ts.nbytes
        self.writing.add(ts.key)
    if chosen:
        out.append(Spill({ts.key: ts.nbytes for ts in chosen}))
