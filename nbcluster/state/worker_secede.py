"""Tasks that give up their thread, and setups that run before tasks: the worker's side.

A task that secedes (``nbcluster.secede()``, or waiting in ``get_client().gather``) keeps
running on a thread of its own; the executor starts another thread in its place. Here it
leaves ``executing`` (what counts against ``nthreads``) for ``seceded``, so the next ready task
goes to the new thread, and the scheduler hears SECEDED. When it rejoins (a thread slot handed
back to it) it counts again. Its end is reported as any task's.

While setups run (``client.register_worker_setup``, ``upload_file``) no task starts: they are
queued as usual and handed to the executor once the last setup is done.

Methods of :class:`~nbcluster.state.worker_state.WorkerState`, written here to keep that module
small; pure and synchronous like the rest of the state machine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..protocol import messages as m
from .instructions import Instruction, Send

if TYPE_CHECKING:
    from .worker_state import WorkerState


def task_seceded(self: WorkerState, key: str) -> list[Instruction]:
    """The task ``key`` gave up its thread: another task may take it."""
    out: list[Instruction] = []
    ts = self.tasks.get(key)
    if ts is None or ts.state != "executing" or key not in self.executing:
        return out
    self.executing.discard(key)
    self.seceded.add(key)
    out.append(Send(m.Seceded(key, ts.run_id, False)))
    self._run_ready(out)
    return out


def task_rejoined(self: WorkerState, key: str) -> list[Instruction]:
    """The seceded task ``key`` holds a thread again (the executor handed it one that was
    idle): it counts against ``nthreads`` until it ends."""
    out: list[Instruction] = []
    ts = self.tasks.get(key)
    if ts is None or key not in self.seceded:
        return out
    self.seceded.discard(key)
    self.executing.add(key)
    out.append(Send(m.Seceded(key, ts.run_id, True)))
    return out


def setup_started(self: WorkerState) -> list[Instruction]:
    """A setup runs: no task starts until it is done."""
    self.setups += 1
    return []


def setup_done(self: WorkerState) -> list[Instruction]:
    out: list[Instruction] = []
    self.setups = max(0, self.setups - 1)
    self._run_ready(out)
    return out
