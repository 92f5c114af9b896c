"""Adaptive scaling: a cluster grows while work waits and shrinks when workers sit idle.

``cluster.adapt(minimum, maximum)`` (``Cluster.adapt``) starts an :class:`Adaptive` that asks
the scheduler how much work there is once per ``interval`` and scales the cluster. The decision is the pure
function :func:`decide` (counts in, a target and the workers to retire out); the loop around it
only reads ``scheduler_info`` and calls the cluster's ``add_worker``/``retire_worker`` (or its
``_adapt_to``, if it has one: a batch-system cluster counts in jobs).

- Up at once: enough workers that the unfinished work (tasks times their average duration)
  is about ``TARGET_SECONDS`` per thread, within ``minimum`` and ``maximum``.
- Down slowly: only workers that run nothing and hold no results (retiring them loses
  nothing), and only after ``wait_count`` checks in a row found them idle.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..client import Client
    from .cluster import Cluster

logger = logging.getLogger("nbcluster.deploy")

TARGET_SECONDS = 1.0          # of queued work per thread before another worker is worth it
UNFINISHED = ("queued", "processing", "waiting")


def decide(tasks: dict, work_seconds: float, workers: dict, threads_per_worker: int,
           minimum: int, maximum: int, idle_since: dict, wait_count: int
           ) -> tuple[int, list[str]]:
    """``(workers wanted, addresses to retire now)``.

    ``tasks``: counts by state; ``work_seconds``: the unfinished tasks' expected run time;
    ``workers``: address -> {"processing", "keys"}; ``idle_since``: address -> consecutive
    idle checks (updated here).
    """
    work = sum(int(tasks.get(s, 0)) for s in UNFINISHED)
    threads = max(1, threads_per_worker)
    if work == 0:
        wanted = minimum
    else:
        wanted = max(1, math.ceil(work_seconds / (TARGET_SECONDS * threads)))
        wanted = min(wanted, math.ceil(work / threads))   # never more threads than tasks
    wanted = max(minimum, min(maximum, wanted))
    for address in list(idle_since):
        if address not in workers:
            del idle_since[address]
    for address, w in workers.items():
        idle = not w.get("processing") and not w.get("keys")
        idle_since[address] = idle_since.get(address, 0) + 1 if idle else 0
    retire: list[str] = []
    surplus = len(workers) - wanted
    if surplus > 0:
        ripe = sorted((a for a, n in idle_since.items() if n >= wait_count),
                      key=lambda a: -idle_since[a])
        retire = ripe[:surplus]
    return wanted, retire


class Adaptive:
    """Scales ``cluster`` between ``minimum`` and ``maximum`` workers; ``stop()`` ends it."""

    def __init__(self, cluster: "Cluster", minimum: int = 0, maximum: int | None = None,
                 interval: float = 1.0, wait_count: int = 3) -> None:
        if not isinstance(minimum, int) or minimum < 0:
            raise ValueError(f"adapt: minimum must be a non-negative int, got {minimum!r}")
        if maximum is None:
            maximum = max(minimum, len(cluster.workers), 1)
        if not isinstance(maximum, int) or maximum < max(minimum, 1):
            raise ValueError(f"adapt: maximum must be an int >= max(minimum, 1), got {maximum!r}")
        if not interval > 0 or not isinstance(wait_count, int) or wait_count < 1:
            raise ValueError(f"adapt: interval must be > 0 and wait_count a positive int "
                             f"(got {interval!r}, {wait_count!r})")
        self.cluster = cluster
        self.minimum, self.maximum = minimum, maximum
        self.interval, self.wait_count = interval, wait_count
        self._idle: dict[str, int] = {}
        self._stop = threading.Event()
        self._client: Client | None = None
        self._thread = threading.Thread(target=self._run, name="nbcluster-adaptive", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from ..client import Client

        try:
            client = self._client = Client(self.cluster.scheduler_address,
                                           token=self.cluster.token,
                                           security=self.cluster.security, set_as_default=False)
        except Exception as e:
            logger.error("adaptive scaling could not reach the scheduler: %s", e)
            return
        try:
            while not self._stop.wait(self.interval):
                try:
                    self.step()
                except Exception as e:   # a failed start must not end adaptivity
                    if self._stop.is_set():
                        break
                    logger.warning("adaptive scaling step failed: %s", e)
        finally:
            client.close()

    def step(self) -> None:
        if self._client is None:   # not connected yet
            return
        load = self._client.load()
        wanted, retire = decide(load["tasks"], load["work_seconds"], load["workers"],
                                self.cluster.threads_per_worker,
                                self.minimum, self.maximum, self._idle, self.wait_count)
        adapt_to = getattr(self.cluster, "_adapt_to", None)   # a kind's own (in jobs)
        if adapt_to is not None:
            adapt_to(wanted, retire, self._stop)
            return
        for _ in range(wanted - len(self.cluster.workers)):
            if self._stop.is_set():
                return
            self.cluster.add_worker()
        for address in retire:
            if self._stop.is_set():
                return
            if address in self.cluster.workers:
                self.cluster.retire_worker(address)
                self._idle.pop(address, None)

    def stop(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(30)

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Adaptive {self.minimum}..{self.maximum} workers, {state}>"
