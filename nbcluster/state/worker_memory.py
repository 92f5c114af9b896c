"""The worker's memory decisions: when to pause, when to ask to be terminated, what to spill
to disk (by the size of its results, and by the process's measured memory) and what to keep in
memory after it was read back.

These are methods of :class:`~nbcluster.state.worker_state.WorkerState`, written here so that
each module stays small; the class binds them by name (``memory_used = worker_memory.memory_used``),
so they read and change its attributes like any other method. Pure and synchronous like the
rest of the state machine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..protocol import messages as m
from .instructions import Instruction, Log, Send, Spill, Terminate, Unspill

if TYPE_CHECKING:
    from .worker_state import WorkerState, WorkerTask


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def process_lines(self: WorkerState) -> tuple[int, int] | None:
    """``(start, target)`` in bytes of process memory: above ``start`` results go to disk,
    least recently used first, until the process is expected back at ``target``. ``start`` is
    halfway from the spill fraction to the next line above it (pause, else terminate, else
    the limit: 70 % by default), so that the process spills before it pauses; ``target`` is
    the spill fraction. None: no spilling."""
    limit, spill_at = self.memory_limit, self.spill_at
    if not limit or not spill_at:
        return None
    upper = self.pause_at or self.terminate_at or 1.0
    start = (spill_at + upper) / 2 if upper > spill_at else upper
    target = spill_at if spill_at < start else max(start - 0.1, 0.0)
    return int(start * limit), int(target * limit)


def watch_line(self: WorkerState) -> int | None:
    """Process memory in bytes above which the next measurement decides something (spill,
    pause or terminate): the shell measures more often above it. None: nothing to watch."""
    limit = self.memory_limit
    if not limit:
        return None
    lines = process_lines(self)
    fractions = [f for f in (self.pause_at, self.terminate_at) if f is not None]
    found = [int(f * limit) for f in fractions] + ([lines[0]] if lines else [])
    return min(found) if found else None


def memory_used(self: WorkerState, rss: int) -> list[Instruction]:
    """The process's memory was measured (``rss`` bytes): spill results by it when it is high
    (memory outside the results, such as inputs read back or fetched and memory the allocator
    keeps, is invisible to the results' own limit), pause above ``pause_at`` of the limit
    (running tasks go on, new ones wait; the scheduler moves what is queued here), resume
    below it, and ask to be terminated (the process is replaced and its results recomputed)
    above ``terminate_at``. A worker that stays paused with nothing left to spill says why,
    once per pause."""
    out: list[Instruction] = []
    limit = self.memory_limit
    if not limit:
        return out
    share = rss / limit
    if self.terminate_at is not None and share >= self.terminate_at:
        out.append(Terminate(f"process memory {_mib(rss)} is {share:.0%} of the worker's "
                             f"limit of {_mib(limit)} (terminates at {self.terminate_at:.0%})"))
        return out
    lines = process_lines(self)
    self.memory_high = lines is not None and rss >= lines[0]
    if lines is not None and self.memory_high:
        _spill_by_process(self, rss, lines[1], out)
    if self.pause_at is None:
        return out
    pausing = not self.paused and share >= self.pause_at
    if pausing:
        self.paused = True
    elif self.paused and share < self.pause_at:
        self.paused = False
        self.memory_note = ""
        out.append(Send(m.Status("running", f"process memory {_mib(rss)}, {share:.0%} of "
                         "the limit")))
        self._run_ready(out)
        return out
    if self.paused and not self.memory_note and not self.writing and not _spillable(self):
        # stuck above the line: what is left is not ours to spill
        self.memory_note = _stuck(self, rss, share)
        out.append(Send(m.Status("paused", self.memory_note)))
        out.append(Log(f"worker {self.address} stays paused: {self.memory_note}"))
    elif pausing:
        out.append(Send(m.Status("paused", f"process memory {_mib(rss)} is {share:.0%} of "
                         f"the worker's limit of {_mib(limit)} (pauses at "
                         f"{self.pause_at:.0%})")))
    return out


def _spill_by_process(self: WorkerState, rss: int, target: int, out: list[Instruction]) -> None:
    """Spill least recently used results until the process is expected at ``target``:
    values still being written leave memory soon, so they count as gone."""
    tasks = self.tasks
    expected = rss
    for key in self.writing:
        ts = tasks.get(key)
        if ts is not None:
            expected -= ts.nbytes
    if expected > target:
        _spill(self, expected - target, out)


def _spillable(self: WorkerState) -> bool:
    if self.spill_limit is None:
        return False
    tasks = self.tasks
    for key in self.lru:
        ts = tasks.get(key)
        if ts is not None and _can_spill(ts):
            return True
    return False


def _can_spill(ts: WorkerTask) -> bool:
    return ts.state == "memory" and not (ts.fetched or ts.unspillable or ts.spilled)


def _stuck(self: WorkerState, rss: int, share: float) -> str:
    """Why the process stays over the pause line: what it holds, by kind (once per pause)."""
    said = (f"process memory {_mib(rss)} is {share:.0%} of the worker's limit of "
            f"{_mib(self.memory_limit or 0)}")
    if self.spill_limit is None:
        return (f"{said} and spilling is off "
                "(memory_spill=None): it resumes when results are released")
    kept = copies = 0
    for ts in self.tasks.values():
        if ts.state == "memory" and not ts.spilled:
            if ts.fetched:
                copies += ts.nbytes
            else:
                kept += ts.nbytes
    other = max(rss - kept - copies, 0)
    return (f"{said} with nothing left to spill: results in memory: {_mib(kept)} (they could not be written to disk), "
            f"inputs copied from peers: {_mib(copies)}, the rest ({_mib(other)}) is running "
            "tasks, the interpreter and memory the allocator keeps; it resumes when tasks "
            "end or results are released")


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
    if ts is None or not ts.spilled or limit is None or ts.nbytes > limit // 2 or self.writing \
            or self.memory_high:    # the process is short of memory: it would go out again
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
    if in_memory > limit:
        _spill(self, in_memory - limit, out)


def _spill(self: WorkerState, excess: int, out: list[Instruction]) -> None:
    """Send least recently used results to disk, at least ``excess`` bytes if there are."""
    chosen: list[WorkerTask] = []
    gone = []
    tasks = self.tasks
    for key in self.lru:
        if excess <= 0:
            break
        ts = tasks.get(key)
        if ts is None or not _can_spill(ts):
            gone.append(key)
            continue
        chosen.append(ts)
        excess -= ts.nbytes
    for key in gone:
        del self.lru[key]
    for ts in chosen:
        del self.lru[ts.key]
        ts.spilled = True
        self.spilled += ts.nbytes
        self.writing.add(ts.key)
    if chosen:
        out.append(Spill({ts.key: ts.nbytes for ts in chosen}))
