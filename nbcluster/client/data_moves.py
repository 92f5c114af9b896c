"""``client.replicate`` and ``client.rebalance``: where results are kept. The scheduler plans
the copies (state/data_moves.py) and answers once they are made. A base of Client (no state of
its own: it uses the client's connection and its sync facade)."""

from __future__ import annotations

from typing import Any

from .records import ended
from .structure import collect_futures


class DataMoves:
    _conn: Any

    def _sync(self, coro, timeout: float | None = None):   # defined by Client
        raise NotImplementedError

    def replicate(self, futures: Any, n: int | None = None) -> dict:
        """Keep copies of these results on ``n`` workers (default: every running worker),
        so that tasks reading them anywhere need no transfer, and they outlive a worker.
        Copies go to the workers holding the fewest bytes; with ``n``, copies beyond ``n``
        are freed. Waits for the futures to finish, then for the copies; returns
        ``{"copied", "failed", "freed", "moved_bytes", "missing"}`` (missing: results that
        are not held, such as failed tasks)."""
        if n is not None and (type(n) is not int or n < 1):
            raise ValueError(f"n must be a positive int (or None: every worker), got {n!r}")
        return self._sync(self._move("replicate", collect_futures(futures), n=n))

    def rebalance(self, futures: Any = None) -> dict:
        """Move results (these futures', default: all) from workers holding more bytes than
        the average to those holding less, until each is within 10 % of it (or no result
        fits). A moved result is freed on its old worker only once the new one holds it.
        Returns ``{"copied", "failed", "freed", "moved_bytes", "missing"}``."""
        found = None if futures is None else collect_futures(futures)
        return self._sync(self._move("rebalance", found))

    async def _move(self, name: str, futures: list | None, **args: Any) -> dict:
        keys = None
        if futures is not None:
            await ended([f._record for f in futures])
            keys = list(dict.fromkeys(f.key for f in futures))
        return await self._conn.request(name, keys=keys, **args)
