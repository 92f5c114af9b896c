"""Finding futures inside nested lists/tuples/dicts/sets and rebuilding the same shape."""

from __future__ import annotations

from typing import Any

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
