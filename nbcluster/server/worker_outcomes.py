"""What the executor's task threads report to the worker's event loop, in the order it
happened, declared once. Records as in :mod:`nbcluster.state.instructions` (slotted
dataclasses: cheap to build, equal only to their own kind).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from ..protocol.serialize import Serialized
from .spill import Spilled


@dataclass(slots=True)
class TaskStarted:
    """A thread began to run the task (``timeout``: the executor's own, to arm the limit)."""

    key: str
    start: float
    timeout: float | None = None


@dataclass(slots=True)
class TaskFinished:
    """The task returned ``result``; ``value`` is what travels with FINISHED if
    ``has_value``. A task skipped because it was cancelled in the queue ends this way too,
    with no result."""

    key: str
    result: Any
    nbytes: int
    start: float
    stop: float
    has_value: bool
    value: Any
    type_name: str


@dataclass(slots=True)
class TaskFailed:
    key: str
    exception: Serialized      # pickled with its traceback
    traceback: str
    start: float
    stop: float
    retry: dict | None         # None, or {"delay": seconds or None, "max": int or None}


@dataclass(slots=True)
class InputReadBack:
    """A task loaded a spilled input from disk: the loop may keep ``value`` in memory."""

    key: str
    marker: Spilled
    value: Any


@dataclass(slots=True)
class TaskSeceded:
    """The task gave up its thread (``rejoined``: took an idle one's slot back)."""

    key: str
    rejoined: bool = False


Outcome = Union[TaskStarted, TaskFinished, TaskFailed, InputReadBack, TaskSeceded]
