"""A scheduler's journal at work (issue 15): restores the state at start, and writes each
step's records on a thread of its own, holding back what the step decided until its records
are committed (group commit: steps that come while a write is under way are written together
next). The scheduler's loop never waits on SQLite, and nothing is acknowledged before it is
on disk: every message the scheduler sends goes through :meth:`Keeper.send`."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from .journal import Journal

logger = logging.getLogger("nbcluster.scheduler")
INLINE = 64   # records few enough to commit on the scheduler's loop itself
class Keeper:
    """A scheduler's journal at work: restores the state at start, writes each step's
    records before the scheduler sends what the step decided, lets clients that wanted
    tasks before a restart come back within ``client_grace`` seconds, and holds placement
    for ``settle`` seconds after a restart while workers return with their results."""

    def __init__(self, scheduler: Any, path: str, durable: bool = False,
                 client_grace: float = 60.0, settle: float = 1.0) -> None:
        self.scheduler = scheduler
        self.journal = Journal(path, durable)
        self.client_grace = client_grace
        self.settle = settle
        self.absent: set[str] = set()     # clients expected back after a restart
        self.restored = 0
        self._failing = ""                # why the last write failed, while it fails
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="nbcluster-journal")
        self._records: list = []          # for the next write
        self._held: list[list] = []       # outs waiting for their records to be written
        self._writing = False
        self._closed = False
        self._deliver: Callable[[list], None] = lambda out: None

    def token(self, given: str | None) -> str | None:
        """The cluster's token: the one given (kept for the next restart), else the one a
        previous run kept, so that workers and clients can reconnect."""
        if given:
            if self.journal.meta("token") != given:
                self.journal.set_meta("token", given)
            return given
        return self.journal.meta("token")

    def restore(self, loop: Any) -> None:
        from ..state.journal import restore

        sched, state = self.scheduler, self.scheduler.state
        saved = self.journal.load()
        self.restored = len(saved.tasks)
        if saved.tasks or saved.runs:
            self.absent = restore(state, saved, sched._clock())
            logger.info("journal %s: %d tasks restored, waiting %.1f s for workers to bring "
                        "back their results", self.journal.path, self.restored, self.settle)
            loop.call_later(self.settle, self._resume)
            if self.absent:
                loop.call_later(self.client_grace, self._give_up_on_clients)
        state.durable.journal = []

    def _resume(self) -> None:
        from ..state.journal import resume_placement

        self.scheduler._send(resume_placement(self.scheduler.state, self.scheduler._clock()))

    def _give_up_on_clients(self) -> None:
        sched = self.scheduler
        for client in sorted(self.absent):
            if client not in sched.comms:
                logger.info("client %s did not come back within %g s: its tasks are released",
                            client, self.client_grace)
                sched._send(sched.state.remove_client(client, sched._clock()))
        self.absent = set()

    # ------------------------------------------------------------------ writing
    def send(self, out: list, deliver: Callable[[list], None]) -> None:
        """Deliver ``out`` once the records of the step that made it are on disk (at once if
        it made none and nothing is waiting: messages keep their order)."""
        state = self.scheduler.state
        records = state.durable.journal
        self._deliver = deliver
        if self._closed:   # the scheduler is closing: what is left goes, unrecorded
            state.durable.journal = []
            deliver(out)
            return
        gate = False
        if records:
            state.durable.journal = []
            self._records += records
            # A lost "forget" only means a task runs again after a restart (at least once
            # holds): the messages of a step that only forgot need not wait for the disk.
            gate = any(r[0] != "forget" for r in records)
        if gate or self._held:
            # Only what a client sees waits for the disk: a worker may start a task before
            # its record is written (if the scheduler dies first, no client heard of it, and
            # the restarted scheduler tells the worker to drop what it made).
            workers = state.workers
            now: list = []
            later: list = []
            for item in out:
                (now if item[0] in workers else later).append(item)
            if now:
                deliver(now)
            if later:
                self._held.append(later)
        else:
            deliver(out)
        if self._records and not self._writing:
            self._write()

    def _write(self) -> None:
        records, held = self._records, self._held
        self._records, self._held = [], []
        runs = self.scheduler.state.runs
        if len(records) <= INLINE and not self.journal.wants_compaction():
            # a commit of one row (~25 us): here, no thread hops
            self._done(self._commit(records, runs, compact=False), records, held)
            return
        self._writing = True
        future = asyncio.get_running_loop().run_in_executor(
            self._pool, self._commit, records, runs)
        future.add_done_callback(lambda f: self._written(f, records, held))

    def _commit(self, records: list, runs: int, compact: bool = True) -> str:
        try:
            self.journal.write(records, runs)
        except (sqlite3.Error, OSError) as e:
            return str(e)
        if compact and self.journal.wants_compaction():   # on the writer thread only
            try:
                self.journal.compact()
            except (sqlite3.Error, OSError, ValueError) as e:
                logger.warning("cannot compact the journal %s: %s", self.journal.path, e)
        return ""

    def _written(self, future: asyncio.Future, records: list, held: list) -> None:
        self._writing = False
        self._done(future.result() if not future.cancelled() else "cancelled", records, held)

    def _done(self, error: str, records: list, held: list) -> None:
        if error:   # kept, and tried again with the next step's; the cluster goes on
            self._records[:0] = records
            if not self._failing:
                logger.error("cannot write the journal %s: %s; tasks accepted from now on are "
                             "not safe until it can be written again", self.journal.path, error)
            self._failing = error
        elif self._failing:
            logger.warning("the journal %s is written again", self.journal.path)
            self._failing = ""
        for out in held:
            self._deliver(out)
        if (self._held or self._records) and not error:
            self._write()
        elif self._held:   # the disk fails: the cluster goes on, unsafe (said above)
            held, self._held = self._held, []
            for out in held:
                self._deliver(out)

    def close(self) -> None:
        """Write what is left (on this thread: the loop may be closing), then stop."""
        self._closed = True
        self._pool.shutdown(wait=True)
        state = self.scheduler.state
        records = self._records + (state.durable.journal or [])
        if records:
            try:
                self.journal.write(records, state.runs)
            except (sqlite3.Error, OSError) as e:
                logger.error("cannot write the journal %s at close: %s", self.journal.path, e)
        for out in self._held:
            self._deliver(out)
        self._held, self._records = [], []
        self.journal.close()
