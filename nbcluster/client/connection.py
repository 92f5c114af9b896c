"""The client's plumbing: its event loop (an I/O thread for synchronous users), the connection
to the scheduler, the outbox that batches messages, and the records of keys it holds.

A scheduler that keeps a journal (its answer to HELLO says so) is sought again when the
connection is lost (see :mod:`.reconnect`); meanwhile waiting calls keep waiting and what is
posted stays in the outbox. Otherwise a lost scheduler fails every waiting call at once."""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections import deque
from typing import Any, Callable

from ..comm import Comm, connect
from ..comm.pool import DataPool, Replies
from ..errors import ClusterError, CommError
from ..protocol import messages as m

FRAME_TASKS = 5_000   # task specs per frame to the scheduler, at most
from .output import OutputMarker
from .records import CANCELLED, ERROR, FINISHED, LOST, NO_VALUE, PENDING, KeyRecord
from .reconnect import RESENT_REQUESTS, Reconnect

logger = logging.getLogger("nbcluster.client")


class ClientConnection:
    """Owns the comm to the scheduler. Thread-safe entry points: ``post`` and ``request``."""

    def __init__(self, address: str, token: str | None, loop: asyncio.AbstractEventLoop,
                 timeout: float, security=None, heartbeat_timeout: float = 30.0,
                 reconnect_timeout: float = 60.0) -> None:
        self.address = address
        self.token = token
        self.security = security
        self.loop = loop
        self.timeout = timeout
        self.id = f"client-{uuid.uuid4().hex[:12]}"
        self.comm: Comm | None = None
        self.pool = DataPool(token, {"client": self.id}, timeout, security)
        self.records: dict[str, KeyRecord] = {}
        self.outbox: deque = deque()
        self._flush_scheduled = False
        self._replies = Replies()
        self.closed = False
        self.lost_reason = ""
        # A scheduler that stops answering (frozen, or the network between us gone) is given
        # up after heartbeat_timeout s of silence; a quiet connection is pinged meanwhile.
        self.heartbeat_timeout = heartbeat_timeout
        self._ping_every = max(0.05, min(5.0, heartbeat_timeout / 4))
        self._last_heard = 0.0
        self._watch: asyncio.TimerHandle | None = None
        self._closing_reason = ""    # the scheduler said it is closing (a CLOSE message)
        # observers: "output" (key, stream, text), "task" (key, status), "submit" (keys)
        self.listeners: dict[str, list] = {"output": [], "task": [], "submit": []}
        self._marker = OutputMarker()
        self.journal = False          # the scheduler keeps a journal: worth reconnecting to
        self.incarnation = ""         # the scheduler's id of its current start
        self.versions: Any = None
        self.reconnect = Reconnect(self, reconnect_timeout)
        self._requests: dict[int, m.Request] = {}   # sent, not answered yet

    async def connect(self, timeout: float | None = None) -> None:
        """Connect and say HELLO (again after a lost connection, under the same id)."""
        timeout = self.timeout if timeout is None else timeout
        comm = self.comm = await connect(self.address, self.token, timeout, self.security)
        _, hello = self._replies.expect(tag=_HELLO, request_id=0)   # the REPLY to HELLO
        comm.start(self._on_batch, lambda reason: self._on_close(reason, comm))
        comm.send(m.Hello("client", {"id": self.id}))
        try:
            answer: m.Reply = await asyncio.wait_for(hello, timeout)
        except asyncio.TimeoutError:
            comm.abort("no hello")
            raise CommError(f"the scheduler at {self.address} did not answer within "
                            f"{timeout:g} s") from None
        if comm.closed:   # lost before this coroutine resumed
            raise CommError(f"the scheduler at {self.address} closed the connection: "
                            f"{comm.close_reason}")
        info = answer.result if isinstance(answer.result, dict) else {}
        self.journal = bool(info.get("journal"))
        self.incarnation = str(info.get("incarnation", ""))
        self.versions = info.get("versions")    # the scheduler's and workers' (worker_setup.py)
        self.watch()

    def watch(self) -> None:
        """Watch the connection for silence, from now."""
        self._last_heard = self.loop.time()
        if self._watch is not None:
            self._watch.cancel()
        self._watch = self.loop.call_later(self._ping_every, self._check_alive)

    def _check_alive(self) -> None:
        if self.closed or self.comm is None:
            return
        silent = self.loop.time() - self._last_heard
        if silent >= self.heartbeat_timeout:
            self.comm.abort(f"no answer for {silent:.1f} s (heartbeat_timeout="
                            f"{self.heartbeat_timeout:g} s)")
            return
        if silent >= self._ping_every:   # the reply, like any message, counts as a sign of life
            self.loop.create_task(self._ping())
        self._watch = self.loop.call_later(self._ping_every, self._check_alive)

    async def _ping(self) -> None:
        try:
            await self.request("ping")
        except Exception:   # the connection closed meanwhile: _on_close said why
            pass

    # ------------------------------------------------------------------ outgoing
    def post(self, msg: m.Message) -> None:
        """Queue ``msg`` for the scheduler from any thread; one write per loop tick."""
        self.outbox.append(msg)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            try:
                if self._on_loop_thread():
                    self.loop.call_soon(self._flush)
                else:
                    self.loop.call_soon_threadsafe(self._flush)
            except RuntimeError:   # loop closed: the client is gone
                pass

    def _on_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.reconnect.active:     # kept until the scheduler is back
            return
        outbox = self.outbox
        batch: list[m.Message] = []
        last: m.Submit | m.Release | None = None   # consecutive submits (or releases) travel
        submitted = 0                                # as one message
        while outbox:
            msg = outbox.popleft()
            kind = type(msg)
            if kind is m.Submit:
                tasks = msg.tasks
                start = 0
                while start < len(tasks):
                    if submitted >= FRAME_TASKS:
                        # The scheduler decodes a frame whole: a million specs in one would
                        # cost it their decoded copies all at once, beside the tasks made
                        # of them, and hold its loop for seconds.
                        if self.comm is not None:
                            self.comm.send_frame(batch)
                        batch, last, submitted = [], None, 0
                    part = tasks[start:start + FRAME_TASKS - submitted]
                    start += len(part)
                    submitted += len(part)
                    if type(last) is m.Submit:
                        last.tasks.extend(part)
                    else:
                        last = m.Submit(part)
                        batch.append(last)
                continue
            if kind is m.Release:
                if type(last) is m.Release:
                    last.keys.extend(msg.keys)
                else:
                    last = m.Release(list(msg.keys))
                    batch.append(last)
                continue
            last = None
            batch.append(msg)
        if batch and self.comm is not None:
            self.comm.send_many(batch)

    def check_open(self) -> None:
        """Raise, saying why, unless messages can still reach the scheduler."""
        if self.closed:
            raise ClusterError(f"cannot reach the scheduler: {self.lost_reason}; "
                               "this client cannot be used any more (make a new Client)")

    async def ask(self, make: Callable[[int], m.Message], tag: Any = None,
                  withdraw: Callable[[int], m.Message] | None = None) -> m.Reply:
        """Send ``make(request_id)`` (a message answered by a Reply) and await the reply;
        if the caller gives up first, ``withdraw(request_id)`` is sent (it waits no more)."""
        self.check_open()
        rid, reply = self._replies.expect(tag)
        self.post(make(rid))
        try:
            answer: m.Reply = await reply
        except asyncio.CancelledError:
            if withdraw is not None and not self.closed:
                self.post(withdraw(rid))
            raise
        finally:
            self._replies.discard(rid)
        return answer

    async def request(self, name: str, **args):
        self.check_open()
        rid, reply = self._replies.expect(tag=name)
        msg = self._requests[rid] = m.Request(rid, name, args)
        self.post(msg)
        try:
            answer: m.Reply = await reply
        finally:   # given up (a caller's timeout): nothing is kept for a late reply
            self._replies.discard(rid)
            self._requests.pop(rid, None)
        if not answer.ok:
            raise ClusterError(f"the scheduler could not do {name!r}: {answer.result}")
        return answer.result

    # ------------------------------------------------------------------ incoming
    def _on_batch(self, batch: list[m.Message]) -> None:
        self._last_heard = self.loop.time()
        handlers = self._handlers
        for msg in batch:
            handler = handlers.get(type(msg))
            if handler is None:
                raise m.ProtocolError(f"{type(msg).__name__} is not accepted by a client")
            handler(self, msg)

    # observers hear of an end before any waiter wakes up
    def _on_done(self, msg: m.Done) -> None:
        rec = self.records.get(msg.key)
        if rec is not None:
            if msg.has_value:
                rec.value = msg.value
            rec.holders = msg.holders
            rec.nbytes = msg.nbytes
            if rec.status != FINISHED:
                if self.listeners["task"]:
                    self.emit("task", msg.key, FINISHED)
                rec.finish(FINISHED)

    def _on_erred(self, msg: m.Erred) -> None:
        rec = self.records.get(msg.key)
        if rec is not None and rec.status == PENDING:
            rec.exc, rec.traceback = msg.exception, msg.traceback
            if self.listeners["task"]:
                self.emit("task", msg.key, ERROR)
            rec.finish(ERROR)

    def _on_cancelled(self, msg: m.Cancelled) -> None:
        # also for a finished or failed key: the scheduler forgot it (a restart)
        rec = self.records.get(msg.key)
        if self.reconnect.rewanted and self.reconnect.forgotten(msg.key, rec):
            return
        if rec is not None and rec.status != CANCELLED:
            rec.cancel_reason = msg.reason
            rec.value, rec.exc, rec.traceback = NO_VALUE, None, None
            rec.holders = ()
            if self.listeners["task"]:
                self.emit("task", msg.key, CANCELLED)
            rec.finish(CANCELLED)

    def _on_reply(self, msg: m.Reply) -> None:
        self._replies.resolve(msg.request_id, msg)

    def _on_output_message(self, msg: m.Output) -> None:
        self._on_output(msg.key, msg.stream, msg.text)

    def _on_close_message(self, msg: m.Close) -> None:
        self._closing_reason = msg.reason   # the connection ends next: expected, not a failure

    _handlers: dict[type, Callable[[Any, Any], None]] = {
        m.Done: _on_done, m.Erred: _on_erred, m.Cancelled: _on_cancelled, m.Reply: _on_reply,
        m.Output: _on_output_message, m.Close: _on_close_message}

    def emit(self, event: str, *args) -> None:
        for fn in list(self.listeners[event]):
            try:
                fn(*args)
            except Exception:  # an observer must not break the client
                logger.exception("error in a %r listener", event)

    def _on_output(self, key: str, stream: str, text: str) -> None:
        if self.listeners["output"]:
            self.emit("output", key, stream, text)
            return
        import sys

        target = sys.stdout if stream == "stdout" else sys.stderr
        target.write(self._marker.mark(key, stream, text))
        target.flush()

    def _on_close(self, reason: str, comm: Comm | None = None) -> None:
        if self.closed or (comm is not None and comm is not self.comm):
            return
        if self._watch is not None:
            self._watch.cancel()
        if self.reconnect.active:      # an attempt's connection: its HELLO fails
            self._replies.fail(lambda: CommError(reason), tag=_HELLO)
            return
        if not self._closing_reason and self.journal and self.reconnect.timeout > 0:
            # what the new connection cannot answer fails; the rest is asked again
            for name in {msg.name for msg in self._requests.values()} - RESENT_REQUESTS:
                error = ClusterError(f"lost the scheduler at {self.address} before it "
                                     f"answered {name!r}: {reason}")
                self._replies.fail(functools.partial(_same, error), tag=name)
            self._replies.fail(lambda: ClusterError(   # a new scheduler has no such waiter
                f"lost the scheduler at {self.address} while waiting on a primitive (Queue, "
                f"Lock ...): {reason}"), tag=COORDINATE)
            self.reconnect.start(reason)
            return
        if self._closing_reason:
            self.fail_all(f"the scheduler at {self.address} closed: {self._closing_reason}",
                          logging.INFO)
        else:
            self.fail_all(f"lost the scheduler at {self.address}: {reason}")

    def fail_all(self, reason: str, level: int = logging.WARNING) -> None:
        """The scheduler is gone for good: every waiting call fails at once with ``reason``."""
        self.closed = True
        self.lost_reason = reason
        logger.log(level, "%s", reason)
        if self._watch is not None:
            self._watch.cancel()
        self._replies.fail(lambda: ClusterError(self.lost_reason))
        for rec in list(self.records.values()):
            if rec.status == PENDING:
                rec.cancel_reason = self.lost_reason
                rec.finish(LOST)

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        self.reconnect.stop()
        if self.comm is not None:
            self._flush()
            self.closed = True
            self.lost_reason = "client closed"
            self.comm.close()
            for rec in list(self.records.values()):
                if rec.status == PENDING:
                    rec.cancel_reason = "the client was closed"
                    rec.finish(CANCELLED)
        self.pool.close()


def _same(error: BaseException) -> BaseException:
    return error


COORDINATE = "coordinate"   # the tag of the replies to Queue, Lock ... (a COORDINATE)
_HELLO = object()   # the tag of the REPLY to HELLO (other replies are tagged by request name)


__all__ = ["ClientConnection", "PENDING", "FINISHED", "ERROR", "CANCELLED", "LOST"]
