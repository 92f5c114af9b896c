"""Batches of messages <-> frames <-> bytes.

A batch is a list of messages (typed records of ``messages``, each encoded as a msgpack array
``[op, *fields]``).
The first frame is the msgpack encoding of the batch. :class:`Serialized` values inside it are
msgpack extension objects that point at further frames holding their buffers, so large user
data is never copied into the control frame.

On a byte stream a batch is: ``<I`` frame count, ``<Q`` length of each frame, the frames.
"""

from __future__ import annotations

import struct
import threading
from typing import Any

import msgspec

from ..errors import ProtocolError
from .messages import AnyMessage, Message, explain
from .serialize import Serialized

EXT_INLINE = 1  # pickle bytes inside the ext data; buffers in frames
EXT_FRAMED = 2  # pickle bytes in a frame of their own too
INLINE_LIMIT = 64 * 1024

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_RANGE = struct.Struct("<II")

# The frames of the batch being encoded or decoded on this thread: the hooks below, called
# by msgspec for each Serialized value, put buffers into them or take them out.
_frames = threading.local()


def _enc_hook(obj: Any) -> Any:
    if type(obj) is Serialized:
        frames = _frames.out
        start = len(frames)
        frames.extend(obj.buffers)
        if len(obj.header) <= INLINE_LIMIT:
            return msgspec.msgpack.Ext(EXT_INLINE,
                                       _RANGE.pack(start, len(obj.buffers)) + bytes(obj.header))
        frames.append(obj.header)
        return msgspec.msgpack.Ext(EXT_FRAMED, _RANGE.pack(start, len(obj.buffers)))
    raise TypeError(f"cannot encode {type(obj).__name__} in a control message")


def _ext_hook(code: int, data: memoryview) -> Serialized:
    frames = _frames.into
    n = len(frames)
    if len(data) < _RANGE.size:
        raise ProtocolError(f"bad extension object {code}: {len(data)} bytes")
    start, count = _RANGE.unpack_from(data)
    end = start + count
    if code == EXT_INLINE and 1 <= start <= end <= n:
        # most pickles have no buffers: share one empty sequence (a list each is 56 bytes
        # for every task the scheduler holds)
        return Serialized(bytes(data[_RANGE.size:]), frames[start:end] if count else _NONE)
    if code == EXT_FRAMED and 1 <= start <= end < n:
        return Serialized(frames[end], frames[start:end])
    raise ProtocolError(f"bad extension object {code} for {n} frames")


_NONE: Any = ()
_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_decoder = msgspec.msgpack.Decoder(list[AnyMessage], ext_hook=_ext_hook)


def encode(batch: list[Message]) -> list[Any]:
    """Encode a batch of messages as a list of frames (bytes-like)."""
    frames: list[Any] = [b""]
    _frames.out = frames
    try:
        frames[0] = _encoder.encode(batch)
    finally:
        _frames.out = None
    return frames


def decode(frames: list[Any]) -> list[Message]:
    """Decode frames made by :func:`encode` into the batch of messages, every field checked
    against its declaration; ProtocolError names the first message and field that is not."""
    if not frames:
        raise ProtocolError("empty batch")
    _frames.into = frames
    try:
        batch: list[Message] = _decoder.decode(frames[0])
    except ProtocolError:
        raise
    except msgspec.ValidationError as e:
        raise ProtocolError(f"bad message: {explain(_untyped(frames[0]), e)}") from None
    except Exception as e:
        raise ProtocolError(f"undecodable control frame: {e!r}") from e
    finally:
        _frames.into = None
    return batch


def _untyped(frame: Any) -> object:
    """The control frame as plain values, to name what failed (extensions left as they are)."""
    try:
        return msgspec.msgpack.decode(frame)
    except Exception:
        return None


def frame_header(frames: list[Any]) -> bytes:
    """The stream prefix for ``frames``: count and lengths."""
    lengths = [memoryview(f).nbytes for f in frames]
    return _U32.pack(len(frames)) + struct.pack(f"<{len(frames)}Q", *lengths)
