"""The scheduler process: a thin I/O shell around :class:`SchedulerState`.

It accepts connections, learns who each peer is from its HELLO, feeds every batch to the state
machine and sends out what it returns. Requests that need I/O (run a function on every worker,
information for the client) are answered here.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
import uuid
from typing import Any, Callable, ClassVar

from ..comm import Comm, Listener, advertised, listen
from ..errors import ProtocolError
from ..protocol import messages as m
from ..state.gates import queue_typo
from ..state.invariants import check_scheduler, shell_check
from ..state.model import merge_frees
from ..state.periodic import info as periodic_info
from ..state.periodic import summary as schedule_summary
from ..state.scheduler_state import BadBatch, SchedulerState
from ..state.snapshot import worker_status
from . import data_requests, retire_requests, setup_requests
from .journal_keeper import Keeper

logger = logging.getLogger("nbcluster.scheduler")


class Scheduler:
    """Serve a cluster on ``address`` (``tcp://HOST:PORT``, port 0 picks one; or ``inproc://``)."""

    _requests: ClassVar[dict[str, Callable[..., Any]]]   # name -> handler, below the class

    def __init__(self, address: str = "tcp://127.0.0.1:0", token: str | None = None,
                 security=None, journal: str | None = None, durable: bool = False,
                 client_grace: float = 60.0, settle: float = 1.0,
                 worker_ttl: float | None = None, contact_address: str | None = None) -> None:
        self.requested_address, self.contact_address = address, contact_address
        self.token = token
        self.security = security
        self.state = SchedulerState()
        # the journal (issue 15): what a restart on the same file takes back
        self.keeper = Keeper(self, journal, durable, client_grace, settle) if journal else None
        self.incarnation = uuid.uuid4().hex   # tells a restarted scheduler from the last one
        # a worker silent this long is dropped (default: 30 s, or ten heartbeats if longer)
        self.worker_ttl = worker_ttl
        self.comms: dict[str, Comm] = {}
        self.listener: Listener | None = None
        self.address = ""
        self._request_ids = itertools.count(1)
        self._pending_runs: dict[int, dict] = {}
        self._worker_waiters: list[tuple[int, str, int]] = []   # (n workers, client, request)
        self.retire_waiters: list = []    # requests to retire workers, until they left
        self._clock = time.time
        self.started = 0.0
        self.closed = asyncio.Event()
        self.worker_events: list = []     # (time, "added"/"removed", address) for observers
        self.dashboard_link: str | None = None   # set by whoever starts a dashboard for it
        self._wakeup: asyncio.TimerHandle | None = None
        self._wakeup_at: float | None = None
        self._check = shell_check(check_scheduler, os.environ.get("NBCLUSTER_VALIDATE") == "1")

    async def start(self) -> "Scheduler":
        if self.keeper is not None:   # restored before anyone can connect
            self.token = self.keeper.token(self.token)
            self.keeper.restore(asyncio.get_running_loop())
        # Its large frames are task arguments, kept as long as their task and no longer:
        # receive memory kept warm for reuse would hold each one 10 s after its release.
        self.listener = await listen(self.requested_address, self._on_comm, self.token,
                                     self.security, reuse_buffers=False)
        self.address = advertised(self.listener.address, self.contact_address)   # not 0.0.0.0
        self.started = self._clock()
        self._reap()
        logger.info("scheduler at %s", self.address)
        return self

    async def close(self) -> None:
        if self.closed.is_set():
            return
        if self.keeper is not None:   # what it holds is written, then sent
            self.keeper.close()
        for peer, comm in list(self.comms.items()):
            comm.send(m.Close("the scheduler was closed"))   # clients say so, and don't warn
            comm.close()
        if self.listener is not None:
            self.listener.stop()
        self.closed.set()

    # ------------------------------------------------------------------ connections
    def _on_comm(self, comm: Comm) -> None:
        def first_batch(batch: list[m.Message]) -> None:
            msg = batch[0]
            if type(msg) is not m.Hello:
                raise ProtocolError("the first message must be a hello")
            role, identity = msg.role, msg.identity
            if role == "worker":
                peer = self._add_worker(comm, identity)
            elif role == "client":
                peer = str(identity.get("id", ""))
                if not peer or peer in self.comms or peer[0] == "@":
                    raise ProtocolError(f"bad or duplicate client id {peer!r}")
                self.comms[peer] = comm
                self.state.add_client(peer)
                if self.keeper is not None:
                    self.keeper.absent.discard(peer)   # back after a restart
            else:
                raise ProtocolError(f"unknown role {role!r}")
            comm.extra["peer"] = peer
            comm.on_batch = lambda b: self._on_batch(peer, b)
            comm.on_close = lambda reason: self._on_close(peer, reason)
            if len(batch) > 1:
                self._on_batch(peer, batch[1:])
            comm.send(m.Reply(0, True, {"address": self.address, "peer": peer,
                                        "journal": self.keeper is not None,
                                        "incarnation": self.incarnation, "versions":
                                        setup_requests.versions_info(self) if role == "client"
                                        else None}))

        comm.start(first_batch, lambda reason: None)

    def _add_worker(self, comm: Comm, identity: dict) -> str:
        address = identity.get("address")
        if type(address) is not str or address in self.comms:
            raise ProtocolError(f"bad or duplicate worker address {address!r}")
        held = identity.get("held") or {}
        if type(held) is not dict or not all(type(k) is str and k and type(n) is int and n >= 0
                                             for k, n in held.items()):
            raise ProtocolError(f"worker {address}: held must map keys to byte counts")
        queues = identity.get("queues") or ["default"]
        if type(queues) is not list or not all(type(q) is str and q for q in queues):
            raise ProtocolError(f"worker {address}: queues must be a list of names")
        typo = queue_typo(queues, self.state.known_queues())
        if typo is not None:
            comm.send(m.Reply(0, False, f"worker {address} refused: {typo}"))
            comm.close()
            raise _Refused(typo)
        identity = {k: v for k, v in identity.items() if k != "held"}   # not for every info
        out = self.state.add_worker(address, int(identity.get("nthreads", 1)),   # (may refuse
                                    str(identity.get("name", address)), identity, self._clock(),
                                    held)                          # its resources: first)
        self.comms[address] = comm
        self.worker_events.append((self._clock(), "added", address))
        logger.info("worker %s joined (%s threads)", address, identity.get("nthreads"))
        setup_requests.check_versions(address, identity)
        self._send(out)
        if self._worker_waiters:
            self._answer_worker_waiters()
        return address

    def _answer_worker_waiters(self) -> None:
        count, waiting = len(self.state.workers), []
        for n, peer, request_id in self._worker_waiters:
            comm = self.comms.get(peer)
            if comm is None:
                continue           # the client left
            if count >= n:
                self._reply(peer, m.Reply(request_id, True, count))
            else:
                waiting.append((n, peer, request_id))
        self._worker_waiters = waiting

    def _on_close(self, peer: str, reason: str) -> None:
        self.comms.pop(peer, None)
        if peer in self.state.workers:
            logger.info("worker %s left: %s", peer, reason)
            self.worker_events.append((self._clock(), "removed", peer))
            self._send(self.state.remove_worker(peer, self._clock()))
            if self.retire_waiters:
                retire_requests.worker_left(self, peer)
            for run in list(self._pending_runs.values()):
                if peer in run["waiting"]:
                    setup_requests.run_result(self, run, peer, False,
                                              f"worker {peer} left: {reason}")
        elif peer in self.state.clients:
            self._send(self.state.remove_client(peer, self._clock()))
            self._worker_waiters = [w for w in self._worker_waiters if w[1] != peer]

    def _on_batch(self, peer: str, batch: list[m.Message]) -> None:
        requests = None
        for msg in batch:
            if type(msg) in _SHELL_MESSAGES:   # the rest goes to the state machine
                requests = [x for x in batch if type(x) in _SHELL_MESSAGES]
                batch = [x for x in batch if type(x) not in _SHELL_MESSAGES]
                break
        if batch:
            try:
                out = self.state.handle(peer, batch, self._clock())
            except BadBatch as e:
                self._send(e.out)
                raise ProtocolError(str(e)) from None
            self._send(out)
        if requests:
            for msg in requests:
                if type(msg) is m.Request:
                    self._on_request(peer, msg)
                elif type(msg) is m.RunResult and peer in self.state.workers:
                    setup_requests.on_run_result(self, peer, msg)
                else:
                    raise ProtocolError(f"{type(msg).__name__} is not accepted from {peer}")

    def _send(self, out: list) -> None:
        if self.state.timers or self.state.limits_held or self.state.durable.timed:
            self._schedule_wakeup()
        if self.keeper is not None:   # on disk before anything is acknowledged
            self.keeper.send(out, self._deliver)
        else:
            self._deliver(out)
        self._check(self.state)   # debug mode (NBCLUSTER_VALIDATE=1): after every batch

    def _deliver(self, out: list) -> None:
        comms = self.comms
        for peer, msg in merge_frees(out):   # one FREE per worker, where order allows
            comm = comms.get(peer)
            if comm is not None:
                comm.send(msg)

    def _reply(self, peer: str, msg: m.Message) -> None:
        """A reply, behind what the steps before it decided (a journal may hold those)."""
        if self.keeper is not None:
            self.keeper.send([(peer, msg)], self._deliver)
        else:
            comm = self.comms.get(peer)
            if comm is not None:
                comm.send(msg)

    def _reap(self) -> None:
        """Close the connections of silent workers; again in a third of the allowed time."""
        if self.closed.is_set():
            return
        ttl = self.worker_ttl or max(30.0, 10 * self.state.heartbeat)
        for address in self.state.silent_workers(self._clock(), ttl):
            comm = self.comms.get(address)
            if comm is not None:
                logger.warning("worker %s: nothing heard for %.0f s; dropped", address, ttl)
                comm.abort(f"silent for {ttl:g} s")
        asyncio.get_running_loop().call_later(ttl / 3, self._reap)

    def _schedule_wakeup(self) -> None:
        """Call the state's ``wake`` when its next timer or rate limit is due."""
        when = self.state.next_wakeup()
        if when is None or when == self._wakeup_at:
            return
        if self._wakeup is not None:
            self._wakeup.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, when - self._clock())
        self._wakeup_at = when
        self._wakeup = loop.call_at(loop.time() + delay, self._wake)

    def _wake(self) -> None:
        self._wakeup = self._wakeup_at = None
        self._send(self.state.wake(self._clock()))

    # ------------------------------------------------------------------ requests
    def _on_request(self, peer: str, msg: m.Request) -> None:
        comm = self.comms.get(peer)
        if comm is None:
            return
        request_id, name = msg.request_id, msg.name
        handler = self._requests.get(name)
        if handler is None:
            self._reply(peer, m.Reply(request_id, False, f"unknown request {name!r}"))
            return
        try:
            result = handler(self, peer, request_id, **msg.args)
        except Exception as e:  # a bad request must not take the scheduler down
            logger.warning("request %s from %s failed: %r", name, peer, e)
            self._reply(peer, m.Reply(request_id, False, f"{type(e).__name__}: {e}"))
            return
        if result is not _LATER:
            self._reply(peer, m.Reply(request_id, True, result))

    def _request_info(self, peer, request_id) -> dict:
        st = self.state
        return {
            "address": self.address,
            "pid": os.getpid(),
            "started": self.started,
            "workers": {
                a: {"nthreads": w.nthreads, "name": w.name, "processing": len(w.processing),
                    "memory": w.nbytes, "keys": len(w.has_what), "metrics": w.metrics,
                    "identity": w.identity, "last_seen": w.last_seen, **worker_status(w)}
                for a, w in st.workers.items()
            },
            "tasks": st.counts_by_state(), "resources": st.resources_info(),
            "dashboard": self.dashboard_link,
            "clients": len(st.clients),
            "journal": None if self.keeper is None else self.keeper.journal.path,
            "schedules": {name: schedule_summary(st, p) for name, p in st.durable.periodics.items()},
            "done_by_prefix": dict(st.counts),
        }

    def _request_ping(self, peer, request_id) -> bool:
        return True
    def _request_schedules(self, peer, request_id) -> dict:
        return {name: periodic_info(self.state, p) for name, p in self.state.durable.periodics.items()}

    def _request_wait_for_workers(self, peer, request_id, n) -> object:
        """Reply (with the count) once ``n`` workers are connected."""
        if type(n) is not int:
            raise TypeError(f"n must be an int, got {n!r}")
        if len(self.state.workers) >= n:
            return len(self.state.workers)
        self._worker_waiters.append((n, peer, request_id))
        return _LATER

    def _request_load(self, peer, request_id) -> dict:
        """What adaptive scaling decides on: work waiting, and what each worker runs and holds."""
        st = self.state
        return {"work_seconds": st.unfinished_work(), "tasks": st.counts_by_state(),
                "workers": {a: {"processing": len(w.processing), "keys": len(w.has_what),
                                "nthreads": w.nthreads} for a, w in st.workers.items()}}

    def _request_who_has(self, peer, request_id, keys) -> dict:
        tasks = self.state.tasks
        return {k: [w.address for w in tasks[k].who_has] if k in tasks else [] for k in keys}

    def _request_scatter_check(self, peer, request_id, keys) -> dict:
        """For keys a client wants to scatter under: which already name a submitted task
        (refused) and where existing scattered values live (to be replaced there too)."""
        tasks = self.state.tasks
        found: dict[str, dict[str, Any]] = {}
        for key in keys:
            ts = tasks.get(key)
            if ts is None:
                continue
            if ts.fn:
                found[key] = {"task": ts.state}
            elif ts.who_has:
                found[key] = {"holders": [w.address for w in ts.who_has]}
        return found

    def _request_snapshot(self, peer, request_id, since=0, transfers_since=0) -> dict:
        from ..state.snapshot import snapshot

        return snapshot(self.state, int(since), int(transfers_since))

    def _request_queues(self, peer, request_id) -> dict:
        return self.state.queues_info()

    def _request_limits(self, peer, request_id) -> dict:
        return self.state.limits_info()

    def _request_attempts(self, peer, request_id, key) -> list:
        return self.state.attempts(key)

    def _request_story(self, peer, request_id, key) -> list:
        return self.state.story(key)

    def _request_record_stories(self, peer, request_id, on) -> bool:
        self.state.record_stories = bool(on)
        return True

    def _request_restart(self, peer, request_id) -> dict:
        """Forget every task; the futures of every client are cancelled first."""
        cancelled = len(self.state.tasks)
        self._send(self.state.restart("the cluster was restarted (client.restart())",
                                      self._clock()))
        logger.info("restart requested by %s: %d tasks forgotten", peer, cancelled)
        return {"tasks": cancelled, "workers": len(self.state.workers)}

    def _request_close(self, peer, request_id) -> bool:
        asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self.close()))
        return True


_LATER = object()
# Requests by name, each answered by the method ``_request_<name>`` (one table, as messages).
Scheduler._requests = {name[len("_request_"):]: fn for name, fn in vars(Scheduler).items()
                       if name.startswith("_request_")} | {"retire_workers": retire_requests.request} \
    | {"run": setup_requests.request_run, "register_worker_setup": setup_requests.request_setup} \
    | data_requests.REQUESTS
_SHELL_MESSAGES = (m.Request, m.RunResult)   # answered here, not by the state machine


class _Refused(ProtocolError):
    """A worker was refused at its hello (the reason was sent to it)."""
