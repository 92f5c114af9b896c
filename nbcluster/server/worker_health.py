"""A worker's health: heartbeats to the scheduler, the memory watch, and ending the process
over its memory limit (with its last words, so the scheduler can say why)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import TYPE_CHECKING

from ..config import MEMORY_EXIT_CODE
from ..protocol import messages as m
from ..state.instructions import Terminate

if TYPE_CHECKING:
    from .worker import Worker

logger = logging.getLogger("nbcluster.worker")

MEMORY_CHECK_SECONDS = 0.1   # only with a memory limit; psutil's rss read costs ~20 us
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
    """Measure the process's memory often enough to pause before it runs out."""
    import psutil

    proc = psutil.Process()
    while not worker._closing:
        try:
            worker.apply(worker._state.memory_used(proc.memory_info().rss))
        except psutil.Error:
            logger.debug("memory measurement failed", exc_info=True)
        await asyncio.sleep(MEMORY_CHECK_SECONDS)


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
