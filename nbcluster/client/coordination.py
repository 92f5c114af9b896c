"""Cluster-wide coordination primitives: ``Queue``, ``Variable``, ``Event``, ``Lock`` and
``Semaphore``, named and shared by every client of a cluster (notebooks, and tasks through
``get_client()``). Their state lives in the scheduler (``nbcluster/state/coordination.py``):
a handle here is a name and a client; it pickles as its name, so it can be passed to tasks.

With an asynchronous client every operation returns an awaitable. Timeouts are kept by the
scheduler, so a request that timed out has taken nothing; a wait interrupted here (Ctrl-C)
is withdrawn there.
"""

from __future__ import annotations

import uuid
from collections import deque
from typing import Any

from ..durations import optional_timeout
from ..errors import CancelledError, ClusterError, FutureLostError
from ..protocol import messages as m
from ..protocol.serialize import dump_value, load_value
from .connection import COORDINATE
from .future import Future

_ERRORS: dict[str, type[Exception]] = {
    "timeout": TimeoutError, "ValueError": ValueError, "KeyError": KeyError,
    "RuntimeError": RuntimeError, "FutureLostError": FutureLostError,
    "CancelledError": CancelledError}
_NOTHING = object()


async def coordinate(client: Any, kind: Any, action: Any, name: str, value: Any = _NOTHING,
                     lease: str = "", n: int = 0, timeout: float | None = None) -> Any:
    """One operation (``action``: an m.CoordAction) on the scheduler's primitive
    ``kind``/``name`` (an m.CoordKind): its answer, or the exception it names."""
    key = wire = None
    if isinstance(value, Future):
        key = value.key
    elif value is not _NOTHING:
        wire = dump_value(value, what=f"the value for {kind} {name!r}")

    def withdraw(rid: int) -> m.Message:
        return m.Coordinate(0, kind, "cancel", name, None, None, "", rid, None)

    reply = await client._conn.ask(
        lambda rid: m.Coordinate(rid, kind, action, name, wire, key, lease, n, timeout),
        COORDINATE, withdraw)
    if reply.ok:
        return reply.result
    code, text = reply.result
    raise _ERRORS.get(code, ClusterError)(text)


def item(client: Any, wire: list[Any]) -> Any:
    """An item as it came: a future (this client holds it now) or a value."""
    key, value = wire
    return client._future_of(key) if key is not None else load_value(value)


def _name(name: Any, kind: str) -> str:
    if name is None:
        return f"{kind}-{uuid.uuid4().hex}"
    if not isinstance(name, str) or not name or len(name) > 1000:
        raise TypeError(f"a {kind}'s name must be a non-empty string (at most 1000 "
                        f"characters), got {name!r}")
    return name


class _Primitive:
    kind = ""

    def __init__(self, name: Any = None, client: Any = None) -> None:
        self.name = _name(name, self.kind)
        self._client = client

    @property
    def client(self) -> Any:
        """Its client: the one given, else the default one (in a task: ``get_client()``'s)
        when it is first used."""
        if self._client is None:
            from .client import default_client   # (client.py imports this module's users)
            from .future import Future

            here = Future._client_here   # set by nbcluster: get_client (a task's own client)
            self._client = here() if here is not None else default_client()
        return self._client

    def _run(self, coro: Any) -> Any:
        return self.client._sync(coro)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    def __reduce__(self) -> Any:   # by name: a task gets a handle on the same primitive
        return type(self), (self.name,)


class Queue(_Primitive):
    """A first-in first-out queue of values or futures, shared by name. ``maxsize`` > 0:
    ``put`` waits while that many items are in it. A future in the queue keeps its result
    on the cluster until someone takes it; the taker's client holds it from then on."""
    kind = "queue"

    def __init__(self, name: str | None = None, client: Any = None, maxsize: int = 0) -> None:
        if type(maxsize) is not int or maxsize < 0:
            raise ValueError(f"maxsize must be a non-negative int, got {maxsize!r}")
        super().__init__(name, client)
        self.maxsize = maxsize

    def put(self, value: Any, timeout: Any = None) -> Any:
        """Add ``value`` (or a Future) at the end; TimeoutError if the queue stays full."""
        return self._run(coordinate(self.client, "queue", "put", self.name, value,
                                    n=self.maxsize, timeout=optional_timeout(timeout)))

    def get(self, timeout: Any = None, batch: bool | int = False) -> Any:
        """The next item (TimeoutError if none comes within ``timeout``). ``batch=True``:
        a list of every item there now (perhaps empty, never waits); ``batch=n``: a list of
        the next ``n``, taken together once there are ``n``."""
        if batch is True:
            n = -1
        elif batch is False:
            n = 0
        elif type(batch) is int and batch > 0:
            n = batch
        else:
            raise ValueError(f"batch must be True, False or a positive int, got {batch!r}")
        return self._run(self._get(n, optional_timeout(timeout)))

    async def _get(self, n: int, timeout: float | None) -> Any:
        got = await coordinate(self.client, "queue", "get", self.name, n=n, timeout=timeout)
        return item(self.client, got) if n == 0 else [item(self.client, w) for w in got]

    def qsize(self) -> Any:
        """How many items are in the queue now."""
        return self._run(coordinate(self.client, "queue", "qsize", self.name))

    def __reduce__(self) -> Any:
        return Queue, (self.name, None, self.maxsize)


class Variable(_Primitive):
    """One shared value or future, by name. A future set here keeps its result on the
    cluster until the variable is set to something else or deleted."""
    kind = "variable"

    def set(self, value: Any) -> Any:
        return self._run(coordinate(self.client, "variable", "set", self.name, value))

    def get(self, timeout: Any = None) -> Any:
        """Its value; waits until one is set (TimeoutError after ``timeout``)."""
        return self._run(self._get(optional_timeout(timeout)))

    async def _get(self, timeout: float | None) -> Any:
        got = await coordinate(self.client, "variable", "get", self.name, timeout=timeout)
        return item(self.client, got)

    def delete(self) -> Any:
        """Forget its value (a future it held is let go)."""
        return self._run(coordinate(self.client, "variable", "delete", self.name))


class Event(_Primitive):
    """A flag shared by name: ``wait`` until some client or task ``set``s it."""
    kind = "event"

    def set(self) -> Any:
        return self._run(coordinate(self.client, "event", "set", self.name))

    def clear(self) -> Any:
        return self._run(coordinate(self.client, "event", "clear", self.name))

    def is_set(self) -> Any:
        return self._run(coordinate(self.client, "event", "is_set", self.name))

    def wait(self, timeout: Any = None) -> Any:
        """True once the event is set; False if ``timeout`` passed first."""
        return self._run(coordinate(self.client, "event", "wait", self.name,
                                    timeout=optional_timeout(timeout)))


class _Leases(_Primitive):
    """What Semaphore and Lock share: leases taken through this handle, given back oldest
    first; a lease is also released when the client that holds it disconnects."""

    def __init__(self, max_leases: int, name: str | None, client: Any) -> None:
        if type(max_leases) is not int or max_leases < 1:
            raise ValueError(f"max_leases must be a positive int, got {max_leases!r}")
        super().__init__(name, client)
        self.max_leases = max_leases
        self._leases: deque[str] = deque()     # held through this handle, oldest first

    def acquire(self) -> Any:   # each kind says how it waits
        raise NotImplementedError

    async def _acquire(self, timeout: float | None) -> bool:
        lease = uuid.uuid4().hex
        got = await coordinate(self.client, self.kind, "acquire", self.name, lease=lease,
                               n=self.max_leases, timeout=timeout)
        if got:
            self._leases.append(lease)
        return bool(got)

    def release(self) -> Any:
        """Give back the oldest lease taken through this handle."""
        if not self._leases:
            raise RuntimeError(f"{self.kind} {self.name!r} released more often than it was "
                               "acquired through this handle")
        return self._run(self._release(self._leases.popleft()))

    async def _release(self, lease: str) -> bool:
        await coordinate(self.client, self.kind, "release", self.name, lease=lease)
        return True

    def get_value(self) -> Any:
        """How many leases are held now (by anyone)."""
        return self._run(coordinate(self.client, self.kind, "value", self.name))

    def __enter__(self) -> Any:
        if self.client.asynchronous:
            raise TypeError(f"use `async with` on a {self.kind} of an asynchronous client")
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    async def __aenter__(self) -> Any:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.release()


class Semaphore(_Leases):
    """At most ``max_leases`` holders at once, cluster-wide, by name. A lease is released by
    ``release`` or when the client that holds it disconnects (a worker that dies with the
    task that held it, a notebook closed). Use it with ``with`` (``async with``)."""
    kind = "semaphore"

    def __init__(self, max_leases: int = 1, name: str | None = None, client: Any = None) -> None:
        super().__init__(max_leases, name, client)

    def acquire(self, timeout: Any = None) -> Any:
        """Take a lease: True, or False if none came free within ``timeout``."""
        return self._run(self._acquire(optional_timeout(timeout)))

    def __reduce__(self) -> Any:
        return Semaphore, (self.max_leases, self.name)

    def __repr__(self) -> str:
        return f"<Semaphore {self.name!r} max_leases={self.max_leases}>"


class Lock(_Leases):
    """Mutual exclusion, cluster-wide, by name: one holder at a time (released as a
    Semaphore's lease is, also when its client disconnects)."""
    kind = "lock"

    def __init__(self, name: str | None = None, client: Any = None) -> None:
        super().__init__(1, name, client)

    def acquire(self, blocking: bool = True, timeout: Any = None) -> Any:
        """True once held; False if not (``blocking=False``: at once; else after
        ``timeout``)."""
        if not blocking:
            if timeout is not None:
                raise ValueError("a non-blocking acquire takes no timeout")
            return self._run(self._acquire(0.0))
        return self._run(self._acquire(optional_timeout(timeout)))

    def locked(self) -> Any:
        """Whether some client or task holds it."""
        return self._run(self._locked())

    async def _locked(self) -> bool:
        return bool(await coordinate(self.client, "lock", "value", self.name))

    def __reduce__(self) -> Any:
        return Lock, (self.name,)

    def __repr__(self) -> str:
        return f"<Lock {self.name!r}>"
