"""In-memory transport for clusters inside one process.

Batches are encoded to frames and decoded on the other side, exactly as over TCP, so the same
code paths run; only the socket is missing. Each end may live on a different event loop.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging

from ..errors import AuthenticationError, ConnectError, ProtocolError
from ..protocol.framing import decode
from .core import Comm, Listener

logger = logging.getLogger("nbcluster.comm")
_listeners: dict[str, "InprocListener"] = {}
_ids = itertools.count(1)


class InprocComm(Comm):
    def __init__(self, local: str, peer: str) -> None:
        super().__init__(local, peer)
        self.other: InprocComm | None = None

    def _write_frames(self, frames: list) -> None:
        other = self.other
        if other is None or other.closed:
            return
        frames = [bytes(f) if not isinstance(f, (bytes, bytearray)) else f for f in frames]
        if other._loop is self._loop:
            other._loop.call_soon(other._receive, frames)
        else:
            try:
                other._loop.call_soon_threadsafe(other._receive, frames)
            except RuntimeError:   # the other loop is closed
                pass

    def _receive(self, frames: list) -> None:
        if self.closed:
            return
        try:
            batch = decode(frames)
        except ProtocolError as e:   # as over TCP: the peer sent what no record describes
            logger.warning("closing connection: %s: %s", self.peer_address, e)
            self.abort(str(e))
            return
        self._deliver(batch)

    def _abort(self) -> None:
        other, self.other = self.other, None
        if other is None:
            return
        if other._loop is self._loop:
            other._loop.call_soon(other.abort, "connection closed by peer")
        else:
            try:
                other._loop.call_soon_threadsafe(other.abort, "connection closed by peer")
            except RuntimeError:
                pass


class InprocListener(Listener):
    def __init__(self, name: str, on_comm, token, loop) -> None:
        self.name = name
        self.address = f"inproc://{name}"
        self.on_comm = on_comm
        self.token = token
        self.loop = loop

    def stop(self) -> None:
        _listeners.pop(self.name, None)


async def listen(name: str, on_comm, token: str | None) -> Listener:
    if not name or name.endswith("/"):
        name = f"{name}{next(_ids)}"
    if name in _listeners:
        raise ConnectError(f"inproc://{name} is already in use")
    listener = InprocListener(name, on_comm, token, asyncio.get_running_loop())
    _listeners[name] = listener
    return listener


async def connect(name: str, token: str | None) -> Comm:
    listener = _listeners.get(name)
    if listener is None:
        raise ConnectError(f"nothing listens on inproc://{name}")
    if not hmac.compare_digest((listener.token or "").encode(), (token or "").encode()):
        raise AuthenticationError(f"inproc://{name} refused this connection: wrong or missing token")
    local_name = f"inproc://client-{next(_ids)}"
    mine = InprocComm(local_name, listener.address)
    created: asyncio.Future = asyncio.get_running_loop().create_future()
    my_loop = asyncio.get_running_loop()

    def make_theirs():
        theirs = InprocComm(listener.address, local_name)
        theirs.other, mine.other = mine, theirs
        my_loop.call_soon_threadsafe(created.set_result, None)
        coro = listener.on_comm(theirs)
        if coro is not None:
            listener.loop.create_task(coro)

    if listener.loop is my_loop:
        make_theirs()
    else:
        listener.loop.call_soon_threadsafe(make_theirs)
    await created
    return mine
