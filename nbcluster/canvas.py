"""Celery's canvas with futures: ``chain``, ``group`` and ``chord`` submit at once and return
futures. A signature ``s(fn, *args, **kwargs)`` is a call not made yet; its keyword arguments
may include task control (``queue=``, ``retries=``, ``rate_limit=`` ...).

    chain(s(add, 1, 2), s(add, 10))          # add(add(1, 2), 10): each result goes first
    group(s(add, i, i) for i in range(10))   # a list of futures
    chord(header, s(sum))                    # sum over the header's results
    chord(header, s(report), on_error="collect")   # failures arrive as their exceptions
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from .client import Client, Future, default_client


class Signature:
    """A function with some arguments, to be submitted later (Celery's ``task.s(...)``)."""

    __slots__ = ("fn", "args", "kwargs")

    def __init__(self, fn: Callable, *args: Any, **kwargs: Any) -> None:
        if not callable(fn):
            raise TypeError(f"a signature needs a callable, got {fn!r}")
        self.fn, self.args, self.kwargs = fn, args, kwargs

    def submit(self, client: Client | None = None, *first: Any, **extra: Any) -> Future:
        """Submit ``fn(*first, *args, **kwargs)``; ``first`` is the previous link's result."""
        client = client or default_client()
        return client.submit(self.fn, *first, *self.args, **{**self.kwargs, **extra})

    def __repr__(self) -> str:
        return f"s({getattr(self.fn, '__name__', self.fn)}, {len(self.args)} args)"


def s(fn: Callable, *args: Any, **kwargs: Any) -> Signature:
    return Signature(fn, *args, **kwargs)


def _signature(item: Any, what: str) -> Signature:
    if isinstance(item, Signature):
        return item
    if callable(item):
        return Signature(item)
    raise TypeError(f"{what} takes signatures (nbcluster.s(fn, *args)) or functions, got {item!r}")


def chain(*links: Signature | Callable | Future, client: Client | None = None) -> Future:
    """Each link receives the previous link's result as its first argument."""
    if not links:
        raise ValueError("chain needs at least one link")
    client = client or default_client()
    first, rest = links[0], links[1:]
    current = first if isinstance(first, Future) else _signature(first, "chain").submit(client)
    for link in rest:
        current = _signature(link, "chain").submit(client, current)
    return current


def group(signatures: Iterable[Signature], client: Client | None = None) -> list[Future]:
    """Run independent calls in parallel; a list of futures in the same order."""
    client = client or default_client()
    return [_signature(sig, "group").submit(client) for sig in signatures]


def chord(header: Iterable[Signature] | list[Future], callback: Signature | Callable,
          on_error: str = "raise", client: Client | None = None) -> Future:
    """``callback([results of header])``. With ``on_error="raise"`` (the default) it fails with
    the first header error; with ``"collect"`` it runs with the exceptions in place."""
    if on_error not in ("raise", "collect"):
        raise ValueError(f"chord on_error must be 'raise' or 'collect', got {on_error!r}")
    client = client or default_client()
    futures = [h if isinstance(h, Future) else _signature(h, "chord").submit(client)
               for h in header]
    extra = {"collect_errors": True} if on_error == "collect" else {}
    return _signature(callback, "chord").submit(client, futures, **extra)


__all__ = ["Signature", "s", "chain", "group", "chord"]
