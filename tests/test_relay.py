"""A relay that knows no token gains nothing by forwarding the handshake (issue 13, item 2).

The relay sits where a client connects by mistake: it forwards the three handshake messages
between a real client and a real server, then injects, replays, reorders, tampers with or
reflects frames. Every batch after the handshake carries tags made with keys derived from the
token and both nonces, one set per direction, and a counter per direction: the receiver closes
the connection with a logged reason and delivers nothing of what the relay touched.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import socket
import struct
import threading

import numpy as np
import pytest

from nbcluster import Client, LocalCluster
from nbcluster.comm import auth, connect, listen
from nbcluster.comm.seal import DIRECT, LARGE, PIECE, TAG
from nbcluster.protocol import messages as m
from nbcluster.protocol.framing import encode, frame_header
from nbcluster.protocol.serialize import dumps, loads

pytestmark = pytest.mark.timeout(30)
WAIT = 10.0
MB = 2**20


def note(*fields) -> m.Message:
    return m.Data(0, {"f": list(fields)}, [], {})


def forged(batch: list) -> bytes:
    """A batch as the wire carried it before batches were sealed: what a relay can make."""
    frames = encode(batch)
    return frame_header(frames) + b"".join(bytes(f) for f in frames)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return bytes(data)


def read_batch(sock: socket.socket) -> bytes:
    """One sealed batch off the wire: count, lengths, header tag, frames, tag."""
    head = recv_exactly(sock, 4)
    (count,) = struct.unpack("<I", head)
    lengths = recv_exactly(sock, 8 * count)
    body = recv_exactly(sock, TAG + sum(struct.unpack(f"<{count}Q", lengths)) + TAG)
    return head + lengths + body


class Relay:
    """Accepts one connection on 127.0.0.1, forwards the handshake to ``upstream`` and back,
    then calls ``act(relay)`` and pipes whatever is left in both directions."""

    def __init__(self, upstream: str, act=lambda relay: None, security=None) -> None:
        scheme, hostport = upstream.split("://")
        host, port = hostport.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.act = act
        self.security = security      # TLS on both sides, with a certificate of the cluster's CA
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"{scheme}://127.0.0.1:{self.listener.getsockname()[1]}"
        self.up: socket.socket | None = None
        self.down: socket.socket | None = None
        self.closed = {"up": threading.Event(), "down": threading.Event()}   # EOF from that side
        self.errors: list[BaseException] = []
        self.answer: bytes | None = None
        self.stopping = False
        self.threads = [threading.Thread(target=self._run, daemon=True)]
        self.threads[0].start()

    def _run(self) -> None:
        try:
            self.listener.settimeout(WAIT)
            self.down, _ = self.listener.accept()
            self.down.settimeout(WAIT)
            self.up = socket.create_connection(self.upstream, timeout=WAIT)
            if self.security is not None:
                self.down = self.security.server_context().wrap_socket(self.down,
                                                                       server_side=True)
                self.up = self.security.client_context().wrap_socket(self.up)
            self.down.sendall(recv_exactly(self.up, auth.SERVER_HELLO))
            self.up.sendall(recv_exactly(self.down, auth.CLIENT_PROOF))
            self.down.sendall(recv_exactly(self.up, auth.SERVER_PROOF))
            self.act(self)
        except BaseException as e:   # reported by stop(), so a failure here fails the test
            if not (self.stopping and isinstance(e, OSError)):   # the test is over
                self.errors.append(e)
            return
        for src, dst, side in ((self.up, self.down, "up"), (self.down, self.up, "down")):
            t = threading.Thread(target=self._pipe, args=(src, dst, side), daemon=True)
            self.threads.append(t)
            t.start()

    def _pipe(self, src: socket.socket, dst: socket.socket, side: str) -> None:
        src.settimeout(None)
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        self.closed[side].set()
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _shutdown(self) -> None:
        for s in (self.up, self.down, self.listener):
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)     # wakes a thread blocked on it
                except OSError:
                    pass

    def stop(self) -> None:
        """Shut every socket down, join the threads, then close the sockets."""
        self.stopping = True
        self._shutdown()
        self.threads[0].join(WAIT)       # _run is over: no socket or thread is added after
        self._shutdown()
        for t in self.threads[1:]:
            t.join(WAIT)
        for s in (self.up, self.down, self.listener):
            if s is not None:
                s.close()
        if self.errors:
            raise self.errors[0]


class Link:
    """A client and a server comm connected through a relay, recording what each receives
    (``got``) and why each closed (``why``)."""

    def __init__(self) -> None:
        self.got: dict[str, list] = {"server": [], "client": []}
        self.why: dict[str, str] = {}
        self.news = asyncio.Event()            # something arrived or closed

    def start(self, comm, side: str) -> None:
        def on_batch(batch):
            self.got[side].append(batch)
            self.news.set()

        def on_close(reason):
            self.why[side] = reason
            self.news.set()
        comm.start(on_batch, on_close)

    async def until(self, predicate) -> None:
        while not predicate():
            self.news.clear()
            await asyncio.wait_for(self.news.wait(), WAIT)

    def messages(self, side: str) -> list:
        return [msg.values["f"] for batch in self.got[side] for msg in batch]

    async def refused(self, side: str) -> None:
        """``side`` closed the connection for a failed seal, and delivered nothing before."""
        await self.until(lambda: side in self.why or self.got[side])
        assert self.got[side] == [], "the relay's batch was delivered"
        assert "authentication failed" in self.why[side]

    def finish(self) -> None:
        self.comm.abort("test over")
        self.server.abort("test over")
        self.listener.stop()
        self.relay.stop()


async def through_relay(act, token="secret", security=None) -> Link:
    link = Link()
    accepted: asyncio.Queue = asyncio.Queue()

    def on_comm(comm):
        link.start(comm, "server")
        accepted.put_nowait(comm)

    scheme = "tls" if security is not None else "tcp"
    link.listener = await listen(f"{scheme}://127.0.0.1:0", on_comm, token, security)
    link.relay = Relay(link.listener.address, act, security)
    link.comm = await connect(link.relay.address, token, timeout=WAIT, security=security)
    link.start(link.comm, "client")
    link.server = await asyncio.wait_for(accepted.get(), WAIT)
    return link


@pytest.fixture(scope="module")
def ca_certificate():
    from nbcluster.security import Security

    return Security.temporary()


@pytest.mark.parametrize("scheme", ["tcp", "tls"])
@pytest.mark.parametrize("toward", ["server", "client"])
def test_a_relay_that_forwards_the_handshake_cannot_inject_a_frame(toward, scheme, caplog,
                                                                    ca_certificate):
    """The relay's own batch never reaches the handler, and the receiver says why it closed.
    Under tls:// the relay holds a certificate of the cluster's CA (a CA may sign for more than
    one cluster, and hostnames are not checked) but not the token: the seal still stops it."""
    evil = forged([note("injected by the relay")])

    def inject(relay):
        (relay.up if toward == "server" else relay.down).sendall(evil)

    async def main():
        link = await through_relay(inject, security=ca_certificate if scheme == "tls" else None)
        try:
            await link.refused(toward)
        finally:
            link.finish()

    with caplog.at_level(logging.WARNING, logger="nbcluster.comm"):
        asyncio.run(asyncio.wait_for(main(), 3 * WAIT))
    assert any("authentication failed" in r.getMessage() for r in caplog.records)


def _two_batches_then(transform):
    """A relay that reads the client's first two batches and sends ``transform(a, b)`` on."""
    def act(relay):
        a, b = read_batch(relay.down), read_batch(relay.down)
        try:
            relay.up.sendall(transform(a, b))
        except (ConnectionResetError, BrokenPipeError):
            pass   # the server refused a batch and hung up while the rest was on its way
    return act


def _flip(batch: bytes, at: int) -> bytes:
    b = bytearray(batch)
    b[at] ^= 1
    return bytes(b)


CASES = {     # what the relay sends on, and how many batches get through
    "replayed": (lambda a, b: a + a, 1),          # the first is delivered, the replay is not
    "reordered": (lambda a, b: b + a, 0),
    "dropped": (lambda a, b: b, 0),
    "tampered-small": (lambda a, b: _flip(a, len(a) - TAG - 3) + b, 0),
    "tampered-large": (lambda a, b: _flip(a, len(a) // 2) + b, 0),   # inside the 3 MB buffer
    "tampered-header": (lambda a, b: _flip(a, 5) + b, 0),
    "tampered-tag": (lambda a, b: _flip(a, len(a) - 1) + b, 0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_replayed_reordered_dropped_or_tampered_batches_are_refused(case, caplog):
    transform, delivered = CASES[case]

    async def main():
        link = await through_relay(_two_batches_then(transform))
        try:
            link.comm.send(note("first", dumps(np.arange(3 * MB // 8))))
            await asyncio.sleep(0)              # one batch per event-loop tick: two batches
            link.comm.send(note("second"))
            await link.until(lambda: "server" in link.why)
            assert len(link.got["server"]) == delivered
            assert "authentication failed" in link.why["server"]
        finally:
            link.finish()

    with caplog.at_level(logging.WARNING, logger="nbcluster.comm"):
        asyncio.run(asyncio.wait_for(main(), 3 * WAIT))


def test_a_batch_reflected_back_to_its_sender_is_refused():
    """Each direction has its own keys: the client's batch sent back to it does not pass."""
    def reflect(relay):
        relay.down.sendall(read_batch(relay.down))

    async def main():
        link = await through_relay(reflect)
        try:
            link.comm.send(note("to be reflected"))
            await link.refused("client")
            assert link.got["server"] == []
        finally:
            link.finish()
    asyncio.run(asyncio.wait_for(main(), 3 * WAIT))


def test_a_relay_that_only_forwards_carries_small_and_large_batches_both_ways():
    async def main():
        link = await through_relay(lambda relay: None)
        try:
            arr = np.arange(3 * MB, dtype="u8")                     # 24 MB out of band
            blob = os.urandom(200_000)                              # inside the control frame
            for _ in range(3):
                link.comm.send(note("big", dumps(arr), blob))
                link.comm.send(note("small", 1))
                await asyncio.sleep(0)          # one batch per event-loop tick
            link.server.send(note("back", dumps(arr[::-1].copy())))
            await link.until(lambda: len(link.messages("server")) == 6 and link.got["client"])
            msgs = link.messages("server")
            assert [f[0] for f in msgs] == ["big", "small"] * 3
            assert all(np.array_equal(loads(f[1]), arr) and f[2] == blob for f in msgs[::2])
            [back] = link.messages("client")
            assert np.array_equal(loads(back[1]), arr[::-1])
        finally:
            link.finish()
    asyncio.run(asyncio.wait_for(main(), 3 * WAIT))


def test_frames_at_every_size_boundary_of_the_seal_arrive_whole():
    """Hashed as they are, GMACed whole, sealed piece by piece (read in place or taken from
    the receive buffer): sender and receiver agree on each."""
    sizes = [0, DIRECT, DIRECT + 1, LARGE, LARGE + 1, PIECE - 1, PIECE, PIECE + 1, 2 * PIECE]

    async def main():
        link = await through_relay(lambda relay: None)
        try:
            blobs = [os.urandom(n) for n in sizes]
            link.comm.send(note(*[dumps(np.frombuffer(b, "u1")) for b in blobs], *blobs))
            for n in sizes:                     # one batch each
                link.server.send(note(os.urandom(n)))
                await asyncio.sleep(0)
            await link.until(lambda: link.got["server"] and
                             len(link.messages("client")) == len(sizes))
            [f] = link.messages("server")
            assert [loads(x).tobytes() for x in f[:len(sizes)]] == blobs
            assert f[len(sizes):] == blobs
            assert [len(f[0]) for f in link.messages("client")] == sizes
        finally:
            link.finish()
    asyncio.run(asyncio.wait_for(main(), 3 * WAIT))


def test_code_injected_by_a_relay_between_a_client_and_a_real_scheduler_never_runs(tmp_path):
    """The attack of the issue, end to end: a client with the right token connects to a relay
    by mistake; the relay forwards the handshake to the scheduler, then sends a function and
    a task of its own on the authenticated upstream socket. The scheduler drops the connection
    instead of running it on a worker."""
    target = tmp_path / "pwned"
    evil = forged([m.Hello("client", {"id": "relay"}),
                   m.Function("evil", pickle.dumps(os.mkdir)),
                   m.Submit([m.TaskSpec("evil-1", "evil", [str(target)], None, [], None)])])

    def inject(relay):
        relay.up.sendall(evil)
        relay.answer = relay.up.recv(1 << 16)   # b"": the scheduler dropped the connection

    with LocalCluster(n_workers=1, processes=True) as cluster:
        relay = Relay(cluster.scheduler_address, inject)
        try:
            with pytest.raises(Exception):       # the client's connection went down with it
                Client(relay.address, token=cluster.token, timeout=5).close()
        finally:
            relay.stop()
        assert relay.answer == b"", "the scheduler accepted the relay's batch"
        with Client(cluster) as client:             # everyone else is still served
            assert client.submit(sum, [1, 2]).result(timeout=WAIT) == 3
        assert not target.exists()
