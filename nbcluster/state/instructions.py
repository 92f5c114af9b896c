"""What :class:`~nbcluster.state.worker_state.WorkerState` asks its shell to do, one record
per kind, declared once.

Every event method of the state returns a list of these; the worker's shell carries them out
in order, dispatching on the record's type. A record carries everything the shell needs to act
on it, so the shell never reads the state back.

Plain ``@dataclass(slots=True)``: equality includes the type (``Drop(["a"]) != Spill(...)``,
unlike NamedTuples, which compare equal to any tuple of the same values), and construction is
as cheap as a record gets in pure Python (for ``Execute``: about 210 ns, against 460 ns for a
NamedTuple and 900 ns for a frozen dataclass, whose ``__init__`` goes through
``object.__setattr__``). They are not frozen for that reason alone: treat them as immutable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from ..protocol import messages as m


@dataclass(slots=True)
class Execute:
    """Run a task in a thread. This is the executor's whole work item.

    ``announce``: the task goes to an idle thread at once, so the shell tells the scheduler
    STARTED (stamped with the time it does so) before a thread can run it; a task that kills
    the process is then still counted against it, and the thread need not report the start.
    Otherwise the thread's start report decides (see ``WorkerState.task_started``)."""

    key: str
    fn_token: str            # names the function, sent once per worker in a FUNCTION message
    args: Any                # a list of plain values, or a Serialized one
    kwargs: Any              # None, a dict of plain values, or a Serialized one
    want: bool               # a client waits for it: a small result rides with FINISHED
    options: dict[str, Any] | None  # timeout, retry_on, retries, expires, errors (failed inputs)
    run: int                 # the scheduler's id of this assignment, echoed in reports
    announce: bool = False


@dataclass(slots=True)
class Send:
    """Send a message to the scheduler."""

    msg: m.Message


@dataclass(slots=True)
class Fetch:
    """Get these keys from a peer worker (one transfer)."""

    peer: str
    keys: list[str]


@dataclass(slots=True)
class Drop:
    """Delete these values from the data store (and their spill files)."""

    keys: list[str]


@dataclass(slots=True)
class Stop:
    """The task was freed: interrupt it if it runs, skip it if it still waits for a thread."""

    key: str


@dataclass(slots=True)
class Resume:
    """A task freed while it was with the executor was given back: run (or finish) it after
    all; the call that runs delivers the result."""

    key: str


@dataclass(slots=True)
class Terminate:
    """Memory is over the limit: end this worker process (its cluster replaces it)."""

    reason: str


@dataclass(slots=True)
class Spill:
    """Write these values to disk, least recently used first; ``nbytes`` is key -> size.
    The shell reports ``spill_written`` or ``spill_failed`` for every key."""

    nbytes: dict[str, int]


@dataclass(slots=True)
class Unspill:
    """A spilled value that a task read back stays in memory (the shell holds it)."""

    key: str


@dataclass(slots=True)
class Log:
    """Say this in the worker's log, as a warning (something the user should act on; the
    state says it once, not at every event)."""

    text: str


Instruction = Union[Execute, Send, Fetch, Drop, Stop, Resume, Terminate, Spill, Unspill, Log]
