"""The client's functions: each callable is pickled once while it lives, and not kept alive.

A task names its function by a token; the pickled function travels once per token. The cache
maps a callable to its token *weakly*: submitting the same function 10,000 times pickles it
once, yet a function (a closure holding a large array, a bound method holding its object)
is dropped once nothing else references it (tasks name it by token, the scheduler holds
the pickled bytes). A bound method is the same function as another bound method of the same
object and function, though ``obj.method`` makes a new method object at each access.

Callables that cannot be weakly referenced (``operator.itemgetter``, ``str.upper``, instances
of classes with ``__slots__``) are held strongly in a small cache of the most recent ones.
"""

from __future__ import annotations

import itertools
import weakref
from collections import OrderedDict
from types import MethodType
from typing import Any, Callable

from ..protocol import messages as m
from ..protocol.serialize import dumps_function

STRONG_ENTRIES = 64     # callables that cannot be weakly referenced: the last ones, held


class FunctionCache:
    """``token(fn)``: the token of ``fn``, its pickle posted (``post([FUNCTION, token, blob])``)
    the first time. Thread-safe: a race costs at most one more pickle, never a wrong token."""

    def __init__(self, uid: str, name: Callable[[Callable], str],
                 post: Callable[[m.Message], None]) -> None:
        self._uid = uid
        self._name = name
        self._post = post
        self._counter = itertools.count()   # never reused: the scheduler keeps old tokens
        # id(fn) -> (token, ref to fn); a bound method: (id(func), id(obj)) -> (token, ref, ref)
        self._weak: dict[Any, tuple] = {}
        # the same keys -> (token, callable), for callables that cannot be weakly referenced;
        # holding the callable keeps the ids in its key from being reused
        self._strong: OrderedDict[Any, tuple] = OrderedDict()

    def token(self, fn: Callable) -> str:
        if type(fn) is MethodType:
            return self._method_token(fn)
        entry = self._weak.get(id(fn))
        if entry is not None and entry[1]() is fn:
            return entry[0]
        return self._add(fn, id(fn), (fn,))

    def _method_token(self, fn: MethodType) -> str:
        func, obj = fn.__func__, fn.__self__
        key = (id(func), id(obj))
        entry = self._weak.get(key)
        if entry is not None and entry[1]() is func and entry[2]() is obj:
            return entry[0]
        return self._add(fn, key, (func, obj))

    def _add(self, fn: Callable, key: Any, parts: tuple) -> str:
        held = self._strong.get(key)
        if held is not None:
            self._strong.move_to_end(key)
            return held[0]
        if not callable(fn):
            raise TypeError(f"submit needs a callable as its first argument, got {fn!r}")
        blob = dumps_function(fn)
        token = f"{self._name(fn)}-{self._uid}-{next(self._counter)}"
        try:
            forget = _forgetter(self._weak, key)
            refs = tuple(weakref.ref(p, forget) for p in parts)
        except TypeError:           # not weakly referenceable: hold the last few
            self._strong[key] = (token, fn)
            if len(self._strong) > STRONG_ENTRIES:
                self._strong.popitem(last=False)
        else:
            self._weak[key] = (token, *refs)
        self._post(m.Function(token, blob))
        return token

    def clear(self) -> None:
        """Forget every token: each function is pickled and sent again when next used (a
        scheduler that came back may not have it)."""
        self._weak.clear()
        self._strong.clear()

    def __len__(self) -> int:
        return len(self._weak) + len(self._strong)


def _forgetter(entries: dict, key: Any) -> Callable[[weakref.ref], None]:
    """A weakref callback: drop the entry of ``key`` if it is still the one of that ref."""

    def forget(ref: weakref.ref) -> None:
        entry = entries.get(key)
        if entry is not None and any(r is ref for r in entry[1:]):
            entries.pop(key, None)

    return forget
