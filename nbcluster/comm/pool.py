"""Request/reply over pooled connections to workers: fetch and put data directly.

Workers use it to fetch inputs from peers; clients use it to gather results and scatter data.
One connection per address, requests multiplexed by id (:class:`Replies`, which the client's
connection to the scheduler uses too).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, Callable

from ..errors import CommError
from ..protocol import messages as m
from .core import Comm, connect

_ALL = object()


class Replies:
    """Requests waiting for their reply, by request id: ``expect`` one (an id and a future on
    the running loop), ``resolve`` it with the reply message when it comes, ``fail`` what is
    still waiting when its connection goes (all, or those expected with ``tag``)."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._waiting: dict[Any, tuple[Any, asyncio.Future]] = {}

    def expect(self, tag: Any = None, request_id: Any = None) -> tuple[Any, asyncio.Future]:
        rid = next(self._ids) if request_id is None else request_id
        fut = asyncio.get_running_loop().create_future()
        self._waiting[rid] = (tag, fut)
        return rid, fut

    def resolve(self, request_id: Any, reply: m.Message) -> None:
        entry = self._waiting.pop(request_id, None)
        if entry is not None and not entry[1].done():
            entry[1].set_result(reply)

    def discard(self, request_id: Any) -> None:
        """Stop waiting for a reply (answered already, or given up by the caller)."""
        self._waiting.pop(request_id, None)

    def fail(self, error: Callable[[], BaseException], tag: Any = _ALL) -> None:
        for rid, (t, fut) in list(self._waiting.items()):
            if tag is _ALL or t == tag:
                del self._waiting[rid]
                if not fut.done():
                    fut.set_exception(error())


class DataPool:
    def __init__(self, token: str | None, identity: dict, timeout: float = 10.0,
                 security=None) -> None:
        self.token = token
        self.security = security
        self.identity = identity
        self.timeout = timeout
        self.comms: dict[str, Comm] = {}
        self._connecting: dict[str, asyncio.Future] = {}
        self._replies = Replies()

    async def _comm(self, address: str) -> Comm:
        comm = self.comms.get(address)
        if comm is not None and not comm.closed:
            return comm
        pending = self._connecting.get(address)
        if pending is not None:
            return await asyncio.shield(pending)
        fut = asyncio.get_running_loop().create_future()
        self._connecting[address] = fut
        try:
            comm = await connect(address, self.token, self.timeout, self.security)
        except Exception as e:
            fut.set_exception(e)
            fut.exception()  # mark retrieved
            raise
        finally:
            self._connecting.pop(address, None)
        comm.send(m.Hello("peer", self.identity))
        comm.start(self._on_batch, lambda reason: self._on_close(address, reason))
        self.comms[address] = comm
        fut.set_result(comm)
        return comm

    def _on_batch(self, batch: list[m.Message]) -> None:
        for msg in batch:
            if type(msg) is m.Data or type(msg) is m.Reply:
                self._replies.resolve(msg.request_id, msg)
            else:
                raise m.ProtocolError(f"{type(msg).__name__} is not an answer to a request")

    def _on_close(self, address: str, reason: str) -> None:
        self.comms.pop(address, None)
        self._replies.fail(lambda: CommError(f"connection to {address} lost: {reason}"), address)

    async def _request(self, address: str, make: Callable[[int], m.Message]) -> m.Message:
        comm = await self._comm(address)
        rid, reply = self._replies.expect(address)
        try:
            comm.send(make(rid))
            return await reply
        finally:   # a caller's timeout cancels the wait: nothing is kept for a late reply
            self._replies.discard(rid)

    async def get_data(self, address: str, keys: list) -> tuple[dict, list, dict]:
        """Returns (values, missing keys, {key: error text}) from the worker at ``address``."""
        msg = await self._request(address, lambda rid: m.GetData(rid, keys))
        if type(msg) is not m.Data:
            raise CommError(f"{address} answered a request for data with {msg!r}")
        return msg.values, msg.missing, msg.errors

    async def put_data(self, address: str, values: dict) -> None:
        msg = await self._request(address, lambda rid: m.PutData(rid, values))
        if type(msg) is m.Reply and not msg.ok:
            raise ValueError(f"scatter: {address} refused the data: {msg.result}")

    def close(self) -> None:
        for comm in list(self.comms.values()):
            comm.close()
        self.comms.clear()
