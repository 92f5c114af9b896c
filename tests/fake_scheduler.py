"""A scheduler stand-in for reconnect tests: it answers HELLO (saying whether it keeps a
journal) and, if asked to, pings; it records every message, and the test sends the rest.
``crash()`` drops every connection and stops listening, as a killed scheduler would; another
FakeScheduler on the same port is the scheduler restarted."""

from __future__ import annotations

import asyncio
import threading
import uuid

from nbcluster.comm import listen
from nbcluster.protocol import messages as m

TOKEN = "reconnect-test-token"


class FakeScheduler:
    def __init__(self, io, port: int = 0, journal: bool = True, answer_pings: bool = True):
        self.io = io                      # a LoopThread
        self.journal = journal
        self.answer_pings = answer_pings
        self.incarnation = uuid.uuid4().hex
        self.received: list = []          # (comm, message)
        self.comms: list = []
        self._changed = threading.Condition()
        self.listener = io.run(listen(f"tcp://127.0.0.1:{port}", self._on_comm, TOKEN))
        self.address = self.listener.address
        self.port = int(self.address.rsplit(":", 1)[1])

    def _on_comm(self, comm) -> None:
        self.comms.append(comm)

        def on_batch(batch) -> None:
            for msg in batch:
                if type(msg) is m.Hello:
                    comm.send(m.Reply(0, True, {"address": self.address, "peer": "x",
                                                "journal": self.journal,
                                                "incarnation": self.incarnation}))
                elif type(msg) is m.Request and self.answer_pings:
                    comm.send(m.Reply(msg.request_id, True, True))
            with self._changed:
                self.received.extend((comm, msg) for msg in batch)
                self._changed.notify_all()

        comm.start(on_batch, lambda reason: None)

    # ------------------------------------------------------------------ for the test
    def messages(self, kind=None, comm=None) -> list:
        with self._changed:
            return [msg for c, msg in self.received
                    if (kind is None or type(msg) is kind) and (comm is None or c is comm)]

    def wait_for(self, predicate, what: str, timeout: float = 8.0):
        """The first message for which ``predicate(msg)`` is true (waits for it)."""
        def found():
            return next(((c, msg) for c, msg in self.received if predicate(msg)), None)

        with self._changed:
            if not self._changed.wait_for(found, timeout):
                raise AssertionError(f"the fake scheduler got no {what} in {timeout:g} s")
            return found()

    def hello(self, role: str, timeout: float = 8.0):
        """(comm, identity) of the first HELLO from a ``role``."""
        comm, msg = self.wait_for(lambda x: type(x) is m.Hello and x.role == role,
                                  f"HELLO from a {role}", timeout)
        return comm, msg.identity

    def send(self, comm, *msgs) -> None:
        self.io.loop.call_soon_threadsafe(comm.send_many, list(msgs))

    def crash(self) -> None:
        async def crash():
            self.listener.stop()
            for comm in self.comms:
                comm.abort("the scheduler died")
            await asyncio.sleep(0)   # one loop turn: the transports' own close callbacks run

        self.io.run(crash())
