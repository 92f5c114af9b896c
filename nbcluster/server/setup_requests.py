"""The scheduler shell's side of running code on workers: ``client.run`` (RUN), and worker
setups (``client.register_worker_setup``, ``upload_file``: SETUP, kept by the state machine
and sent by it to each worker that joins, see state/secession.py). Both are answered by
RunResults, gathered here into one reply to the client that asked. A setup that fails on a
worker that joined later (nobody waits for it) is logged, and noted in that worker's identity
(``scheduler_info()["workers"][address]["identity"]["setup_errors"]``).

Also the versions check: the client hears the scheduler's and the workers' versions in the
answer to its HELLO; a worker that joins with other versions than the scheduler's is logged.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..protocol import messages as m
from ..protocol.serialize import Serialized, loads
from ..state import secession
from ..versions import describe, mismatches, versions

if TYPE_CHECKING:
    from .scheduler import Scheduler

logger = logging.getLogger("nbcluster.scheduler")


def request_run(sched: Scheduler, peer: str, request_id: int, blob: bytes, args: Any,
                workers: Any = None) -> Any:
    """Run a function on every worker (or those named): ``{"results", "errors"}`` by worker."""
    targets = [w for w in sched.state.workers if workers is None or w in workers]
    return _expect(sched, peer, request_id, targets,
                   lambda rid: [(a, m.Run(rid, blob, args)) for a in targets])


def request_setup(sched: Scheduler, peer: str, request_id: int, setup: Any, kind: Any,
                  blob: Any) -> Any:
    """Keep a setup for every worker that joins from now on, and run it on those connected:
    answered as ``run`` is, once each has run it."""
    name = setup
    if type(name) is not str or not name or len(name) > 200:
        raise ValueError(f"a setup's name must be a string of 1 to 200 characters, got {name!r}")
    if kind not in ("function", "file", "package") or type(blob) is not bytes:
        raise ValueError(f"bad setup {name!r}: kind {kind!r}")
    state = sched.state
    targets = [a for a, ws in state.workers.items() if ws.retiring is None]
    logger.info("worker setup %r registered by %s (%d bytes)", name, peer, len(blob))
    return _expect(sched, peer, request_id, targets,
                   lambda rid: secession.register(state, name, kind, blob, rid))


def _expect(sched: Scheduler, peer: str, request_id: int, targets: list[str], make) -> Any:
    from .scheduler import _LATER

    rid = next(sched._request_ids)
    out = make(rid)
    if not targets:
        return {"results": {}, "errors": {}}
    sched._pending_runs[rid] = {"client": peer, "request": request_id, "waiting": set(targets),
                                "results": {}, "errors": {}}
    sched._send(out)
    return _LATER


def on_run_result(sched: Scheduler, worker: str, msg: m.RunResult) -> None:
    run = sched._pending_runs.get(msg.request_id)
    if run is not None:
        run_result(sched, run, worker, msg.ok, msg.value)
    elif not msg.ok:   # a setup on a worker that joined later: nobody waits for it
        text = _error_text(msg.value)
        logger.error("a worker setup failed on %s, which joined after it was registered: %s",
                     worker, text)
        ws = sched.state.workers.get(worker)
        if ws is not None:   # a new identity: observers may hold the old one
            ws.identity = {**ws.identity,
                           "setup_errors": [*ws.identity.get("setup_errors", ()), text]}


def run_result(sched: Scheduler, run: dict, worker: str, ok: bool, value: Any) -> None:
    run["waiting"].discard(worker)
    (run["results"] if ok else run["errors"])[worker] = value
    if run["waiting"]:
        return
    for rid, r in list(sched._pending_runs.items()):
        if r is run:
            del sched._pending_runs[rid]
    sched._reply(run["client"], m.Reply(run["request"], True, {"results": run["results"],
                                                               "errors": run["errors"]}))


def _error_text(value: Any) -> str:
    try:
        exc = loads(value) if type(value) is Serialized else value
        return f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(exc)
    except Exception as e:   # an exception class the scheduler cannot import
        return f"(an error the scheduler cannot unpickle: {e})"


def versions_info(sched: Scheduler) -> dict[str, Any]:
    """For a client's HELLO: the scheduler's versions, and the workers' (distinct ones, with
    how many workers and one address each)."""
    seen: dict[tuple, list[Any]] = {}
    for address, ws in sched.state.workers.items():
        theirs = ws.identity.get("versions")
        if isinstance(theirs, dict):
            entry = seen.setdefault(tuple(sorted(theirs.items())), [theirs, 0, address])
            entry[1] += 1
    return {"scheduler": versions(), "workers": list(seen.values())}


def check_versions(address: str, identity: dict) -> None:
    """A worker joined: log any version that differs from the scheduler's."""
    found = mismatches(versions(), identity.get("versions"))
    if found:
        logger.warning("worker %s joined with other versions than the scheduler's: %s",
                       address, describe(found, "on the scheduler", "on the worker"))
