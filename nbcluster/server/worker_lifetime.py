"""A worker with a lifetime (``nbcluster worker --lifetime 1h``): when it is up, the worker
asks the scheduler to retire it; the scheduler moves its queued work and its results to other
workers and then tells it to go. Batch jobs use it to leave before their walltime kills them.

``--lifetime-stagger`` spreads the ends of workers started together (so that a cluster's
workers do not all leave in the same minute); ``--lifetime-grace`` bounds the wait for the
scheduler's word, after which the worker closes anyway (its results are then recomputed if
needed: at-least-once, as for a worker that dies).
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys

from ..errors import ClusterError, SchedulerLostError
from ..loop_thread import close_on_sigterm
from ..protocol import messages as m
from ..state.instructions import Send
from .worker import Worker


logger = logging.getLogger("nbcluster.worker")


def end_of_life(lifetime: float, stagger: float = 0.0, rng: random.Random | None = None) -> float:
    """Seconds from start until the worker asks to retire: ``lifetime`` give or take up to
    ``stagger`` (drawn uniformly), never below zero."""
    if lifetime <= 0:
        raise ValueError(f"lifetime must be positive, got {lifetime!r} s")
    if stagger < 0:
        raise ValueError(f"lifetime stagger must not be negative, got {stagger!r} s")
    offset = (rng or random).uniform(-stagger, stagger) if stagger else 0.0
    return max(lifetime + offset, 0.0)


async def retire_at_end_of_life(worker: Worker, after: float, grace: float) -> None:
    """Run beside the worker: after ``after`` seconds ask to retire, and close if the
    scheduler has not let it go within ``grace`` seconds."""
    await asyncio.sleep(after)     # (a timer: the whole point is to wait this long)
    if worker.finished.is_set():
        return
    reason = f"its lifetime ({after:.0f} s) is up"
    logger.warning("worker %s: %s; retiring (its results move to other workers)",
                   worker.address, reason)
    comm = worker.scheduler
    if comm is not None and not comm.closed and worker.link._rejoin is None:
        worker.apply([Send(m.Retire(reason))])
        try:
            await asyncio.wait_for(worker.finished.wait(), grace)
            return
        except asyncio.TimeoutError:
            logger.warning("worker %s: not released by the scheduler within %.0f s of asking "
                           "to retire; closing (what it held is recomputed if needed)",
                           worker.address, grace)
    await worker.close(f"retired: {reason}")


async def run_worker(scheduler_address: str, lifetime: float | None = None,
                     lifetime_stagger: float = 0.0, lifetime_grace: float = 60.0,
                     **kwargs) -> None:
    """Run a worker until the scheduler tells it to stop or goes away; with ``lifetime``
    (seconds, give or take ``lifetime_stagger``) it retires then (worker_lifetime.py)."""
    after = None if lifetime is None else end_of_life(lifetime, lifetime_stagger)
    worker = Worker(scheduler_address, **kwargs)
    # a process of its own: memory over the limit ends it (as the kernel's OOM killer would,
    # but first); whoever started it, such as SSHCluster, starts another
    worker.own_process = True
    # from the start: a SIGTERM just after the scheduler counted it must close it in order
    close_on_sigterm(lambda: worker.close("SIGTERM"))
    try:
        await worker.start()
    except Exception as e:
        if worker.close_reason == "SIGTERM":   # stopped while it joined: as asked
            return
        raise ClusterError(f"worker could not join the scheduler at {scheduler_address}: {e}") from e
    if worker.close_reason:
        await worker.finished.wait()
        return
    print(f"nbcluster worker {worker.address} joined {scheduler_address}", file=sys.stderr, flush=True)
    if after is not None:
        ending = asyncio.ensure_future(retire_at_end_of_life(worker, after, lifetime_grace))
    await worker.finished.wait()
    if after is not None:
        ending.cancel()
    if worker.close_reason.startswith("retired"):
        print(f"nbcluster worker {worker.address} {worker.close_reason}", file=sys.stderr,
              flush=True)
    if worker.link.gave_up:
        raise SchedulerLostError(f"worker {worker.address} gave up: {worker.link.gave_up}")
