"""Task threads that give up their slot (secede) and take one back (rejoin).

A task that waits on other tasks (``nbcluster.secede()``, or ``get_client().gather`` in a
task) secedes: its thread stops counting as one of the executor's, which starts another in its
place, and the loop hears ``TaskSeceded`` (the state machine then hands the next task to the
new thread, and tells the scheduler). The seceded thread runs its task to the end, reports it
as usual and exits.

``rejoin()`` takes a slot back: a marker joins the executor's queue, and the first idle thread
that takes it hands its slot to the rejoining task (reporting ``TaskSeceded(rejoined=True)``)
and exits; the task goes on. So the executor runs ``nthreads`` counted threads at any time,
plus the seceded ones. None of this costs a task that does not secede anything but one check.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ..errors import ClusterError
from . import capture
from .worker_outcomes import TaskSeceded

if TYPE_CHECKING:
    from .executor import Executor

_local = threading.local()


def enter(executor: Executor) -> None:
    """In a new executor thread: it runs tasks for ``executor``."""
    _local.executor = executor


def current() -> tuple[Executor, str] | None:
    """``(executor, key)`` of the task running in this thread, or None outside a task."""
    executor = getattr(_local, "executor", None)
    key = capture.current_key()
    if executor is None or key is None:
        return None
    return executor, key


def current_worker() -> Any:
    """The worker whose task runs in this thread (None outside a task)."""
    found = current()
    return None if found is None else getattr(found[0], "owner", None)


def is_seceded() -> bool:
    found = current()
    return found is not None and threading.get_ident() in found[0]._seceded


def secede() -> bool:
    """Give up this task's thread; False if it had already (or the worker is closing)."""
    found = current()
    if found is None:
        raise ClusterError("secede() is for a task's own thread: call it inside a task")
    executor, key = found
    me = threading.get_ident()
    with executor._lock:
        if me in executor._seceded or me in executor._abandoned or executor._closing:
            return False
        executor._seceded.add(me)
    executor._start_thread()    # the slot it leaves
    executor._report(TaskSeceded(key))
    return True


def rejoin() -> bool:
    """Wait for a thread slot and take it; False if this task had not seceded."""
    found = current()
    if found is None:
        raise ClusterError("rejoin() is for a task's own thread: call it inside a task")
    executor, key = found
    me = threading.get_ident()
    event = threading.Event()
    with executor._lock:
        if me not in executor._seceded or executor._closing:
            return False
        executor._rejoining[me] = event
    executor._work.put((None, (me, key, event)))   # taken by the next idle thread
    event.wait()
    return True


def hand_over(executor: Executor, me: int, marker: tuple[int, str, threading.Event]) -> None:
    """In an idle thread that took a rejoin marker: give its slot to the task and exit."""
    rejoiner, key, event = marker
    with executor._lock:
        executor._seceded.discard(rejoiner)
        executor._rejoining.pop(rejoiner, None)
        _drop_thread(executor, me)
    executor._report(TaskSeceded(key, True))
    event.set()


def leave(executor: Executor, me: int) -> bool:
    """After a task ended: True if its thread had seceded (it exits: its slot is taken)."""
    with executor._lock:
        if me not in executor._seceded:
            return False
        executor._seceded.discard(me)
        _drop_thread(executor, me)
    return True


def _drop_thread(executor: Executor, me: int) -> None:
    executor._threads = [t for t in executor._threads if t.ident != me]
