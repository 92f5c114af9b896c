"""A worker's health: heartbeats to the scheduler, the memory watch, and ending the process
over its memory limit (with its last words, so the scheduler can say why)."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from ..comm.buffers import POOL
from ..config import MEMORY_EXIT_CODE
from ..protocol import messages as m
from ..state.instructions import Terminate
from ..state.worker_memory import watch_line

if TYPE_CHECKING:
    from .worker import Worker

logger = logging.getLogger("nbcluster.worker")

MEMORY_CHECK_SECONDS = 0.1   # only with a memory limit; psutil's rss read costs ~20 us
# Above the line where the next measurement acts (spill, pause, terminate), or while memory
# climbs fast, the interval halves down to this: a task allocating steadily overshoots the
# limit by what it allocates in one interval.
MEMORY_CHECK_MIN_SECONDS = 0.01
CLIMB = 1 / 16      # of the limit: growth between two measurements that counts as climbing
BIG_RESULT = 1 / 16  # of the limit: a result this large is followed by a measurement at once
TERMINATE_GRACE_SECONDS = 0.05   # time for the last words to leave before the process exits


async def heartbeat_loop(worker: Worker) -> None:
    import psutil

    proc = psutil.Process()
    while not worker._closing:
        try:
            metrics = {"rss": proc.memory_info().rss, "cpu": proc.cpu_percent(),
                       "nbytes": worker._state.nbytes, "spilled": worker._state.spilled,
                       "executing": len(worker._state.executing),
                       "ready": len(worker._state.ready), "time": time.time()}
            worker._scheduler.send(m.Heartbeat(metrics))
        except Exception:  # metrics are best effort
            logger.debug("heartbeat failed", exc_info=True)
        await asyncio.sleep(worker.heartbeat_seconds)   # the scheduler may lengthen it


async def memory_loop(worker: Worker) -> None:
    """Measure the process's memory often enough to spill, pause or end it in time: every
    MEMORY_CHECK_SECONDS, twice as often at each measurement while memory is high or
    climbing."""
    import psutil

    proc = psutil.Process()
    interval = MEMORY_CHECK_SECONDS
    last = 0
    while not worker._closing:
        try:
            rss = measure(worker, proc)
        except psutil.Error:
            logger.debug("memory measurement failed", exc_info=True)
            rss = last
        limit, line = worker.memory_limit or 0, watch_line(worker._state)
        stuck = bool(worker._state.memory_note)    # high, but nothing it can do: no hurry
        if (line is not None and rss >= line and not stuck) or rss - last >= limit * CLIMB:
            interval = max(interval / 2, MEMORY_CHECK_MIN_SECONDS)
        else:
            interval = MEMORY_CHECK_SECONDS
        last = rss
        await asyncio.sleep(interval)


def measure(worker: Worker, proc: Any) -> int:
    """The process's memory, to the state machine (which decides). Over the watch line, free
    memory is first given back to the system: glibc keeps what Python frees in its heap,
    where it would count against the limit for good (a trim that finds nothing costs ~20 us;
    when memory was freed is not known here: the last reference may go on another thread)."""
    rss: int = proc.memory_info().rss
    line = watch_line(worker._state)
    if line is not None and rss >= line and trim_memory():
        rss = proc.memory_info().rss
    worker.apply(worker._state.memory_used(rss))
    return rss


def result_stored(worker: Worker, nbytes: int) -> None:
    """A task's result was stored: a large one is measured at once, not at the next tick."""
    limit = worker.memory_limit
    if limit and nbytes >= limit * BIG_RESULT and worker._memory_watch is not None:
        import psutil

        try:
            measure(worker, psutil.Process())
        except psutil.Error:
            pass


def trim_memory() -> bool:
    """Give free memory back to the system: receive buffers kept for reuse, and the heap's
    free memory (glibc's malloc_trim; other allocators do it themselves). True if it may
    have freed some."""
    global _malloc_trim
    released = POOL.release_free()
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
            _malloc_trim.argtypes, _malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        except (OSError, AttributeError):   # not glibc: its allocator does this itself
            _malloc_trim = False
    if _malloc_trim is False:
        return released > 0
    _malloc_trim(0)
    return True


_malloc_trim: Any = None


def terminate(worker: Worker, ins: Terminate) -> None:
    reason = ins.reason
    if not worker.own_process:
        # a worker thread in the user's process cannot be replaced: stay, but say so once
        if not worker._over_limit_told:
            worker._over_limit_told = True
            logger.warning("worker %s: %s; an in-process worker cannot be restarted",
                           worker.address, reason)
        return
    if worker._terminating:
        return
    worker._terminating = True
    # as an out-of-memory kill would, but with the reason: LocalCluster starts a
    # replacement and the scheduler recomputes what was lost from lineage (and names the
    # reason if a task keeps doing this)
    print(f"nbcluster worker {worker.address} terminating: {reason}", file=sys.stderr,
          flush=True)
    worker._scheduler.send(m.Status("terminating", reason))
    worker._running_loop.call_later(TERMINATE_GRACE_SECONDS, os._exit, MEMORY_EXIT_CODE)
