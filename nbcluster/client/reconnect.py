"""A client whose scheduler keeps a journal seeks it again when the connection is lost.

Meanwhile nothing fails: waiting calls keep waiting (their own timeouts apply) and what is
submitted stays in the outbox. Back at the same address, the client says HELLO under the same
id, sends what waited in the outbox, asks again for every key it holds futures of (``WANT``)
and for the answers it was waiting for. A key the scheduler came back without ends its
futures with FutureLostError (a finished value or error already here is kept). Functions are
pickled and sent again when next used: the scheduler may not have them any more.
After ``reconnect_timeout`` s without a scheduler every waiting call fails, naming the address.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Callable

from ..protocol import messages as m
from .records import ERROR, FINISHED, LOST, NO_VALUE, PENDING, KeyRecord

if TYPE_CHECKING:
    from .connection import ClientConnection

logger = logging.getLogger("nbcluster.client")

FIRST_DELAY = 0.1      # seconds between attempts at first, doubling up to MAX_DELAY
MAX_DELAY = 5.0
# requests that only read (or wait for workers): asked again of the scheduler that comes back
RESENT_REQUESTS = frozenset({"ping", "info", "who_has", "wait_for_workers", "load", "queues",
                             "limits", "attempts", "story", "snapshot", "scatter_check"})


class Reconnect:
    def __init__(self, conn: ClientConnection, timeout: float) -> None:
        if timeout < 0:
            raise ValueError(f"reconnect_timeout must not be negative, got {timeout!r}")
        self.conn = conn
        self.timeout = timeout
        self.forget_functions: Callable[[], None] | None = None   # set by the Client
        self.rewanted: set[str] = set()   # asked for again; not yet known to be there
        self.reconnects = 0
        self.restarted = False            # the scheduler came back as a new process
        self._task: asyncio.Task | None = None

    @property
    def active(self) -> bool:
        return self._task is not None

    def start(self, reason: str) -> None:
        conn = self.conn
        logger.warning("lost the scheduler at %s: %s; reconnecting for up to %g s",
                       conn.address, reason, self.timeout)
        if self.forget_functions is not None:
            self.forget_functions()
        self._task = conn.loop.create_task(self._seek(reason))

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _seek(self, reason: str) -> None:
        conn, loop = self.conn, self.conn.loop
        start = loop.time()
        deadline = start + self.timeout
        delay, attempt, why = FIRST_DELAY, 0, reason
        old = conn.incarnation
        try:
            while not conn.closed and loop.time() < deadline:
                attempt += 1
                try:
                    await conn.connect(max(0.01, min(conn.timeout, deadline - loop.time())))
                except Exception as e:
                    why = str(e) or repr(e)
                else:
                    self._task = None
                    self._resume(old)
                    logger.warning("reconnected to the scheduler at %s after %.1f s (%d "
                                   "attempts)", conn.address, loop.time() - start, attempt)
                    return
                if attempt & (attempt - 1) == 0:   # attempts 1, 2, 4, 8...: not one line each
                    logger.warning("no scheduler at %s yet (attempt %d: %s)", conn.address,
                                   attempt, why)
                pause = min(delay * random.uniform(0.5, 1.0), deadline - loop.time())
                if pause > 0:
                    await asyncio.sleep(pause)
                delay = min(delay * 2, MAX_DELAY)
            if not conn.closed:
                self._task = None
                conn.fail_all(f"lost the scheduler at {conn.address}: {reason}; no scheduler "
                              f"there for {loop.time() - start:.1f} s (reconnect_timeout="
                              f"{self.timeout:g} s), the last attempt said: {why}")
        finally:
            if self._task is asyncio.current_task():
                self._task = None

    def _resume(self, old_incarnation: str) -> None:
        """Connected again: the outbox, then WANT for every key held, then the requests
        waiting for an answer; a ping after them marks the end of the scheduler's answers
        to the WANT (one connection keeps the order)."""
        conn = self.conn
        self.reconnects += 1
        self.restarted = conn.incarnation != old_incarnation
        keys = [k for k, rec in conn.records.items() if rec.status in (PENDING, FINISHED, ERROR)]
        self.rewanted = set(keys)
        if keys:
            conn.outbox.append(m.Want(keys))
        queued = {msg.request_id for msg in conn.outbox if type(msg) is m.Request}
        conn.outbox.extend(msg for rid, msg in conn._requests.items()
                           if rid not in queued and msg.name in RESENT_REQUESTS)
        conn._flush()
        if keys:
            conn.loop.create_task(self._settle())

    async def _settle(self) -> None:
        try:
            await self.conn.request("ping")
        except Exception:   # lost again: the next reconnect asks again
            return
        self.rewanted = set()

    def forgotten(self, key: str, rec: KeyRecord | None) -> bool:
        """A CANCELLED for a key asked for again: the scheduler came back without it. True
        when handled here."""
        if key not in self.rewanted:
            return False
        self.rewanted.discard(key)
        if rec is None:
            return True
        if rec.status == PENDING or (rec.status == FINISHED and rec.value is NO_VALUE):
            conn = self.conn
            how = ("restarted without" if self.restarted else
                   "forgot, while this client was disconnected,")
            rec.cancel_reason = f"the scheduler at {conn.address} {how} task {key}; submit it again"
            rec.value, rec.holders = NO_VALUE, ()
            if conn.listeners["task"]:
                conn.emit("task", key, LOST)
            rec.finish(LOST)
        return True   # a value or error already here is kept
