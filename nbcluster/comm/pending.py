"""Server connections that have not proven the token yet, and their deadline."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

logger = logging.getLogger("nbcluster.comm")


class Pending:
    """A listener's connections that have not proven the token yet: each is dropped after
    ``seconds``, and beyond ``limit`` of them the oldest is dropped for the newest, so that a
    flood of silent sockets costs little (a small buffer each) and keeps nobody out for long."""

    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float, limit: int) -> None:
        self.loop, self.seconds, self.limit = loop, seconds, limit
        self.waiting: dict[Any, asyncio.TimerHandle] = {}   # oldest first

    def add(self, proto: Any) -> None:
        self.waiting[proto] = self.loop.call_later(self.seconds, self._drop, proto,
                                                   f"no proof of the token within "
                                                   f"{self.seconds:g} s")
        while len(self.waiting) > self.limit:
            self._drop(next(iter(self.waiting)), f"more than {self.limit} connections were "
                       "waiting to authenticate; the oldest was dropped")

    def discard(self, proto: Any) -> None:
        timer = self.waiting.pop(proto, None)
        if timer is not None:
            timer.cancel()

    def _drop(self, proto: Any, why: str) -> None:
        self.discard(proto)
        logger.warning("refused connection from %s: %s", proto.peer, why)
        proto.on_ready = None
        if proto.transport is not None:
            proto.transport.abort()
