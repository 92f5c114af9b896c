"""The worker: a thin I/O shell around :class:`WorkerState`.

It keeps results in memory (``self.data``), runs tasks in its own threads, serves its data to
peers and clients, and fetches inputs from peers directly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sys
import threading
import time
import traceback as tb_module

from ..comm import Comm, connect, listen
from ..comm.pool import DataPool
from ..errors import ClusterError, RemoteError, SerializationError
from ..protocol import messages as m
from ..protocol.serialize import (Serialized, dump_value, dumps, is_plain, load_value, loads,
                                  loads_function, sizeof)
from ..state.worker_state import WorkerState
from . import capture

logger = logging.getLogger("nbcluster.worker")

INLINE_RESULT = 64 * 1024     # results up to this size ride with the completion message
HEARTBEAT_SECONDS = 1.0


def _exception_payload(exc: BaseException) -> tuple[Serialized, str]:
    """The exception as it travels (pickled with its traceback) and the traceback as text."""
    text = "".join(tb_module.format_exception(type(exc), exc, exc.__traceback__))
    try:
        from tblib import pickling_support

        pickling_support.install(exc)
    except Exception:
        pass
    try:
        return dumps(exc, what="exception"), text
    except Exception:
        try:
            exc.__traceback__ = None
            return dumps(exc, what="exception"), text
        except Exception:
            return dumps(RemoteError(f"{type(exc).__qualname__}: {exc}")), text


class Worker:
    def __init__(self, scheduler_address: str, nthreads: int = 1, name: str | None = None,
                 token: str | None = None, listen_address: str | None = None,
                 memory_limit: int | None = None, security=None) -> None:
        if listen_address is None:   # serve data the way the scheduler is reached
            scheme = scheduler_address.split("://", 1)[0]
            listen_address = "inproc://" if scheme == "inproc" else f"{scheme}://127.0.0.1:0"
        self.security = security
        self.scheduler_address = scheduler_address
        self.nthreads = max(1, int(nthreads))
        self.name = name
        self.token = token
        self.listen_address = listen_address
        self.memory_limit = memory_limit
        self.data: dict = {}
        self.functions: dict = {}
        self.address = ""
        self.state: WorkerState | None = None
        self.scheduler: Comm | None = None
        self.listener = None
        self.pool: DataPool | None = None
        self.finished = asyncio.Event()
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._done: list = []
        self._outputs: list = []
        self._done_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._heartbeat: asyncio.Task | None = None
        self._closing = False

    async def start(self) -> "Worker":
        self._loop = asyncio.get_running_loop()
        self.listener = await listen(self.listen_address, self._on_peer, self.token,
                                     self.security)
        self.address = self.listener.address
        self.state = WorkerState(self.address, self.nthreads)
        self.name = self.name or self.address
        identity = {"address": self.address, "nthreads": self.nthreads, "name": self.name,
                    "pid": os.getpid(), "memory_limit": self.memory_limit,
                    "host": self.address.split("://")[-1].rsplit(":", 1)[0]}
        self.pool = DataPool(self.token, {"address": self.address}, security=self.security)
        try:
            self.scheduler = await connect(self.scheduler_address, self.token,
                                           security=self.security)
        except Exception:
            self.listener.stop()
            raise
        self.scheduler.send([m.HELLO, "worker", identity])
        self.scheduler.start(self._on_scheduler_batch, self._on_scheduler_lost)
        for i in range(self.nthreads):
            t = threading.Thread(target=self._thread_main, name=f"nbcluster-task-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        self._heartbeat = asyncio.ensure_future(self._heartbeat_loop())
        capture.install()
        return self

    async def close(self, reason: str = "closing") -> None:
        if self._closing:
            return
        self._closing = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self.scheduler is not None:
            self.scheduler.close()
        if self.listener is not None:
            self.listener.stop()
        if self.pool is not None:
            self.pool.close()
        for _ in self._threads:
            self._work.put(None)
        for t in self._threads:
            await asyncio.get_running_loop().run_in_executor(None, t.join, 5)
        self.data.clear()
        self.finished.set()

    # ------------------------------------------------------------------ scheduler
    def _on_scheduler_lost(self, reason: str) -> None:
        if not self._closing:
            logger.warning("lost the scheduler at %s: %s; closing", self.scheduler_address, reason)
            asyncio.ensure_future(self.close("scheduler lost"))

    def _on_scheduler_batch(self, batch: list) -> None:
        st = self.state
        for msg in batch:
            op = m.check(msg)
            if op == m.COMPUTE:
                self._apply(st.compute(*msg[1:]))
            elif op == m.FREE:
                self._apply(st.free(msg[1]))
            elif op == m.FUNCTION:
                self._define_function(msg[1], msg[2])
            elif op == m.RUN:
                self._run_function(msg[1], msg[2], msg[3])
            elif op == m.CLOSE:
                asyncio.ensure_future(self.close(msg[1]))
            elif op == m.REPLY:
                pass
            else:
                raise m.ProtocolError(f"{op!r} is not accepted by a worker")

    def _define_function(self, token: str, blob: bytes) -> None:
        if token in self.functions:
            return
        try:
            self.functions[token] = loads_function(blob)
        except Exception as e:
            self.functions[token] = SerializationError(f"cannot unpickle the function: {e!r}")

    def _apply(self, instructions: list) -> None:
        send = self.scheduler.send
        for ins in instructions:
            kind = ins[0]
            if kind == "send":
                send(ins[1])
            elif kind == "execute":
                key = ins[1]
                ts = self.state.tasks[key]
                self._work.put((key, ts.fn, ts.args, ts.kwargs, ts.want))
            elif kind == "drop":
                data = self.data
                for key in ins[1]:
                    data.pop(key, None)
            elif kind == "fetch":
                asyncio.ensure_future(self._fetch(ins[1], ins[2]))

    # ------------------------------------------------------------------ execution
    def _thread_main(self) -> None:
        work = self._work
        while True:
            item = work.get()
            if item is None:
                return
            key = item[0]
            ts = self.state.tasks.get(key)
            if ts is None or ts.cancelled:   # freed while it waited in the executor's queue
                self._report((True, key, None, 0, 0.0, 0.0, False, None, ""))
                continue
            self._report(("started", key, time.time()))
            if not self._report(self._execute(*item)):
                return

    def _report(self, outcome: tuple) -> bool:
        """From a task thread: queue an outcome; wake the loop once per batch of them."""
        with self._done_lock:
            self._done.append(outcome)
            wake = len(self._done) == 1
        if wake:
            try:
                self._loop.call_soon_threadsafe(self._drain_done)
            except RuntimeError:   # loop closed during shutdown
                return False
        return True

    def _resolve(self, key: str):
        return self.data[key]

    def _output(self, key: str, stream: str, text: str) -> None:
        """From a task thread: forward what the task printed (coalesced per loop tick)."""
        with self._done_lock:
            self._outputs.append([m.OUTPUT, key, stream, text])
            wake = len(self._outputs) == 1
        if wake:
            try:
                self._loop.call_soon_threadsafe(self._drain_outputs)
            except RuntimeError:
                pass

    def _drain_outputs(self) -> None:
        with self._done_lock:
            outputs, self._outputs = self._outputs, []
        merged: list = []
        for msg in outputs:   # print() writes text and newline separately: join them
            if merged and merged[-1][1] == msg[1] and merged[-1][2] == msg[2]:
                merged[-1][3] += msg[3]
            else:
                merged.append(msg)
        if self.scheduler is not None:
            self.scheduler.send_many(merged)

    def _execute(self, key, fn_token, args, kwargs, want) -> tuple:
        start = time.time()
        capture.set_current_task(key, self._output)
        try:
            fn = self.functions[fn_token]
            if isinstance(fn, BaseException):
                raise fn
            if type(args) is Serialized:
                args = loads(args, self._resolve)
            if type(kwargs) is Serialized:
                kwargs = loads(kwargs, self._resolve)
            result = fn(*args, **kwargs) if kwargs else fn(*args)
        except BaseException as e:  # noqa: BLE001 - a task's failure, whatever it is, goes back
            if e.__traceback__ is not None and e.__traceback__.tb_next is not None:
                e.__traceback__ = e.__traceback__.tb_next   # start at the user's frame
            exc, text = _exception_payload(e)
            return (False, key, exc, text, start, time.time())
        finally:
            capture.set_current_task(None)
        stop = time.time()
        has_value, value = False, None
        if want:
            if is_plain(result):
                has_value, value = True, result
            elif sizeof(result) <= INLINE_RESULT:
                try:
                    value = dumps(result, what=f"the result of {key!r}")
                except SerializationError as e:
                    exc, text = _exception_payload(e)
                    return (False, key, exc, text, start, stop)
                has_value = value.nbytes <= INLINE_RESULT
                if not has_value:
                    value = None
        return (True, key, result, sizeof(result), start, stop, has_value, value,
                type(result).__name__)

    def _drain_done(self) -> None:
        with self._done_lock:
            done, self._done = self._done, []
        st = self.state
        data = self.data
        finished = {o[1] for o in done if o[0] != "started"}
        for outcome in done:
            if outcome[0] == "started":
                if outcome[1] not in finished:   # still running: tell the scheduler
                    self.scheduler.send([m.STARTED, outcome[1], outcome[2]])
            elif outcome[0]:
                _, key, result, nbytes, start, stop, has_value, value, typ = outcome
                data[key] = result
                self._apply(st.task_finished(key, nbytes, start, stop, has_value, value, typ))
            else:
                _, key, exc, text, start, stop = outcome
                self._apply(st.task_failed(key, exc, text, start, stop))

    # ------------------------------------------------------------------ data transfer
    async def _fetch(self, peer: str, keys: list) -> None:
        try:
            values, missing, errors = await self.pool.get_data(peer, keys)
        except Exception as e:
            logger.info("fetch of %d keys from %s failed: %r", len(keys), peer, e)
            self._apply(self.state.fetch_failed(peer, keys))
            return
        nbytes = {}
        for key, value in values.items():
            try:
                self.data[key] = obj = load_value(value)
            except Exception as e:
                errors[key] = f"cannot unpickle {key!r} from {peer}: {e}"
                continue
            nbytes[key] = sizeof(obj)
        for key, text in errors.items():
            self._apply(self.state.fetch_errored(key, _exception_payload(SerializationError(text))))
        self._apply(self.state.fetch_done(peer, nbytes, missing))

    def _on_peer(self, comm: Comm) -> None:
        def on_batch(batch):
            for msg in batch:
                op = m.check(msg)
                if op == m.GET_DATA:
                    comm.send(self._get_data(msg[1], msg[2]))
                elif op == m.PUT_DATA:
                    comm.send(self._put_data(msg[1], msg[2]))
                elif op != m.HELLO:
                    raise m.ProtocolError(f"{op!r} is not accepted from a peer")

        comm.start(on_batch, lambda reason: None)

    def _get_data(self, request_id, keys) -> list:
        values, missing, errors = {}, [], {}
        data = self.data
        for key in keys:
            if key not in data:
                missing.append(key)
                continue
            try:
                values[key] = dump_value(data[key], what=f"the result of {key!r}")
            except SerializationError as e:
                errors[key] = str(e)
        extra = {"missing": missing, "errors": errors} if errors else missing
        return [m.DATA, request_id, values, extra]

    def _put_data(self, request_id, values) -> list:
        nbytes = {}
        for key, value in values.items():
            self.data[key] = obj = load_value(value)
            nbytes[key] = sizeof(obj)
        self._apply(self.state.data_added(nbytes))
        return [m.REPLY, request_id, True, nbytes]

    # ------------------------------------------------------------------ run and heartbeat
    def _run_function(self, request_id, blob, args) -> None:
        def run():
            try:
                fn = loads_function(blob)
                result = fn(*(args or ()))
                payload = (True, dump_value(result, what="the result of run"))
            except BaseException as e:  # noqa: BLE001
                payload = (False, _exception_payload(e)[0])
            self._loop.call_soon_threadsafe(
                self.scheduler.send, [m.RUN_RESULT, request_id, payload[0], payload[1]])

        threading.Thread(target=run, name="nbcluster-run", daemon=True).start()

    async def _heartbeat_loop(self) -> None:
        import psutil

        proc = psutil.Process()
        while not self._closing:
            try:
                metrics = {"rss": proc.memory_info().rss, "cpu": proc.cpu_percent(),
                           "nbytes": self.state.nbytes, "executing": len(self.state.executing),
                           "ready": len(self.state.ready), "time": time.time()}
                self.scheduler.send([m.HEARTBEAT, metrics])
            except Exception:  # metrics are best effort
                logger.debug("heartbeat failed", exc_info=True)
            await asyncio.sleep(HEARTBEAT_SECONDS)


async def run_worker(scheduler_address: str, **kwargs) -> None:
    """Run a worker until the scheduler tells it to stop or goes away."""
    worker = Worker(scheduler_address, **kwargs)
    try:
        await worker.start()
    except Exception as e:
        raise ClusterError(f"worker could not join the scheduler at {scheduler_address}: {e}") from e
    print(f"nbcluster worker {worker.address} joined {scheduler_address}", file=sys.stderr, flush=True)
    await worker.finished.wait()
