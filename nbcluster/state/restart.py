"""``client.restart()`` in the scheduler's state: every task forgotten, workers and clients
kept (bound as ``SchedulerState.restart``)."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from ..protocol import messages as m
from . import coordination, data_moves, functions, resources
from .gates import Timers
from .model import Out

if TYPE_CHECKING:
    from .scheduler_state import SchedulerState


def restart(s: SchedulerState, reason: str, now: float = 0.0) -> Out:
    """Forget every task (``client.restart()``): clients hear CANCELLED for each key they
    hold, workers drop all their data and stop what runs. Workers, clients, functions,
    queues and limits (their settings) stay; functions only while their clients hold them."""
    s.now = now
    out = s.out = []
    on_worker: dict[str, list[str]] = defaultdict(list)
    for ts in s.tasks.values():
        for client in ts.who_wants:
            if client in s.clients:
                out.append((client, m.Cancelled(ts.key, reason)))
        for ws in ts.who_has:
            on_worker[ws.address].append(ts.key)
        if ts.processing_on is not None:
            on_worker[ts.processing_on.address].append(ts.key)
    for address, keys in on_worker.items():
        out.append((address, m.Free(keys, [s.runs] * len(keys))))
    s.tasks.clear()
    s.fn_refs.uses.clear()
    functions.drop_unused(s)
    for heap in s.queues.values():
        heap.clear()
    s.unrunnable.clear()
    for limit in s.limits.values():
        limit.held.clear()
        limit.running = 0
    s.limits_held = False
    s.timers = Timers()
    coordination.restarted(s)
    resources.forget_all(s)
    data_moves.abandon(s)
    for ws in s.workers.values():
        ws.processing.clear()
        ws.seceded.clear()
        s.occupancy.changed(ws)
        ws.has_what.clear()
        ws.nbytes = 0
    functions.send_forgets(s)
    s.out = []
    return out
