"""Stopping a running task: raise an exception inside the thread that runs it."""

from __future__ import annotations

import ctypes


class TaskInterrupt(BaseException):
    """Raised asynchronously in a task's thread (a BaseException, so ``except Exception`` in
    user code does not swallow it). The worker turns it into the error the task ends with."""


class TimeoutInterrupt(TaskInterrupt):
    pass


class CancelInterrupt(TaskInterrupt):
    pass


def interrupt_thread(thread_id: int, exc_type: type[BaseException]) -> bool:
    """Ask the interpreter to raise ``exc_type`` in thread ``thread_id`` at its next bytecode.

    A thread blocked in C code, ``time.sleep`` included, runs no bytecode until that call
    returns, so it notices only then; the executor gives up on a thread that has not stopped
    after a grace period (a worker process then exits and is replaced)."""
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                                      ctypes.py_object(exc_type))
    if done > 1:   # should not happen: undo, as the C API asks
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)
        return False
    return done == 1
