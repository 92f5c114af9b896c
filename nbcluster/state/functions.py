"""The pickled functions the scheduler keeps, and when it lets go of them.

A function (by its token) is kept while either holds:

- its client holds it (``fn_refs.owners``): from its Function message until the client sends
  ReleaseFunctions or leaves. The client decides, because only it knows whether it may still
  name the token: it releases a token once none of its futures uses it, and names a function
  used again later by a new token, sent with its pickle again (see client/functions.py). A
  token is never named after its release, so a drop cannot race with a new task naming it.
  (The other way, refusing a task that names a dropped token so that its client sends the
  function again, would make the client keep every pickle until its tasks are accepted and
  cost a round trip per refusal, with tasks that depend on a refused one to resubmit too);
- a known task names it (``fn_refs.uses``, counted on submit and forget: O(1) a task). Known,
  not running: a finished task may be recomputed from its lineage, a failed one retried, a
  fire-and-forget or delayed one started after its client let go.

When neither holds, the blob goes, and each worker it was sent to (``fn_refs.workers``, the
reverse of each ``WorkerState.functions``) is told, in one ForgetFunctions per worker at the
end of the step. A later task naming the token on that worker would bring it again (placement
sends a Function when the token is not in ``ws.functions``).

Functions over the SchedulerState (like ``client_requests``): pure, no I/O, no clock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..protocol import messages as m

if TYPE_CHECKING:
    from .model import WorkerState
    from .scheduler_state import SchedulerState
    from .transitions import Transitions


class FunctionRefs:
    """What keeps each function (by token), and the workers to tell when one goes. One
    attribute of the SchedulerState, not four: an instance with more than 30 attributes
    loses CPython's fast attribute access (its keys are no longer shared), which costs every
    rule that reads ``self.`` anything (measured: 5 % more instructions per task)."""

    __slots__ = ("owners", "uses", "workers", "dropped")

    def __init__(self) -> None:
        self.owners: dict[str, str] = {}          # token -> the client holding it
        self.uses: dict[str, int] = {}            # token -> known tasks naming it (> 0)
        self.workers: dict[str, set[WorkerState]] = {}   # token -> workers it was sent to
        self.dropped: dict[str, list[str]] = {}   # worker -> tokens dropped in this step


def on_function(s: SchedulerState, peer: str, msg: m.Function) -> None:
    token = msg.token
    if token not in s.functions:
        s.functions[token] = msg.blob
        if s.durable.journal is not None:
            s.durable.journal.append(("fn", token, msg.blob, peer))
    s.fn_refs.owners.setdefault(token, peer)


def on_release_functions(s: SchedulerState, peer: str, msg: m.ReleaseFunctions) -> None:
    owners, uses = s.fn_refs.owners, s.fn_refs.uses
    for token in msg.tokens:
        if owners.get(token) == peer:
            del owners[token]
            if token not in uses:
                drop(s, token)


def unused(s: Transitions, token: str) -> None:
    """The last known task naming ``token`` was forgotten (``Transitions._forget`` counts)."""
    del s.fn_refs.uses[token]
    if token not in s.fn_refs.owners:
        drop(s, token)


def client_left(s: SchedulerState, client: str) -> None:
    """Its functions no known task names go (the others when their last task is forgotten)."""
    owners, uses = s.fn_refs.owners, s.fn_refs.uses
    for token in [t for t, owner in owners.items() if owner == client]:
        del owners[token]
        if token not in uses:
            drop(s, token)


def drop_unused(s: SchedulerState) -> None:
    """After a restart forgot every task: the functions no client holds go."""
    for token in [t for t in s.functions if t not in s.fn_refs.owners]:
        drop(s, token)


def drop(s: Transitions, token: str) -> None:
    del s.functions[token]
    if s.durable.journal is not None:
        s.durable.journal.append(("unfn", token))
    holders = s.fn_refs.workers.pop(token, None)
    if holders:
        pending = s.fn_refs.dropped
        for ws in holders:
            ws.functions.discard(token)
            tokens = pending.get(ws.address)
            if tokens is None:
                pending[ws.address] = [token]
            else:
                tokens.append(token)


def worker_left(s: SchedulerState, ws: WorkerState) -> None:
    holders = s.fn_refs.workers
    for token in ws.functions:
        held = holders.get(token)
        if held is not None:
            held.discard(ws)
            if not held:
                del holders[token]


def send_forgets(s: Transitions) -> None:
    """End of a step: one ForgetFunctions to each worker that had functions dropped. A
    token sent to the worker again in this same step (a client re-sent it) stays there."""
    pending = s.fn_refs.dropped
    if not pending:
        return
    workers, out = s.workers, s.out
    for address, tokens in pending.items():
        ws = workers.get(address)
        if ws is None:
            continue
        tokens = [t for t in tokens if t not in ws.functions]
        if tokens:
            out.append((address, m.ForgetFunctions(tokens)))
    pending.clear()
