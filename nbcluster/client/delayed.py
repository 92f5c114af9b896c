"""Lazy calls: ``delayed(fn)(*args)`` builds a graph; ``.compute()`` runs it."""

from __future__ import annotations

import itertools
from typing import Any, Callable, overload

from .future import Future

_ids = itertools.count(1)


class Delayed:
    """A call not made yet. Delayed values in its arguments are its inputs."""

    __slots__ = ("fn", "args", "kwargs", "key", "pure", "__weakref__")

    def __init__(self, fn: Callable, args: tuple, kwargs: dict, key: str | None = None,
                 pure: bool = False) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.key = key
        self.pure = pure

    def compute(self, client=None) -> Any:
        """Run the graph on ``client`` (default: the current client; none: in this process)."""
        if client is None:
            from .client import default_client

            try:
                client = default_client()
            except Exception:
                return _compute_locally(self, {})
        return compute_with(client, self).result()

    def __call__(self, *args, **kwargs) -> "Delayed":
        return Delayed(_call, (self, *args), kwargs, pure=self.pure)

    def __getitem__(self, index) -> "Delayed":
        return Delayed(_getitem, (self, index), {}, pure=self.pure)

    def __repr__(self) -> str:
        return f"Delayed({getattr(self.fn, '__name__', self.fn)!r})"


def _call(fn, *args, **kwargs):
    return fn(*args, **kwargs)


def _getitem(obj, index):
    return obj[index]


def delayed(fn: Callable | Any, *, pure: bool = False) -> Callable[..., Delayed]:
    """Wrap ``fn`` so calling it returns a :class:`Delayed` instead of running.

    ``pure=True``: its calls are submitted with ``submit(pure=True)``, so the same call (same
    function, same arguments) computed again from this client is the same task, computed
    once. By default every call is a new task."""
    if not callable(fn):
        raise TypeError(f"delayed() needs a callable, got {fn!r}")
    if not isinstance(pure, bool):
        raise TypeError(f"pure must be True or False, got {pure!r}")

    def make(*args, **kwargs) -> Delayed:
        return Delayed(fn, args, kwargs, pure=pure)

    make.__name__ = getattr(fn, "__name__", "delayed")
    make.__doc__ = getattr(fn, "__doc__", None)
    return make


def _map_args(obj, fn):
    if isinstance(obj, Delayed):
        return fn(obj)
    if type(obj) in (list, tuple, set):
        return type(obj)(_map_args(x, fn) for x in obj)
    if type(obj) is dict:
        return {k: _map_args(v, fn) for k, v in obj.items()}
    return obj


@overload
def compute_with(client: Any, collection: Delayed, **submit_kwargs: Any) -> Future: ...
@overload
def compute_with(client: Any, collection: list | tuple, **submit_kwargs: Any) -> list: ...
def compute_with(client, collection, **submit_kwargs) -> Future | list:
    """Submit every call of a Delayed graph; returns the future of the result(s).
    ``pure=`` here, if given, applies to every call instead of each one's own."""
    memo: dict[int, Future] = {}
    pure = submit_kwargs.pop("pure", None)

    def submit(d: Delayed) -> Future:
        fut = memo.get(id(d))
        if fut is None:
            args = _map_args(d.args, submit)
            kwargs = _map_args(d.kwargs, submit)
            fut = memo[id(d)] = client.submit(d.fn, *args, **submit_kwargs, **kwargs,
                                              pure=d.pure if pure is None else pure)
        return fut

    if isinstance(collection, Delayed):
        return submit(collection)
    if isinstance(collection, (list, tuple)):
        return [submit(d) if isinstance(d, Delayed) else d for d in collection]
    raise TypeError(f"compute takes a Delayed or a list of them, got {type(collection).__name__}")


def _compute_locally(d: Delayed, memo: dict) -> Any:
    if id(d) in memo:
        return memo[id(d)]
    args = _map_args(d.args, lambda x: _compute_locally(x, memo))
    kwargs = _map_args(d.kwargs, lambda x: _compute_locally(x, memo))
    memo[id(d)] = value = d.fn(*args, **kwargs)
    return value


def compute(*collections, client=None) -> tuple:
    """Compute several Delayed values together; returns their results as a tuple."""
    if client is None:
        from .client import default_client

        try:
            client = default_client()
        except Exception:
            memo: dict = {}
            return tuple(_compute_locally(d, memo) for d in collections)
    futures = compute_with(client, list(collections))
    return tuple(client.gather(futures))
