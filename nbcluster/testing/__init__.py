"""Tools for testing nbcluster and code built on it (imports anything; nothing in the library
imports it).

- :func:`validate` checks every invariant of a state machine (scheduler or worker);
- :class:`FakeClock` is time as data for the state machines: time-based tests take no time;
- :func:`wait_until` waits on a condition of other processes, with a deadline;
- ``nbcluster.testing.fixtures`` is a pytest plugin (``pytest_plugins =
  ["nbcluster.testing.fixtures"]``): ``cluster``, ``client``, ``inproc_cluster``,
  ``proc_cluster``, ``pclient``, a check that every test cleans up its threads and processes,
  and a failure for any test during which a state machine broke an invariant.

Clusters check their invariants after every batch they handle when the environment sets
``NBCLUSTER_VALIDATE=1`` before they start (worker processes inherit it).
"""

from __future__ import annotations

from ..state.invariants import (InvariantError, check_scheduler, check_scheduler_messages,
                                check_worker)
from ..state.scheduler_state import SchedulerState
from ..state.worker_state import WorkerState
from .clock import FakeClock
from .polling import wait_until

__all__ = ["VALIDATE_ENV", "FakeClock", "InvariantError", "validate", "wait_until"]

VALIDATE_ENV = "NBCLUSTER_VALIDATE"   # "1": the shells validate their state after each batch


def validate(state, out: list | None = None, sent: dict | None = None) -> None:
    """Raise :class:`InvariantError` unless every invariant of ``state`` holds.

    ``state`` is a ``SchedulerState`` or a worker's ``WorkerState``. For a scheduler, ``out``
    (what its last step returned) is checked too; ``sent`` is a dict kept across steps that
    records the functions each worker was sent (without it, the scheduler's own record of
    earlier steps is trusted)."""
    if isinstance(state, SchedulerState):
        check_scheduler(state)
        if out is not None:
            check_scheduler_messages(state, out, sent)
    elif isinstance(state, WorkerState):
        check_worker(state)
    else:
        raise TypeError(f"validate takes a SchedulerState or a WorkerState, not "
                        f"{type(state).__name__}")
