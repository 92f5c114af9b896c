"""The transport interface: a Comm carries batches of messages between two peers.

A Comm is callback driven, for speed: the owner sets ``on_batch(batch)`` and
``on_close(reason)``. ``send(msg)`` queues a message; everything queued during one event-loop
tick leaves as one batch (one write), so nothing waits on a timer and small messages share
syscalls under load.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from ..errors import ConnectError, ProtocolError
from ..protocol.framing import encode
from ..protocol.messages import Message

logger = logging.getLogger("nbcluster.comm")

MAX_FRAME = 2**40              # one frame, after authentication
MAX_FRAMES = 1_000_000         # frames in one batch


class Comm:
    """One end of a connection. Subclasses implement ``_write_frames`` and ``_abort``."""

    def __init__(self, local: str, peer: str) -> None:
        self.local_address = local
        self.peer_address = peer
        self._early: list = []   # batches that arrived before start()
        self.on_batch: Callable[[list], None] = self._early.append
        self.on_close: Callable[[str], None] = _ignore
        self.closed = False
        self.close_reason = ""
        self._pending: list = []
        self._loop = asyncio.get_running_loop()
        self.extra: dict = {}

    def start(self, on_batch: Callable[[list], None], on_close: Callable[[str], None]) -> None:
        """Set the callbacks and deliver any batch that arrived before."""
        self.on_batch, self.on_close = on_batch, on_close
        early, self._early = self._early, []
        for batch in early:
            self._deliver(batch)
        if self.closed:
            on_close(self.close_reason)

    def send(self, msg: Message) -> None:
        if self.closed:
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(msg)

    def send_many(self, msgs: list[Message]) -> None:
        if self.closed or not msgs:
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.extend(msgs)

    def send_frame(self, msgs: list[Message]) -> None:
        """Send what is pending and ``msgs`` now, as one frame that later messages do not
        join (a receiver decodes a frame whole: this bounds what it holds at once)."""
        self.send_many(msgs)
        self._flush()

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch or self.closed:
            return
        try:
            frames = encode(batch)
        except Exception as e:  # a bug or unencodable value: fail loudly, keep the process
            logger.exception("cannot encode a batch for %s: %s", self.peer_address, e)
            self.abort(f"cannot encode a batch: {e!r}")
            return
        self._write_frames(frames)

    def _deliver(self, batch: list) -> None:
        try:
            self.on_batch(batch)
        except ProtocolError as e:
            logger.warning("closing connection from %s: %s", self.peer_address, e)
            self.abort(f"protocol error: {e}")
        except Exception as e:  # malformed fields that slipped past the shape checks
            logger.exception("closing connection from %s after an error", self.peer_address)
            self.abort(f"error handling a message: {e!r}")

    def abort(self, reason: str = "closed") -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self._abort()
        try:
            self.on_close(reason)
        except Exception:
            logger.exception("error in on_close for %s", self.peer_address)

    def close(self) -> None:
        """Flush what is queued, then close."""
        if self.closed:
            return
        self._flush()
        self.abort("closed locally")

    def _write_frames(self, frames: list) -> None:
        raise NotImplementedError

    def _abort(self) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.local_address} -> {self.peer_address}>"


def _ignore(reason: str) -> None:
    pass


class Listener:
    address: str

    def stop(self) -> None:
        raise NotImplementedError


def parse_address(address: str) -> tuple[str, str]:
    if not isinstance(address, str) or "://" not in address:
        raise ConnectError(f"not an address: {address!r} (expected tcp://HOST:PORT or inproc://NAME)")
    scheme, rest = address.split("://", 1)
    if scheme not in ("tcp", "tls", "inproc"):
        raise ConnectError(f"unknown transport {scheme!r} in {address!r} "
                           "(use tcp://, tls:// or inproc://)")
    return scheme, rest


def _ssl_for(scheme: str, address: str, security, server: bool):
    """The SSL context for an address, or None; refuses plain TCP when TLS is required."""
    if scheme == "tls":
        if security is None or not security.tls:
            raise ConnectError(f"{address} is a TLS address: give a Security with certificates "
                               "(Security.temporary() makes one)")
        return security.server_context() if server else security.client_context()
    if scheme == "tcp" and security is not None and security.require_encryption:
        raise ConnectError(f"refusing plain {address}: this cluster requires TLS (use tls://)")
    return None


async def connect(address: str, token: str | None, timeout: float = 10.0,
                  security=None) -> Comm:
    scheme, rest = parse_address(address)
    if scheme in ("tcp", "tls"):
        from . import tcp

        ssl = _ssl_for(scheme, address, security, server=False)
        return await tcp.connect(rest, token, timeout, ssl=ssl, scheme=scheme)
    from . import inproc

    return await inproc.connect(rest, token)


async def listen(address: str, on_comm: Callable[[Comm], Awaitable[None] | None],
                 token: str | None, security=None, reuse_buffers: bool = True) -> Listener:
    """``reuse_buffers=False``: large frames arriving here get memory of their own, freed with
    the last reference to them, instead of memory kept warm for the next one (see
    ``buffers``): for a server that holds what it receives rather than passing it on."""
    scheme, rest = parse_address(address)
    if scheme in ("tcp", "tls"):
        from . import tcp

        ssl = _ssl_for(scheme, address, security, server=True)
        return await tcp.listen(rest, on_comm, token, ssl=ssl, scheme=scheme,
                                reuse_buffers=reuse_buffers)
    from . import inproc

    return await inproc.listen(rest, on_comm, token)
