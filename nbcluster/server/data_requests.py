"""The scheduler shell's side of ``client.replicate`` and ``client.rebalance``: the requests are
checked here and handed to the state machine (state/data_moves.py), which plans the copies and
answers the client itself (a REPLY in what it sends) once every copy has been reported."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .scheduler import Scheduler


def replicate(sched: Scheduler, peer: str, request_id: int, keys: Any, n: Any = None) -> Any:
    """Copies of the results of ``keys`` on ``n`` workers (None: every running worker)."""
    from .scheduler import _LATER

    _check_keys(keys)
    if n is not None and (type(n) is not int or n < 1):
        raise ValueError(f"n must be a positive int (or None: every worker), got {n!r}")
    sched._send(sched.state.replicate(peer, request_id, keys, n, sched._clock()))
    return _LATER


def rebalance(sched: Scheduler, peer: str, request_id: int, keys: Any = None) -> Any:
    """Move results (of ``keys``, None: all) so that workers hold about the same bytes."""
    from .scheduler import _LATER

    if keys is not None:
        _check_keys(keys)
    sched._send(sched.state.rebalance(peer, request_id, keys, sched._clock()))
    return _LATER


def _check_keys(keys: Any) -> None:
    if type(keys) is not list or not all(type(k) is str for k in keys):
        raise TypeError(f"keys must be a list of strings, got {keys!r}")


REQUESTS = {"replicate": replicate, "rebalance": rebalance}
