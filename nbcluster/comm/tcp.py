"""TCP transport: asyncio BufferedProtocol, authenticated handshake, sealed batches,
zero-copy large frames (the sending half is in ``tcp_send``).

Small reads land in one reusable buffer; a frame larger than ``LARGE`` gets memory of its own
(reused warm memory when it is large, see ``buffers``) and the socket reads straight into it, so a
200 MB array is copied once by the kernel and never again in Python. Every batch is checked
against its seal (``seal``) before it is decoded; a large frame is checked piece by piece as
it arrives.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl as ssl_module
import struct

from ..errors import AuthenticationError, ConnectError, ProtocolError
from ..protocol.framing import decode
from . import auth
from .buffers import receive_buffer
from .core import MAX_FRAME, MAX_FRAMES, Comm, Listener
from .pending import Pending
from .seal import LARGE, TAG, Batch, Direction, check
from .tcp_send import CHUNK, TCPComm

logger = logging.getLogger("nbcluster.comm")

_U32 = struct.Struct("<I")

RECEIVE_BUFFER = 256 * 1024   # once authenticated; before, a few hundred bytes will do
HANDSHAKE_BUFFER = 256
HANDSHAKE_SECONDS = 5.0   # a peer that has not proven the token by then is dropped
MAX_PENDING = 256         # connections still proving the token; beyond, the oldest goes


class _Protocol(asyncio.BufferedProtocol):
    """Handshake, then frame parsing; delivers each batch to its Comm once its seal checks
    out (a failed check closes the connection, as any bad input does)."""

    def __init__(self, token: str | None, server: bool, on_ready, scheme: str = "tcp",
                 pending: Pending | None = None, reuse_buffers: bool = True) -> None:
        self.token = token
        self.reuse_buffers = reuse_buffers   # large frames in pooled memory (``buffers``)
        self.pending = pending            # the listener's connections not yet authenticated
        self.scheme = scheme
        self.server = server
        self.on_ready = on_ready          # called with the Comm or an exception
        self.transport: asyncio.Transport | None = None
        self.comm: TCPComm | None = None
        self._buf = bytearray(HANDSHAKE_BUFFER)   # no memory for a peer before its proof
        self._n = 0                       # bytes in _buf
        self._pos = 0                     # parse position in _buf
        self._phase = "hello"
        self._need = auth.CLIENT_PROOF if server else auth.SERVER_HELLO
        self._nonce = b""
        self._keys: tuple[bytes, bytes] = (b"", b"")   # (to receive, to send) once proven
        self._opener: Direction | None = None
        self._batch: Batch | None = None  # the seal of the batch being read
        self._lengths: list[int] = []
        self._frames: list = []
        self._large: bytearray | memoryview | None = None   # the large frame being read
        self._large_pos = 0
        self._large_sealed = 0            # its bytes checked so far (whole pieces)
        self.peer = ""

    # -- connection
    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # buffer sizes are left to the kernel: setting them turns its tuning off
            except OSError:
                pass
        transport.set_write_buffer_limits(high=2 * CHUNK, low=CHUNK // 2)
        peername = transport.get_extra_info("peername") or ("?", 0)
        self.peer = f"{self.scheme}://{peername[0]}:{peername[1]}"
        if self.server:
            if self.pending is not None:
                self.pending.add(self)
            hello, self._nonce = auth.server_hello()
            transport.write(hello)

    def pause_writing(self) -> None:
        if self.comm is not None:
            self.comm.paused = True

    def resume_writing(self) -> None:
        if self.comm is not None:
            self.comm.paused = False
            self.comm.pump()

    def connection_lost(self, exc) -> None:
        if self.pending is not None:
            self.pending.discard(self)
        if self.comm is not None:
            self.comm.abort(f"connection lost: {exc}" if exc else "connection closed by peer")
        elif self.on_ready is not None:
            if not self.server and self._phase == "proof":
                # the server drops a client whose proof fails: the token is wrong or missing
                self._fail(AuthenticationError("wrong or missing token (the server closed the "
                                               "connection after checking it)"))
            else:
                self._fail(ConnectError(f"{self.peer} closed the connection during the handshake"))

    def _fail(self, exc: Exception) -> None:
        cb, self.on_ready = self.on_ready, None
        if self.transport is not None:
            self.transport.close()
        if cb is not None:
            cb(exc)

    # -- reading
    def get_buffer(self, sizehint: int):
        if self._large is not None:
            return memoryview(self._large)[self._large_pos:]
        if self._n == len(self._buf):
            if self._pos:
                rest = self._buf[self._pos:self._n]
                self._buf[:len(rest)] = rest
                self._n, self._pos = len(rest), 0
            else:
                self._buf.extend(bytes(len(self._buf)))
        return memoryview(self._buf)[self._n:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._large is not None:
            self._large_pos += nbytes
            if len(self._large) > LARGE:   # seal each piece while it is in the cache
                assert self._batch is not None
                self._large_sealed = self._batch.pieces(memoryview(self._large),
                                                        self._large_sealed, self._large_pos)
            if self._large_pos == len(self._large):
                frame, self._large = self._large, None
                try:
                    if len(frame) <= LARGE:
                        self._seal_frame(frame)
                    self._frame_done(frame)
                except ProtocolError as e:   # as in _parse: the peer sent a bad batch
                    self._refuse(e)
                    return
                self._parse()
            return
        self._n += nbytes
        self._parse()

    def _avail(self) -> int:
        return self._n - self._pos

    def _take(self, n: int) -> bytes:
        data = bytes(self._buf[self._pos:self._pos + n])
        self._pos += n
        return data

    def _parse(self) -> None:
        try:
            while self._step():
                pass
        except (ProtocolError, ValueError) as e:
            self._refuse(e)
            return
        if self._pos == self._n:
            self._pos = self._n = 0

    def _refuse(self, e: Exception) -> None:
        reason = f"{self.peer}: {e}"
        if self.comm is not None:
            logger.warning("closing connection: %s", reason)
            self.comm.abort(str(e))
        else:
            logger.warning("refused connection from %s", reason)
            err = AuthenticationError if "token" in str(e) else ConnectError
            self._fail(err(str(e)))

    def _step(self) -> bool:
        phase = self._phase
        if phase == "count":
            if self._avail() < 4:
                return False
            (count,) = _U32.unpack_from(self._buf, self._pos)
            if not 1 <= count <= MAX_FRAMES:
                raise ProtocolError(f"bad frame count {count}")
            assert self._opener is not None   # frames are parsed only after the handshake
            self._batch = self._opener.batch()
            self._batch.feed(self._take(4))
            self._need = count
            self._phase = "lengths"
            return True
        if phase == "lengths":
            if self._avail() < 8 * self._need + TAG:
                return False
            lengths = struct.unpack_from(f"<{self._need}Q", self._buf, self._pos)
            assert self._batch is not None
            self._batch.feed(self._take(8 * self._need))
            check(self._take(TAG), self._batch.header_tag(), "header")   # before any allocation
            for n in lengths:
                if n > MAX_FRAME:
                    raise ProtocolError(f"frame of {n} bytes is over the limit")
            self._lengths = list(lengths)
            self._frames = []
            self._phase = "frames"
            return True
        if phase == "tag":
            if self._avail() < TAG:
                return False
            assert self._batch is not None
            check(self._take(TAG), self._batch.tag(), "batch")
            frames, self._frames = self._frames, []
            self._phase = "count"
            batch = decode(frames)
            assert self.comm is not None
            self.comm._deliver(batch)
            return True
        if phase == "frames":
            i = len(self._frames)
            size = self._lengths[i]
            avail = self._avail()
            if avail >= size:
                frame = self._take(size)
                self._seal_frame(frame)
                self._frame_done(frame)
                return True
            if size - avail >= LARGE:
                target = receive_buffer(size) if self.reuse_buffers else bytearray(size)
                target[:avail] = self._buf[self._pos:self._n]
                self._pos = self._n = 0
                self._large, self._large_pos, self._large_sealed = target, avail, 0
                if size > LARGE:
                    assert self._batch is not None
                    self._large_sealed = self._batch.pieces(memoryview(target), 0, avail)
            return False
        return self._handshake_step()

    def _seal_frame(self, frame) -> None:
        """Feed a frame that arrived whole (the pieces of one read in place are fed as they
        arrive)."""
        assert self._batch is not None
        n = len(frame)
        if n <= LARGE:
            self._batch.frame(frame, n)
        else:
            self._batch.pieces(memoryview(frame), 0, n)

    def _frame_done(self, frame) -> None:
        self._frames.append(frame)
        if len(self._frames) == len(self._lengths):
            self._phase = "tag"          # nothing is decoded before the batch's seal is checked

    def _handshake_step(self) -> bool:
        if self._avail() < self._need:
            return False
        data = self._take(self._need)
        assert self.transport is not None   # connection_made came first
        if self.server:
            proof = auth.check_client_proof(self.token, self._nonce, data)
            c2s, s2c = auth.session_keys(self.token, self._nonce, data[-auth.NONCE:])
            self._keys = (c2s, s2c)
            self.transport.write(proof)
            self._start()
        elif self._phase == "hello":
            reply, self._nonce = auth.client_proof(self.token, data)
            c2s, s2c = auth.session_keys(self.token, data[-auth.NONCE:], self._nonce)
            self._keys = (s2c, c2s)
            self.transport.write(reply)
            self._phase, self._need = "proof", auth.SERVER_PROOF
        else:
            try:
                auth.check_server_proof(self.token, self._nonce, data)
            except ValueError as e:
                raise ValueError(f"wrong token for {self.peer}: {e}") from None
            self._start()
        return True

    def _start(self) -> None:
        assert self.transport is not None
        if self.pending is not None:
            self.pending.discard(self)
        if len(self._buf) < RECEIVE_BUFFER:   # a new one: the transport may hold a view
            rest = self._buf[self._pos:self._n]
            self._buf = bytearray(RECEIVE_BUFFER)
            self._buf[:len(rest)] = rest
            self._pos, self._n = 0, len(rest)
        sockname = self.transport.get_extra_info("sockname") or ("?", 0)
        receive, send = self._keys
        self._opener = Direction(receive)
        self.comm = TCPComm(self, f"{self.scheme}://{sockname[0]}:{sockname[1]}", self.peer,
                            Direction(send))
        self._phase = "count"
        cb, self.on_ready = self.on_ready, None
        cb(self.comm)


class TCPListener(Listener):
    def __init__(self, server: asyncio.AbstractServer, address: str,
                 pending: Pending | None = None) -> None:
        self.server = server
        self.address = address
        self.pending = pending   # connections still proving the token

    def stop(self) -> None:
        self.server.close()


def _split(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    host = host.strip("[]")
    digits = port.lstrip("0") or "0"      # int() of 5,000 digits would raise ValueError
    if not host or not (port.isascii() and port.isdigit()) or len(digits) > 5 \
            or int(digits) > 65535:
        raise ConnectError(f"bad address tcp://{hostport[:80]} (expected tcp://HOST:PORT, "
                           "PORT 0 to 65535)")
    return host, int(digits)


async def connect(hostport: str, token: str | None, timeout: float, ssl=None,
                  scheme: str = "tcp") -> Comm:
    host, port = _split(hostport)
    loop = asyncio.get_running_loop()
    ready: asyncio.Future = loop.create_future()

    def on_ready(result):
        if not ready.done():
            ready.set_result(result)

    address = f"{scheme}://{hostport}"
    try:
        transport, _ = await asyncio.wait_for(
            loop.create_connection(lambda: _Protocol(token, False, on_ready, scheme), host, port,
                                   ssl=ssl), timeout)
    except asyncio.TimeoutError:
        raise ConnectError(f"timed out connecting to {address} after {timeout:g} s") from None
    except ssl_module.SSLError as e:
        raise ConnectError(f"TLS handshake with {address} failed: {e.reason or e}") from None
    except OSError as e:
        raise ConnectError(f"cannot connect to {address}: {e.strerror or e}") from None
    try:
        result = await asyncio.wait_for(ready, timeout)
    except asyncio.TimeoutError:
        transport.close()
        raise ConnectError(f"{address} accepted the connection but did not answer the "
                           f"handshake within {timeout:g} s (is it an nbcluster server?)") from None
    if isinstance(result, AuthenticationError):
        raise AuthenticationError(f"{address} refused this connection: {result}") from None
    if isinstance(result, Exception):
        raise ConnectError(f"cannot connect to {address}: {result}") from None
    return result


async def listen(hostport: str, on_comm, token: str | None, ssl=None,
                 scheme: str = "tcp", handshake_seconds: float = HANDSHAKE_SECONDS,
                 max_pending: int = MAX_PENDING, reuse_buffers: bool = True) -> Listener:
    host, port = _split(hostport)
    loop = asyncio.get_running_loop()

    pending = Pending(loop, handshake_seconds, max_pending)

    def factory():
        def on_ready(result):
            if isinstance(result, Comm):
                coro = on_comm(result)
                if coro is not None:
                    loop.create_task(coro)

        return _Protocol(token, True, on_ready, scheme, pending, reuse_buffers)

    try:
        server = await loop.create_server(factory, host, port, reuse_address=True, backlog=1024,
                                          ssl=ssl, ssl_handshake_timeout=(
                                              handshake_seconds if ssl is not None else None))
    except OSError as e:
        raise ConnectError(f"cannot listen on {scheme}://{hostport}: {e.strerror or e}") from None
    sock = server.sockets[0]
    bound_host, bound_port = sock.getsockname()[:2]
    return TCPListener(server, f"{scheme}://{bound_host}:{bound_port}", pending)
