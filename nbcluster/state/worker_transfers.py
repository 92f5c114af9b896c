"""The worker's decisions about inputs held by peers: which holder to fetch each from, how
many keys per transfer and transfers per peer, and what happens when a holder fails (another
holder, or the task goes back to the scheduler as MISSING).

These are methods of :class:`~nbcluster.state.worker_state.WorkerState`, written here so that
each module stays small; the class binds them by name, as it does those of
:mod:`.worker_memory`. Pure and synchronous like the rest of the state machine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..protocol import messages as m
from .instructions import Drop, Fetch, Instruction, Send
from .worker_task import WorkerTask

if TYPE_CHECKING:
    from .worker_state import WorkerState

FETCHES_PER_PEER = 2    # concurrent transfers from one peer
FETCH_BATCH = 50        # keys per transfer request


# ---------------------------------------------------------------------- events
def fetch_done(self: WorkerState, peer: str, nbytes: dict[str, int],
               missing: list[str]) -> list[Instruction]:
    """A transfer from ``peer`` ended: ``nbytes`` for keys received, ``missing`` not had."""
    out: list[Instruction] = []
    self.in_flight[peer] = self.in_flight.get(peer, 1) - 1
    kept: list[str] = []
    for key, size in nbytes.items():
        ts = self.tasks.get(key)
        if ts is None:   # forgotten while it travelled: the shell stored it anyway
            out.append(Drop([key]))
            continue
        if ts.state != "flight":   # here already, or now computed here
            continue
        ts.state = "memory"
        ts.nbytes = size
        self.nbytes += size
        if ts.replica:   # a copy to keep: the scheduler counts it once it hears
            _keep(self, ts, kept)
        elif not any(self._is_pending(d) for d in ts.dependents):
            # everyone who needed it went away while it travelled
            drop: list[str] = []
            self._forget(ts, drop)
            out.append(Drop(drop))
            continue
        self._input_arrived(ts, out)
    if kept:
        out.append(Send(m.Replicated(kept, [])))
    for key in missing:
        self._fetch_failed(key, peer, out)
    if nbytes and self.spill_limit is not None:
        self._maybe_spill(out)
    self._run_ready(out)
    self._start_fetches(out)
    return out


def fetch_failed(self: WorkerState, peer: str, keys: list[str]) -> list[Instruction]:
    """The peer could not be reached at all."""
    out: list[Instruction] = []
    self.in_flight[peer] = self.in_flight.get(peer, 1) - 1
    queued = self.to_fetch.pop(peer, ())
    for key in keys:
        self._fetch_failed(key, peer, out)
    for ts in self.tasks.values():
        if ts.state == "fetch" and peer in ts.who_has:
            ts.who_has.remove(peer)
    for key in queued:   # they waited for this peer: another holder, or MISSING
        qts = self.tasks.get(key)
        if qts is not None and qts.state == "fetch":
            self._queue_fetch(qts, out, peer)
    self._start_fetches(out)
    return out


def fetch_errored(self: WorkerState, key: str, error: tuple[Any, str]) -> list[Instruction]:
    """An input arrived but cannot be used (it does not unpickle): fail who needs it."""
    out: list[Instruction] = []
    exception, text = error
    ts = self.tasks.get(key)
    if ts is None:
        return out
    for dkey in list(ts.dependents):
        dts = self.tasks.get(dkey)
        if dts is not None and dts.state == "waiting":
            out.append(Send(m.Failed(dkey, exception, text, 0.0, 0.0, None, dts.run_id)))
            drop: list[str] = []
            self._forget(dts, drop)
            if drop:
                out.append(Drop(drop))
    if not ts.dependents and key in self.tasks:
        self._forget(ts, [])
    return out


def replicate(self: WorkerState, source: str, keys: list[str]) -> list[Instruction]:
    """The scheduler asks for copies of ``keys`` from ``source`` (it retires), to keep here
    as results of this worker's own (answered by REPLICATED once they are here)."""
    out: list[Instruction] = []
    kept: list[str] = []
    for key in keys:
        ts = self.tasks.get(key)
        if ts is None:
            ts = self.tasks[key] = WorkerTask(key)
        if ts.state == "memory":        # a copy fetched for a task here already
            _keep(self, ts, kept)
            continue
        if ts.state in ("new", "missing", "fetch", "flight"):
            ts.replica = True
            ts.fetched = False          # not dropped after use by a task here
            if ts.state != "flight":    # (in flight: it arrives by the transfer under way)
                ts.who_has = [source]
                ts.state = "fetch"
                self._queue_fetch(ts, out, "")
        else:                           # computing it here: the scheduler thinks otherwise
            out.append(Send(m.Replicated([], [key])))
    if kept:
        out.append(Send(m.Replicated(kept, [])))
    self._start_fetches(out)
    return out


def _keep(self: WorkerState, ts: WorkerTask, kept: list[str]) -> None:
    ts.replica = ts.fetched = False
    if self.spill_limit is not None:
        self.lru[ts.key] = None
    kept.append(ts.key)


# ---------------------------------------------------------------------- internals
def queue_fetch(self: WorkerState, dts: WorkerTask, out: list[Instruction],
                gone: str = "") -> None:
    """Queue a transfer from a holder; with none left, report MISSING (``gone`` failed)."""
    if not dts.who_has:
        dts.state = "missing"
        if dts.replica:   # its holder lost it: the scheduler recomputes it if needed
            dts.replica = False
            out.append(Send(m.Replicated([], [dts.key])))
            if not dts.dependents:
                self._forget(dts, [])
                return
        for dkey in list(dts.dependents):
            self._report_missing(dkey, dts.key, gone, out)
        return
    peer = self.rng.choice(dts.who_has)
    self.to_fetch.setdefault(peer, set()).add(dts.key)


def start_fetches(self: WorkerState, out: list[Instruction]) -> None:
    """Start the queued transfers each peer has room for, up to FETCH_BATCH keys each."""
    for peer in list(self.to_fetch):
        while self.in_flight.get(peer, 0) < FETCHES_PER_PEER and self.to_fetch.get(peer):
            keys = self.to_fetch[peer]
            batch = [keys.pop() for _ in range(min(FETCH_BATCH, len(keys)))]
            batch = [k for k in batch if k in self.tasks and self.tasks[k].state == "fetch"]
            if not batch:
                continue
            for k in batch:
                self.tasks[k].state = "flight"
            self.in_flight[peer] = self.in_flight.get(peer, 0) + 1
            out.append(Fetch(peer, batch))
        if not self.to_fetch.get(peer):
            self.to_fetch.pop(peer, None)


def holder_failed(self: WorkerState, key: str, peer: str, out: list[Instruction]) -> None:
    """``peer`` did not deliver ``key``: try another holder."""
    ts = self.tasks.get(key)
    if ts is None or ts.state != "flight":   # not this transfer's any more
        return
    if not ts.replica and not any(self._is_pending(d) for d in ts.dependents):
        self._forget(ts, [])    # who needed it went away while it travelled (was moved)
        return
    if peer in ts.who_has:
        ts.who_has.remove(peer)
    ts.state = "fetch"
    self._queue_fetch(ts, out, peer)
