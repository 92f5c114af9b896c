"""Tasks that submit tasks, and worker setup (issue 17): the scheduler's side.

A task that waits on other tasks gives up its thread (secedes): the worker says SECEDED and the
scheduler moves it from the worker's ``processing`` (what counts against its threads and its
window) to its ``seceded`` set. It stays assigned there: it still ends with FINISHED or
FAILED, and is rescheduled if the worker dies. When it takes a thread again (rejoins) it counts
again. A recursive computation then cannot fill every thread with tasks that wait.

Worker setups (``client.register_worker_setup``, ``upload_file``) are kept here, pickled once,
and sent as SETUP to every worker that joins, before any task it is given (the same batch,
earlier), so a replacement or an added worker is set up as the first ones were.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..protocol import messages as m
from .model import Out, WorkerState

if TYPE_CHECKING:
    from .scheduler_state import SchedulerState


def on_seceded(s: SchedulerState, peer: str, msg: m.Seceded) -> None:
    ts = s.tasks.get(msg.key)
    ws = s.workers.get(peer)
    if ts is None or ws is None or ts.processing_on is not ws or msg.run != ts.run_id:
        return    # stale: the task ended, moved or was freed meanwhile
    ts.executing = True    # it runs (a SECEDED may overtake its STARTED)
    if msg.rejoined:
        if ts in ws.seceded:
            ws.seceded.discard(ts)
            ws.processing.add(ts)
            s.occupancy.changed(ws)
        s._record(ts, "rejoined", peer)
    elif ts in ws.processing:
        ws.processing.discard(ts)
        ws.seceded.add(ts)
        s.occupancy.changed(ws)    # a thread free: the window refills at the end of the batch
        s._record(ts, "seceded", peer)


def register(s: SchedulerState, name: str, kind: m.SetupKind, blob: bytes, request_id: int) -> Out:
    """Keep a setup (replacing one of the same name) and send it to every current worker
    (not those retiring); returns ``[(worker, SETUP), ...]``."""
    setups = s.durable.setups
    setups.pop(name, None)        # a replacement runs after the others, as it was sent
    setups[name] = (kind, blob)
    msg = m.Setup(request_id, name, kind, blob)
    return [(address, msg) for address, ws in s.workers.items() if ws.retiring is None]


def joined(s: SchedulerState, ws: WorkerState) -> None:
    """A worker joined: every setup goes to it first (request 0: nobody waits for it)."""
    for name, (kind, blob) in s.durable.setups.items():
        s.out.append((ws.address, m.Setup(0, name, kind, blob)))
