"""The scheduler shell's side of retiring workers gracefully (``client.retire_workers``, and
clusters scaling down): the state machine decides what moves where (state/retirement.py);
here a request is answered once the workers it names have left, and a worker that has not
left within the request's timeout is disconnected (what only it held is then recomputed if
needed, as for a worker that dies)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ..protocol import messages as m

if TYPE_CHECKING:
    from .scheduler import Scheduler

logger = logging.getLogger("nbcluster.scheduler")


class _Waiter:
    __slots__ = ("peer", "request_id", "addresses", "waiting", "timer")

    def __init__(self, peer: str, request_id: int, addresses: list[str]) -> None:
        self.peer, self.request_id = peer, request_id
        self.addresses = addresses
        self.waiting = set(addresses)
        self.timer: asyncio.TimerHandle | None = None


def request(sched: Scheduler, peer: str, request_id: int, workers: Any = None,
            timeout: Any = None, reason: Any = None) -> Any:
    """Retire ``workers`` (addresses or names; None: all); answered with the addresses once
    they have left."""
    from .scheduler import _LATER

    addresses = resolve(sched, workers)
    if timeout is not None and (type(timeout) not in (int, float) or timeout <= 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    why = str(reason) if reason else f"retired at the request of {peer}"
    if not addresses:
        return []
    waiter = _Waiter(peer, request_id, addresses)
    sched.retire_waiters.append(waiter)
    logger.info("retiring %d workers (%s)", len(addresses), why)
    sched._send(sched.state.retire_workers(addresses, why, sched._clock()))
    if timeout is not None:
        waiter.timer = asyncio.get_running_loop().call_later(timeout, _force, sched, waiter,
                                                             timeout)
    return _LATER


def resolve(sched: Scheduler, workers: Any) -> list[str]:
    """Addresses of ``workers`` (a list of addresses or names, or None for every worker)."""
    known = sched.state.workers
    if workers is None:
        return list(known)
    if isinstance(workers, str) or not isinstance(workers, list):
        raise TypeError(f"workers must be a list of addresses or names, got {workers!r}")
    by_name = {ws.name: address for address, ws in known.items()}
    found: list[str] = []
    unknown: list[Any] = []
    for w in workers:
        address = w if w in known else by_name.get(w) if isinstance(w, str) else None
        if address:
            found.append(address)
        else:
            unknown.append(w)
    if unknown:
        raise KeyError(f"no worker {', '.join(map(repr, unknown))} is connected "
                       f"(connected: {', '.join(sorted(known)) or 'none'})")
    return list(dict.fromkeys(found))


def worker_left(sched: Scheduler, address: str) -> None:
    """A worker left: answer the requests that waited for it (and for no other)."""
    still = []
    for waiter in sched.retire_waiters:
        waiter.waiting.discard(address)
        if waiter.waiting:
            still.append(waiter)
            continue
        if waiter.timer is not None:
            waiter.timer.cancel()
        sched._reply(waiter.peer, m.Reply(waiter.request_id, True, waiter.addresses))
    sched.retire_waiters = still


def _force(sched: Scheduler, waiter: _Waiter, timeout: float) -> None:
    for address in list(waiter.waiting):
        comm = sched.comms.get(address)
        if comm is not None:
            logger.warning("worker %s did not retire within %g s; disconnected (what only it "
                           "held is recomputed if needed)", address, timeout)
            comm.abort(f"not retired within {timeout:g} s")
