"""The client's functions: each callable is pickled once while its futures live, and not kept
alive.

A task names its function by a token; the pickled function travels once per token. The cache
maps a callable to its token *weakly*: submitting the same function 10,000 times pickles it
once, yet a function (a closure holding a large array, a bound method holding its object)
is dropped once nothing else references it (tasks name it by token, the scheduler holds
the pickled bytes). A bound method is the same function as another bound method of the same
object and function, though ``obj.method`` makes a new method object at each access.

Callables that cannot be weakly referenced (``operator.itemgetter``, ``str.upper``, instances
of classes with ``__slots__``) are held strongly in a small cache of the most recent ones.

The cluster keeps a pickled function while this client holds its token (or a task names it,
see ``nbcluster/state/functions.py``), and the client decides when to let go, since only it
knows whether it will name the token again: each token counts its uses (the futures' records
that name it, and specs being built), and a token unused for ``LINGER`` seconds is released
(RELEASE-FUNCTIONS) and forgotten here. The function used again later gets a new token and is
pickled and sent again, so a token is never named after its release: no task can reach the
scheduler naming a function it dropped. The linger spares a loop that submits, waits and
submits again the same function from sending it each time.
"""

from __future__ import annotations

import itertools
import threading
import time
import weakref
from collections import OrderedDict
from types import MethodType
from typing import Any, Callable

from ..protocol import messages as m
from ..protocol.serialize import dumps_function

STRONG_ENTRIES = 64     # callables that cannot be weakly referenced: the last ones, held
LINGER = 0.5            # seconds an unused token is kept before the cluster is told to drop it


class FunctionCache:
    """``acquire(fn)``: the token of ``fn``, its pickle posted (``post(FUNCTION)``) the first
    time, counted as one use until ``release(token)`` (or ``hold``, which hands it on to the
    records of futures). ``later(delay, callback)`` calls back on
    the client's loop after ``delay`` seconds (the release of unused tokens). Thread-safe: a
    race costs at most one more pickle, never a wrong token."""

    def __init__(self, uid: str, name: Callable[[Callable], str],
                 post: Callable[[m.Message], None],
                 later: Callable[[float, Callable[[], None]], object]) -> None:
        self._uid = uid
        self._name = name
        self._post = post
        self._later = later
        self._counter = itertools.count()   # never reused: a released token stays released
        # id(fn) -> (token, ref to fn); a bound method: (id(func), id(obj)) -> (token, ref, ref)
        self._weak: dict[Any, tuple] = {}
        # the same keys -> (token, callable), for callables that cannot be weakly referenced;
        # holding the callable keeps the ids in its key from being reused
        self._strong: OrderedDict[Any, tuple] = OrderedDict()
        # Reentrant: a Future collected while this thread holds the lock releases its token.
        # Messages are posted under it, so the scheduler hears them in the order decided.
        self._lock = threading.RLock()
        self._uses: dict[str, int] = {}     # token -> uses (0: unused since _idle[token])
        self._keys: dict[str, Any] = {}     # token -> its cache key
        self._idle: dict[str, float] = {}   # token -> when its uses fell to 0
        self._sweeping = False

    def acquire(self, fn: Callable) -> str:
        key, parts = _cache_key(fn)
        with self._lock:
            token = self._lookup(key, parts)
            if token is not None:
                self._uses[token] += 1
                return token
        if not callable(fn):
            raise TypeError(f"submit needs a callable as its first argument, got {fn!r}")
        blob = dumps_function(fn)     # outside the lock: a large closure takes a while
        with self._lock:
            token = self._lookup(key, parts)   # another thread may have added it meanwhile
            if token is None:
                token = self._add(fn, key, parts, blob)
            self._uses[token] += 1
            return token

    def release(self, token: str) -> None:
        """One use fewer of ``token``; unused, it is released after ``LINGER`` s."""
        with self._lock:
            self._change(token, -1)

    def hold(self, token: str, records: list) -> None:
        """The futures' ``records`` take a use of ``token`` each, unless one holds a use
        already (of this token or another); the caller's own use (``acquire``) goes."""
        with self._lock:
            taken = 0
            for record in records:
                if record.fn is None:
                    record.fn = token
                    taken += 1
            if taken != 1:
                self._change(token, taken - 1)

    def _change(self, token: str, delta: int) -> None:
        left = self._uses[token] + delta
        self._uses[token] = left
        if left:
            return
        self._idle[token] = time.monotonic()
        if not self._sweeping:
            self._sweeping = True
            self._schedule(LINGER)

    def _schedule(self, delay: float) -> None:
        try:
            self._later(delay, self._sweep)
        except RuntimeError:   # the client's loop is closed: the cluster drops them on leaving
            self._sweeping = False

    def _sweep(self) -> None:
        """On the client's loop: release the tokens unused for LINGER s, in one message."""
        with self._lock:
            self._sweeping = False
            now, released, wait = time.monotonic(), [], LINGER
            for token, since in list(self._idle.items()):
                if self._uses[token]:           # used again meanwhile: kept
                    del self._idle[token]
                elif now - since >= LINGER:
                    del self._idle[token], self._uses[token]
                    self._drop_entry(token)
                    released.append(token)
                else:
                    wait = min(wait, LINGER - (now - since))
            if released:
                self._post(m.ReleaseFunctions(released))
            if self._idle:
                self._sweeping = True
                self._schedule(wait)

    def _lookup(self, key: Any, parts: tuple) -> str | None:
        entry = self._weak.get(key)
        if entry is not None and entry[1]() is parts[0] and (
                len(parts) == 1 or entry[2]() is parts[1]):
            return entry[0]
        held = self._strong.get(key)
        if held is not None:
            self._strong.move_to_end(key)
            return held[0]
        return None

    def _add(self, fn: Callable, key: Any, parts: tuple, blob: bytes) -> str:
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
        self._keys[token] = key
        self._uses[token] = 0
        self._post(m.Function(token, blob))
        return token

    def clear(self) -> None:
        """Forget every token: each function is pickled and sent again when next used (a
        scheduler that came back may not have it)."""
        with self._lock:   # tokens in use stay counted: their futures release them
            self._weak.clear()
            self._strong.clear()

    def _drop_entry(self, token: str) -> None:
        """The cache forgets ``token``: its function, if used again, gets a new one."""
        key = self._keys.pop(token)
        entry = self._weak.get(key)
        if entry is not None and entry[0] == token:
            del self._weak[key]
        held = self._strong.get(key)
        if held is not None and held[0] == token:
            del self._strong[key]

    def __len__(self) -> int:
        return len(self._weak) + len(self._strong)


def _cache_key(fn: Callable) -> tuple[Any, tuple]:
    """The cache key of ``fn`` and the objects it is made of (a bound method: its function
    and its object, as a new method object is made at each ``obj.method``)."""
    if type(fn) is MethodType:
        func, obj = fn.__func__, fn.__self__
        return (id(func), id(obj)), (func, obj)
    return id(fn), (fn,)


def _forgetter(entries: dict, key: Any) -> Callable[[weakref.ref], None]:
    """A weakref callback: drop the entry of ``key`` if it is still the one of that ref."""

    def forget(ref: weakref.ref) -> None:
        entry = entries.get(key)
        if entry is not None and any(r is ref for r in entry[1:]):
            entries.pop(key, None)

    return forget
