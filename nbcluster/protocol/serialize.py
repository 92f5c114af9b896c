"""Turning user objects into bytes and back.

User data travels as :class:`Serialized`: a pickle stream (``header``) plus the out-of-band
buffers of pickle protocol 5, so a large numpy array is sent as its own frame with no copy.
Values of a few plain types (small ints, floats, str, bool, None) skip pickle and travel as
msgpack values: most small results and arguments never touch pickle at all.

References to futures inside arguments are pickled as persistent ids, which finds a call's
dependencies in the same pass that pickles it, and lets the worker substitute values while
unpickling.
"""

from __future__ import annotations

import io
import pickle
from typing import Any, Callable, Iterable

import cloudpickle

from ..errors import PicklingError, UnpicklingError

PROTOCOL = 5
_PLAIN = (int, float, str, bool, type(None))
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


class TaskRef:
    """Base of anything that stands for a task's result (the client's Future)."""

    __slots__ = ()
    key: str


class Serialized:
    """A pickled object: the pickle bytes and its out-of-band buffers."""

    __slots__ = ("header", "buffers")

    def __init__(self, header: bytes | memoryview, buffers: list[Any]) -> None:
        self.header = header
        self.buffers = buffers

    @property
    def nbytes(self) -> int:
        return len(self.header) + sum(memoryview(b).nbytes for b in self.buffers)

    def __repr__(self) -> str:
        return f"<Serialized {self.nbytes} bytes, {len(self.buffers)} buffers>"


def is_plain(value: Any) -> bool:
    """True when msgpack can carry ``value`` exactly (no pickle needed)."""
    t = type(value)
    if t is int:
        return bool(_INT_MIN <= value <= _INT_MAX)
    if t is str:
        # msgpack carries UTF-8 only: a lone surrogate (os.fsdecode of odd bytes) is pickled
        return len(value) < 65536 and (value.isascii() or _utf8(value))
    return t is float or t is bool or value is None


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def all_plain(values: Iterable[Any]) -> bool:
    for v in values:
        if not is_plain(v):
            return False
    return True


class _RefPickler(cloudpickle.Pickler):   # type: ignore[misc]   # cloudpickle has no types
    """Pickles with cloudpickle and records every TaskRef it meets as a dependency."""

    def __init__(self, file: io.BytesIO, refs: list[str],
                 buffer_callback: Callable[[pickle.PickleBuffer], None]) -> None:
        super().__init__(file, protocol=PROTOCOL, buffer_callback=buffer_callback)
        self._refs = refs

    def persistent_id(self, obj: Any) -> str | None:
        if isinstance(obj, TaskRef):
            self._refs.append(obj.key)
            return obj.key
        return None


def describe(obj: Any) -> str:
    try:
        text = repr(obj)
    except Exception:
        text = object.__repr__(obj)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} of type {type(obj).__module__}.{type(obj).__qualname__}"


def _find_unpicklable(obj: Any, depth: int = 0) -> Any:
    """Best effort: the innermost part of ``obj`` that fails to pickle, for error messages."""
    if depth < 4:
        if isinstance(obj, dict):
            parts = list(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            parts = list(obj)
        else:
            parts = []
        for part in parts:
            if isinstance(part, TaskRef):   # pickled by key (persistent id), never the culprit
                continue
            try:
                cloudpickle.dumps(part, protocol=PROTOCOL)
            except Exception:
                return _find_unpicklable(part, depth + 1)
    return obj


def dumps(obj: Any, refs: list[str] | None = None, what: str = "object") -> Serialized:
    """Pickle ``obj``; keys of TaskRefs met inside are appended to ``refs``."""
    buffers: list[pickle.PickleBuffer] = []
    try:
        if refs is None:
            try:
                header = pickle.dumps(obj, protocol=PROTOCOL, buffer_callback=buffers.append)
            except Exception:
                buffers.clear()
                header = cloudpickle.dumps(obj, protocol=PROTOCOL, buffer_callback=buffers.append)
        else:
            f = io.BytesIO()
            _RefPickler(f, refs, buffers.append).dump(obj)
            header = f.getvalue()
    except Exception as e:
        culprit = _find_unpicklable(obj)
        raise PicklingError(f"cannot pickle {what}: {describe(culprit)}: {e}") from e
    return Serialized(header, [b.raw() for b in buffers])


class _RefUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, buffers: list[Any], resolve: Callable[[str], Any]) -> None:
        super().__init__(file, buffers=buffers)
        self._resolve = resolve

    def persistent_load(self, pid: Any) -> Any:
        return self._resolve(pid)


def loads(ser: Serialized, resolve: Callable[[str], Any] | None = None) -> Any:
    """Unpickle; persistent ids (task keys) are replaced by ``resolve(key)``."""
    try:
        if resolve is None:
            return pickle.loads(ser.header, buffers=ser.buffers)
        return _RefUnpickler(io.BytesIO(ser.header), ser.buffers, resolve).load()
    except Exception as e:
        raise UnpicklingError(f"cannot unpickle {len(ser.header)} byte object: {e!r}") from e


def dumps_function(fn: Callable[..., Any]) -> bytes:
    try:
        blob: bytes = cloudpickle.dumps(fn, protocol=PROTOCOL)
        return blob
    except Exception as e:
        raise PicklingError(f"cannot pickle function {describe(fn)}: {e}") from e


def loads_function(blob: bytes) -> Callable[..., Any]:
    fn: Callable[..., Any] = pickle.loads(blob)
    return fn


def dump_value(value: Any, what: str = "result") -> Any:
    """A value as it travels: itself if plain, else Serialized."""
    if is_plain(value):
        return value
    return dumps(value, what=what)


def load_value(value: Any) -> Any:
    if type(value) is Serialized:
        return loads(value)
    return value


def sizeof(value: Any) -> int:
    """Cheap estimate of the bytes a value holds in memory."""
    nbytes = getattr(value, "nbytes", None)
    if type(nbytes) is int:
        return nbytes
    t = type(value)
    if t in (list, tuple, set, frozenset):
        n = len(value)
        if n == 0:
            return 56
        sample = list(value)[:10] if t in (set, frozenset) else value[:10]
        return 56 + 8 * n + n * sum(sizeof(x) for x in sample) // len(sample)
    if t is dict:
        n = len(value)
        if n == 0:
            return 64
        items = list(value.items())[:10]
        return 64 + 24 * n + n * sum(sizeof(k) + sizeof(v) for k, v in items) // len(items)
    try:
        import sys

        return sys.getsizeof(value)
    except Exception:
        return 64
