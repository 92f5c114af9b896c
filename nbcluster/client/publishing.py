"""Sharing between clients: ``client.publish(name=future_or_value)`` makes a result (or a
value) available by name to every client of the cluster, ``get_published(name)`` picks it up
(a future: its result is not computed again), ``list_published()``, ``unpublish(name)``.
A published future is kept by the cluster until it is unpublished, also after the client that
published it closed. A base of Client; with an asynchronous client each returns an awaitable.
"""

from __future__ import annotations

from typing import Any

from .coordination import coordinate, item

_NO_DEFAULT = object()


class Publishing:
    def _sync(self, coro, timeout: float | None = None):   # defined by Client
        raise NotImplementedError

    def publish(self, overwrite: bool = False, **named: Any) -> Any:
        """Publish each ``name=future_or_value``, in turn. A name already published is
        refused (ValueError) unless ``overwrite=True``."""
        if not named:
            raise TypeError("publish takes name=future_or_value, e.g. "
                            "client.publish(model=future)")
        for name in named:
            if len(name) > 1000:
                raise ValueError(f"a published name has at most 1000 characters: {name[:40]}...")
        return self._sync(self._publish(named, "set" if overwrite else "add"))

    async def _publish(self, named: dict[str, Any], action: str) -> None:
        for name, value in named.items():
            await coordinate(self, "published", action, name, value)

    def get_published(self, name: str, default: Any = _NO_DEFAULT) -> Any:
        """What was published as ``name`` (a future: this client holds it now); KeyError, or
        ``default`` if given, when nothing is."""
        _check(name)
        return self._sync(self._get_published(name, default))

    async def _get_published(self, name: str, default: Any) -> Any:
        got = await coordinate(self, "published", "get", name)
        if got is None:
            if default is _NO_DEFAULT:
                raise KeyError(f"nothing is published as {name!r} (published: "
                               f"{await coordinate(self, 'published', 'list', '')})")
            return default
        return item(self, got)

    def list_published(self) -> Any:
        """The names published on the cluster, sorted."""
        return self._sync(coordinate(self, "published", "list", ""))

    def unpublish(self, name: str) -> Any:
        """Withdraw ``name`` (KeyError if nothing is published as it); a future it held is
        let go, unless some client holds it."""
        _check(name)
        return self._sync(coordinate(self, "published", "delete", name))


def _check(name: Any) -> None:
    if not isinstance(name, str) or not name:
        raise TypeError(f"a published name is a non-empty string, got {name!r}")
