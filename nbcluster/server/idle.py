"""A scheduler that exits once no client has been connected for a while
(``nbcluster scheduler --idle-timeout 10m``): what ends a cluster whose notebook is gone when
nothing else will (a KubeCluster's scheduler Pod outside any owner, a forgotten job)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

logger = logging.getLogger("nbcluster.scheduler")


class IdleWatch:
    """Closes ``scheduler`` after ``timeout`` seconds without a client, counted from its start
    or from when the last client left. Checks ten times per timeout (at most every 30 s): not
    per message, so it costs nothing on the hot path."""

    def __init__(self, scheduler: Any, timeout: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not timeout > 0:
            raise ValueError(f"the idle timeout must be positive, got {timeout!r}")
        self.scheduler = scheduler
        self.timeout = float(timeout)
        self.clock = clock
        self.since = clock()

    def due(self) -> bool:
        """Whether the scheduler has been without clients for ``timeout`` seconds by now."""
        now = self.clock()
        if self.scheduler.state.clients:   # (clients a journal expects back count too)
            self.since = now
            return False
        return now - self.since >= self.timeout

    def start(self) -> "IdleWatch":
        """Watch from the scheduler's running loop."""
        self._check()
        return self

    def _check(self) -> None:
        if self.scheduler.closed.is_set():
            return
        if self.due():
            message = f"no client for {self.timeout:g} s (--idle-timeout): closing"
            print(f"nbcluster scheduler: {message}", flush=True)
            logger.info(message)
            asyncio.ensure_future(self.scheduler.close())
            return
        interval = min(max(self.timeout / 10, 0.05), 30.0)
        asyncio.get_running_loop().call_later(interval, self._check)
