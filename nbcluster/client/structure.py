"""Finding futures inside nested lists/tuples/dicts/sets and rebuilding the same shape."""

from __future__ import annotations

import hashlib
from typing import Any, Iterator

from ..protocol.messages import TaskSpec
from ..protocol.serialize import Serialized
from .future import Future

_MISSING = object()


def collect_futures(obj: Any) -> list[Future]:
    """Every Future inside ``obj`` (depth first), each key once."""
    out: list[Future] = []
    seen: set[str] = set()
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, Future):
            if x.key not in seen:
                seen.add(x.key)
                out.append(x)
        elif isinstance(x, (list, tuple, set, frozenset)):
            stack.extend(reversed(list(x)))
        elif isinstance(x, dict):
            stack.extend(reversed(list(x.values())))
    return out


def rebuild(obj: Any, values: dict, skip_missing: bool = False) -> Any:
    """``obj`` with every Future replaced by ``values[key]``."""
    if isinstance(obj, Future):
        return values.get(obj.key, _MISSING) if skip_missing else values[obj.key]
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [rebuild(x, values, skip_missing) for x in obj]
        if skip_missing:
            items = [x for x in items if x is not _MISSING]
        if type(obj) is list:
            return items
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):
            return type(obj)(*items)
        return type(obj)(items)
    if isinstance(obj, dict):
        out = {k: rebuild(v, values, skip_missing) for k, v in obj.items()}
        if skip_missing:
            out = {k: v for k, v in out.items() if v is not _MISSING}
        return type(obj)(out) if type(obj) is not dict else out
    return obj


def check_iterables(iterables: tuple) -> list[Iterator]:
    """Iterators over ``map``'s inputs; a TypeError saying what to pass for anything else."""
    if not iterables:
        raise TypeError("map needs at least one iterable of inputs (a list, a range, ...)")
    out = []
    for i, it in enumerate(iterables):
        if isinstance(it, Future):
            raise TypeError(f"map's input {i} is a single Future, not an iterable: pass a list "
                            "of futures (or submit for one call)")
        if hasattr(it, "get") and hasattr(it, "put") and hasattr(it, "qsize"):
            raise TypeError(f"map's input {i} is a {type(it).__name__}: map does not consume "
                            "queues; pass a list of the inputs, e.g. "
                            "[q.get() for _ in range(q.qsize())]")
        try:
            out.append(iter(it))
        except TypeError:
            raise TypeError(f"map's input {i} is a {type(it).__name__}, which is not iterable: "
                            "pass a list, tuple, range or other iterable of the inputs (for "
                            "one call, use submit)") from None
    return out


def call_digest(spec: TaskSpec) -> str:
    """A digest of a task spec's function token and arguments (``pure=True`` keys)."""
    h = hashlib.blake2b(spec.fn.encode(), digest_size=12)
    for part in (spec.args, spec.kwargs, spec.deps):
        if type(part) is Serialized:
            h.update(b"S")
            h.update(part.header)
            for buf in part.buffers:
                h.update(buf)
        else:   # plain values (repr is exact for them), None, or dependency keys
            h.update(repr(part).encode())
    return h.hexdigest()
