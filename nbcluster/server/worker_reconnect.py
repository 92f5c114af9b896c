"""A worker's link to its scheduler: the keepalive that notices a silent scheduler, and joining
a scheduler again at the same address after the connection is lost.

Keepalive: every message from the scheduler counts as a sign of life; a worker that has heard
nothing for a while asks (a ``ping`` request, answered by any scheduler), and one that hears
nothing for ``heartbeat_timeout`` s treats the scheduler as lost (frozen, or the network
between them gone).

Rejoining: a lost scheduler is sought again at the same address with a bounded, jittered
exponential back-off, for ``reconnect_timeout`` s. On a connection the worker forgets every
assignment (the scheduler starts its run ids afresh and reassigns work itself): running tasks
are stopped, and their executor replaced so that nothing they do is reported; then it says
HELLO again, listing the results it still holds, so that finished work is not recomputed.
Tasks that end while no scheduler is there are kept as results and listed too.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import threading
import time
from typing import TYPE_CHECKING, Any

from ..comm import Comm, connect
from ..protocol import messages as m
from .executor import Executor
from .worker_output import TaskOutput

if TYPE_CHECKING:
    from .worker import Worker

logger = logging.getLogger("nbcluster.worker")

FIRST_DELAY = 0.1         # seconds between attempts at first, doubling up to MAX_DELAY
MAX_DELAY = 5.0
CONNECT_SECONDS = 5.0     # one attempt to connect
HELLO_SECONDS = 30.0      # the scheduler's answer to a HELLO
JOURNAL_RECONNECT = 60.0  # default reconnect_timeout with a scheduler that keeps a journal


class SchedulerLink:
    """``reconnect_timeout``: seconds to seek a lost scheduler (0: exit at once); None: 60 s
    if the scheduler keeps a journal (it knows its tasks when it comes back), else 0."""

    def __init__(self, worker: Worker, reconnect_timeout: float | None,
                 heartbeat_timeout: float) -> None:
        if reconnect_timeout is not None and reconnect_timeout < 0:
            raise ValueError(f"reconnect_timeout must not be negative, got {reconnect_timeout!r}")
        if heartbeat_timeout <= 0:
            raise ValueError(f"heartbeat_timeout must be positive, got {heartbeat_timeout!r}")
        self.worker = worker
        self.reconnect_timeout = reconnect_timeout
        self.heartbeat_timeout = heartbeat_timeout
        self.journal = False            # what the scheduler said in its answer to our HELLO
        self.incarnation = ""
        self.last_heard = 0.0           # time.monotonic() of the last batch from the scheduler
        self.gave_up = ""               # why the worker stopped seeking its scheduler
        self.rejoined = 0               # times it joined a scheduler again
        self._generation = 0            # of the executor whose outcomes count
        self._retired: list[threading.Thread] = []   # threads of replaced executors
        self._ids = itertools.count(1)  # ping request ids (0 is the HELLO)
        self._pinged = 0.0
        self._keepalive: asyncio.Task | None = None
        self._rejoin: asyncio.Task | None = None

    # ------------------------------------------------------------------ a connection
    def attach(self, comm: Comm) -> asyncio.Future:
        """Make ``comm`` the connection to the scheduler: a fresh executor (and output) for
        it, then the HELLO listing the results held here. Returns the future of the answer
        (set by the worker's reply handler, or by a loss before it)."""
        w = self.worker
        loop = w._running_loop
        w.scheduler = comm
        w.output = TaskOutput(loop, comm.send_many)
        self._generation += 1
        generation = self._generation

        def on_outcomes(done: list) -> None:   # a replaced executor's outcomes are ignored
            if generation == self._generation:
                w._on_outcomes(done)

        w.executor = Executor(w.nthreads, loop, w.functions, w.data, on_outcomes,
                              w.output.write, w._on_stuck, w.output.task_ended)
        w.executor.owner = w     # nbcluster.get_client() in a task finds its worker
        w._hello = loop.create_future()
        self.last_heard = time.monotonic()
        state = w._state
        identity = {**w.identity, "memory_limit": w.memory_limit, "held": state.held()}
        comm.send(m.Hello("worker", identity))
        if state.paused:    # the scheduler hears of it as it would have before
            comm.send(m.Status("paused", "memory above the pause threshold"))

        def on_close(reason: str) -> None:
            if w.scheduler is comm:
                w._on_scheduler_lost(reason)

        comm.start(w._on_scheduler_batch, on_close)
        return w._hello

    def joined(self, answer: Any) -> None:
        """The scheduler accepted our HELLO; what its answer says of it."""
        info = answer if isinstance(answer, dict) else {}
        self.journal = bool(info.get("journal"))
        self.incarnation = str(info.get("incarnation", ""))
        self.last_heard = time.monotonic()
        if self._keepalive is None:
            self._keepalive = asyncio.ensure_future(self._watch())

    def stop(self) -> list[threading.Thread]:
        """The worker closes: no more watching or seeking; the threads of replaced executors
        (to be joined)."""
        for task in (self._keepalive, self._rejoin):
            if task is not None and task is not _current_task():
                task.cancel()
        return [t for t in self._retired if t.is_alive()]

    # ------------------------------------------------------------------ keepalive
    def ping_after(self) -> float:
        """Seconds of silence before asking: at most one ping per heartbeat interval (the
        scheduler lengthens it as the cluster grows), and time for two within the timeout."""
        timeout = self.heartbeat_timeout
        return min(max(timeout / 4, self.worker.heartbeat_seconds), timeout / 2)

    async def _watch(self) -> None:
        w = self.worker
        while not w._closing:
            await asyncio.sleep(max(0.01, self.heartbeat_timeout / 8))
            comm = w.scheduler
            if self._rejoin is not None or comm is None or comm.closed:
                continue
            now = time.monotonic()
            silent = now - self.last_heard
            if silent >= self.heartbeat_timeout:
                comm.abort(f"no message from the scheduler for {silent:.1f} s "
                           f"(heartbeat_timeout={self.heartbeat_timeout:g} s)")
            elif silent >= self.ping_after() and now - self._pinged >= self.ping_after():
                self._pinged = now
                comm.send(m.Request(next(self._ids), "ping", {}))   # any answer will do

    # ------------------------------------------------------------------ rejoining
    def lost(self, reason: str) -> None:
        """The connection to the scheduler ended (the worker is not closing)."""
        w = self.worker
        if self._rejoin is not None:      # an attempt's connection: the attempt handles it
            return
        timeout = self.reconnect_timeout
        if timeout is None:
            timeout = JOURNAL_RECONNECT if self.journal else 0.0
        if self._keepalive is None:   # never joined (refused at start): nothing to rejoin
            timeout = 0.0
        if timeout <= 0:
            logger.warning("lost the scheduler at %s: %s; closing", w.scheduler_address, reason)
            asyncio.ensure_future(w.close("scheduler lost"))
            return
        logger.warning("lost the scheduler at %s: %s; trying to join it again for up to %g s",
                       w.scheduler_address, reason, timeout)
        self._rejoin = asyncio.ensure_future(self._seek(timeout))

    async def _seek(self, timeout: float) -> None:
        w = self.worker
        start = time.monotonic()
        deadline = start + timeout
        delay, attempt, why = FIRST_DELAY, 0, ""
        try:
            while not w._closing and time.monotonic() < deadline:
                attempt += 1
                ok, why = await self._attempt(deadline - time.monotonic())
                if ok:
                    self.rejoined += 1
                    logger.warning("joined the scheduler at %s again after %.1f s (%d "
                                   "attempts); %d results held here reported", w.scheduler_address,
                                   time.monotonic() - start, attempt, len(w._state.held()))
                    return
                if attempt & (attempt - 1) == 0:   # attempts 1, 2, 4, 8...: not one line each
                    logger.warning("no scheduler at %s yet (attempt %d: %s); trying for %.0f s "
                                   "more", w.scheduler_address, attempt, why,
                                   max(0.0, deadline - time.monotonic()))
                pause = min(delay * random.uniform(0.5, 1.0), deadline - time.monotonic())
                if pause > 0:
                    await asyncio.sleep(pause)
                delay = min(delay * 2, MAX_DELAY)
            if not w._closing:
                self.gave_up = (f"no scheduler at {w.scheduler_address} for "
                                f"{time.monotonic() - start:.1f} s (reconnect_timeout="
                                f"{timeout:g} s); the last attempt said: {why}")
                logger.error("worker %s gives up: %s", w.address, self.gave_up)
                asyncio.ensure_future(w.close("no scheduler"))
        finally:
            self._rejoin = None

    async def _attempt(self, left: float) -> tuple[bool, str]:
        """Connect, forget every assignment, say HELLO: (joined, why not)."""
        w = self.worker
        try:
            comm = await connect(w.scheduler_address, w.token, min(left, CONNECT_SECONDS),
                                 w.security)
        except Exception as e:
            return False, str(e) or repr(e)
        if w._closing:
            comm.abort("the worker is closing")
            return False, "closing"
        self._retire_executor()
        w.functions.clear()      # the scheduler sends again what its tasks need
        hello = self.attach(comm)
        try:
            ok, answer = await asyncio.wait_for(hello, max(0.01, min(left, HELLO_SECONDS)))
        except (asyncio.TimeoutError, ConnectionError) as e:
            ok, answer = False, f"no answer to hello: {e!r}"
        if not ok:
            comm.abort("not joined")
            return False, str(answer)
        if comm.closed:        # lost again before this coroutine resumed
            return False, comm.close_reason
        self.joined(answer)
        return True, ""

    def _retire_executor(self) -> None:
        """Forget every assignment; stop the tasks of the current executor and replace it
        (its threads end once their task stops; what they report is ignored)."""
        w = self.worker
        old = w.executor
        w.apply(w._state.reset())     # Stop: a queued task is skipped, a running one interrupted
        if old is not None:
            self._retired = [t for t in self._retired if t.is_alive()] + old.close()


def _current_task() -> asyncio.Task | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None
