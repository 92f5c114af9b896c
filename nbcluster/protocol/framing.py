"""Batches of messages <-> frames <-> bytes.

A batch is a list of messages; a message is a list ``[op, *fields]`` (ops in ``messages``).
The first frame is the msgpack encoding of the batch. :class:`Serialized` values inside it are
msgpack extension objects that point at further frames holding their buffers, so large user
data is never copied into the control frame.

On a byte stream a batch is: ``<I`` frame count, ``<Q`` length of each frame, the frames.
"""

from __future__ import annotations

import struct

import msgpack

from ..errors import ProtocolError
from .serialize import Serialized

EXT_INLINE = 1  # pickle bytes inside the ext data; buffers in frames
EXT_FRAMED = 2  # pickle bytes in a frame of their own too
INLINE_LIMIT = 64 * 1024

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_RANGE = struct.Struct("<II")


def encode(batch: list) -> list:
    """Encode a batch of messages as a list of frames (bytes-like)."""
    frames: list = [b""]

    def default(obj):
        if type(obj) is Serialized:
            start = len(frames)
            frames.extend(obj.buffers)
            if len(obj.header) <= INLINE_LIMIT:
                return msgpack.ExtType(EXT_INLINE, _RANGE.pack(start, len(obj.buffers)) + bytes(obj.header))
            frames.append(obj.header)
            return msgpack.ExtType(EXT_FRAMED, _RANGE.pack(start, len(obj.buffers)))
        if isinstance(obj, (set, frozenset, tuple)):
            return list(obj)
        raise TypeError(f"cannot encode {type(obj).__name__} in a control message")

    frames[0] = msgpack.packb(batch, default=default, use_bin_type=True)
    return frames


def decode(frames: list) -> list:
    """Decode frames made by :func:`encode` into the batch of messages."""
    if not frames:
        raise ProtocolError("empty batch")
    n = len(frames)

    def ext_hook(code, data):
        start, count = _RANGE.unpack_from(data)
        end = start + count
        if code == EXT_INLINE and 1 <= start <= end <= n:
            return Serialized(data[8:], frames[start:end])
        if code == EXT_FRAMED and 1 <= start <= end < n:
            return Serialized(frames[end], frames[start:end])
        raise ProtocolError(f"bad extension object {code} for {n} frames")

    try:
        batch = msgpack.unpackb(frames[0], ext_hook=ext_hook, raw=False, strict_map_key=False)
    except ProtocolError:
        raise
    except Exception as e:
        raise ProtocolError(f"undecodable control frame: {e!r}") from e
    if type(batch) is not list:
        raise ProtocolError(f"a batch must be a list, got {type(batch).__name__}")
    return batch


def frame_header(frames: list) -> bytes:
    """The stream prefix for ``frames``: count and lengths."""
    lengths = [memoryview(f).nbytes for f in frames]
    return _U32.pack(len(frames)) + struct.pack(f"<{len(frames)}Q", *lengths)
