"""The sending half of a TCP connection: sealed batches, large frames written without copies."""

from __future__ import annotations

from collections import deque
from typing import Any

from ..protocol.framing import frame_header
from .core import Comm
from .seal import LARGE, PIECE, Batch, Direction

CHUNK = PIECE             # large frames are written (and sealed) in pieces of this size


class _Large:
    """A frame over LARGE still being written, and the seal of its batch."""

    __slots__ = ("view", "seal")

    def __init__(self, view: memoryview, seal: Batch) -> None:
        self.view, self.seal = view, seal


class TCPComm(Comm):
    """Writes go through a queue: small pieces are joined into one write (one syscall); large
    frames are fed to the transport a chunk at a time as its buffer drains, because asyncio's
    transport would otherwise copy the whole frame into its buffer and shift it on every send.
    Each chunk is sealed just before it is written, while it is in the cache."""

    def __init__(self, protocol: Any, local: str, peer: str, seal: Direction) -> None:
        super().__init__(local, peer)
        self._protocol = protocol
        self._seal = seal
        self._outq: deque = deque()
        self.paused = False
        self._close_when_written = False   # close() with large frames still queued

    def _write_frames(self, frames: list) -> None:
        transport = self._protocol.transport
        if transport is None or transport.is_closing():
            return
        header = frame_header(frames)
        seal = self._seal.batch()
        seal.feed(header)
        small = bytearray(header)
        small += seal.header_tag()
        outq = self._outq
        large = False
        for f in frames:
            n = memoryview(f).nbytes
            if n <= LARGE:
                small += f
                seal.frame(f, n)
            else:
                outq.append(small)
                outq.append(_Large(memoryview(f).cast("B"), seal))
                small = bytearray()
                large = True
        if large:                     # the tag once the large frames' pieces are sealed
            outq.append(small)
            outq.append(seal)
        else:
            small += seal.tag()
            outq.append(small)
        self.pump()

    def pump(self) -> None:
        transport = self._protocol.transport
        outq = self._outq
        while outq and not self.paused:
            if transport is None or transport.is_closing():
                outq.clear()
                return
            piece = outq[0]
            kind = type(piece)
            if kind is _Large:
                view = piece.view
                chunk = view[:CHUNK]
                piece.seal.piece(chunk)
                transport.write(chunk)
                if len(view) > CHUNK:
                    piece.view = view[CHUNK:]
                else:
                    outq.popleft()
            elif kind is Batch:
                outq.popleft()
                transport.write(piece.tag())
            elif len(piece) > CHUNK:
                transport.write(piece[:CHUNK])
                outq[0] = piece[CHUNK:]
            else:
                outq.popleft()
                if piece:
                    transport.write(piece)
        if not outq and self._close_when_written and transport is not None:
            transport.close()

    def close(self) -> None:
        """Flush what is queued, then close: frames still waiting for the socket go first."""
        if not self.closed:
            self._close_when_written = True
            super().close()

    def _abort(self) -> None:
        transport = self._protocol.transport
        self._pending = []
        if transport is not None:
            if self._close_when_written and self._outq and not transport.is_closing():
                return                     # pump closes the transport once they are written
            self._outq.clear()
            transport.close()
