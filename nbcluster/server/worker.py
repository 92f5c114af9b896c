"""The worker: a thin I/O shell around :class:`WorkerState`.

It keeps results in memory (``self.data``), runs tasks in its own threads, serves its data to
peers and clients, and fetches inputs from peers directly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time

from ..comm import Comm, connect, listen
from ..comm.pool import DataPool
from ..config import MEMORY_EXIT_CODE, check_fraction
from ..loop_thread import close_on_sigterm
from ..errors import ClusterError, SerializationError
from ..protocol import messages as m
from ..protocol.serialize import dump_value, load_value, loads_function, sizeof
from ..state.worker_state import PAUSE_AT, SPILL_AT, TERMINATE_AT, WorkerState
from . import capture
from .executor import Executor, exception_payload, result_error, work_for
from .spill import Spilled, SpillStore

logger = logging.getLogger("nbcluster.worker")

HEARTBEAT_SECONDS = 1.0
MEMORY_CHECK_SECONDS = 0.1   # only with a memory limit; psutil's rss read costs ~20 us
TERMINATE_GRACE_SECONDS = 0.05   # time for the last words to leave before the process exits


class Worker:
    def __init__(self, scheduler_address: str, nthreads: int = 1, name: str | None = None,
                 token: str | None = None, listen_address: str | None = None,
                 memory_limit: int | None = None, security=None,
                 queues: list[str] | None = None, memory_pause: float | None = PAUSE_AT,
                 memory_terminate: float | None = TERMINATE_AT,
                 memory_spill: float | None = SPILL_AT, spill_dir: str | None = None) -> None:
        if listen_address is None:   # serve data the way the scheduler is reached
            scheme = scheduler_address.split("://", 1)[0]
            listen_address = "inproc://" if scheme == "inproc" else f"{scheme}://127.0.0.1:0"
        self.security = security
        self.queues = list(queues) if queues else ["default"]
        self.scheduler_address = scheduler_address
        self.nthreads = max(1, int(nthreads))
        self.name = name
        self.token = token
        self.listen_address = listen_address
        self.memory_limit = memory_limit
        self.memory_pause = check_fraction("memory_pause", memory_pause)
        self.memory_terminate = check_fraction("memory_terminate", memory_terminate)
        self.memory_spill = check_fraction("memory_spill", memory_spill)
        self.spill = SpillStore(spill_dir)
        self._loaded: dict = {}     # key -> (marker, value) being taken back into memory
        self.data: dict = {}
        self.functions: dict = {}
        self.address = ""
        self.state: WorkerState | None = None
        self.scheduler: Comm | None = None
        self.listener = None
        self.pool: DataPool | None = None
        self.finished = asyncio.Event()
        self.executor: Executor | None = None
        self.exit_when_stuck = False      # set in LocalCluster's worker processes
        self.own_process = False          # the process is this worker's alone (may exit)
        self._outputs: list = []
        self._partial: dict[tuple[str, str], str] = {}   # printed text not yet ending a line
        self._announced: set[str] = set()    # STARTED sent when handed to an idle thread
        self._done_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._heartbeat: asyncio.Task | None = None
        self._memory_watch: asyncio.Task | None = None
        self._over_limit_told = False
        self._terminating = False
        self._closing = False

    async def start(self) -> "Worker":
        self._loop = asyncio.get_running_loop()
        self.listener = await listen(self.listen_address, self._on_peer, self.token,
                                     self.security)
        self.address = self.listener.address
        self.state = WorkerState(self.address, self.nthreads, self.memory_limit,
                                 self.memory_pause, self.memory_terminate, self.memory_spill)
        self.name = self.name or self.address
        identity = {"address": self.address, "nthreads": self.nthreads, "name": self.name,
                    "pid": os.getpid(), "memory_limit": self.memory_limit,
                    "host": self.address.split("://")[-1].rsplit(":", 1)[0],
                    "queues": self.queues}
        self.pool = DataPool(self.token, {"address": self.address}, security=self.security)
        try:
            self.scheduler = await connect(self.scheduler_address, self.token,
                                           security=self.security)
        except Exception:
            self.listener.stop()
            raise
        # ready before the hello: the scheduler may send work in the same batch as its answer
        self.executor = Executor(self.nthreads, self._loop, self.functions, self.data,
                                 self._on_outcomes, self._output, self._is_cancelled,
                                 self._on_stuck, self._task_ended)
        if self.state.spill_limit is not None:
            self.executor.on_unspilled = self._read_back
        self._hello: asyncio.Future = self._loop.create_future()
        self.scheduler.send([m.HELLO, "worker", identity])
        self.scheduler.start(self._on_scheduler_batch, self._on_scheduler_lost)
        try:   # the scheduler may refuse us (a misspelt queue): fail start with its reason
            ok, reason = await asyncio.wait_for(self._hello, 30)
        except (asyncio.TimeoutError, ConnectionError) as e:
            ok, reason = False, f"no answer to hello: {e!r}"
        if not ok:
            self.listener.stop()
            self.scheduler.abort("refused")
            self.executor.close()
            raise ClusterError(str(reason))
        self._heartbeat = asyncio.ensure_future(self._heartbeat_loop())
        if self.memory_limit and (self.memory_pause or self.memory_terminate):
            self._memory_watch = asyncio.ensure_future(self._memory_loop())
        capture.install()
        return self

    async def close(self, reason: str = "closing") -> None:
        if self._closing:
            return
        self._closing = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self._memory_watch is not None:
            self._memory_watch.cancel()
        if self.scheduler is not None:
            self.scheduler.close()
        if self.listener is not None:
            self.listener.stop()
        if self.pool is not None:
            self.pool.close()
        if self.executor is not None:
            for t in self.executor.close():
                await asyncio.get_running_loop().run_in_executor(None, t.join, 5)
        self.data.clear()
        self.spill.close()
        self.finished.set()

    # ------------------------------------------------------------------ scheduler
    def _on_scheduler_lost(self, reason: str) -> None:
        if not self._hello.done():
            self._hello.set_result((False, f"the scheduler closed the connection: {reason}"))
            return
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
                if msg[1] == 0 and not self._hello.done():
                    self._hello.set_result((msg[2], msg[3]))
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
                work = work_for(ins[1], self.state.tasks[ins[1]])
                if self.executor.will_start_now():
                    # Announce it before a thread can run it: a task that kills the process
                    # must still be counted against (KilledWorkerError after 3 deaths).
                    send([m.STARTED, work.key, time.time(), self.state.tasks[work.key].run_id])
                    self._announced.add(work.key)
                    self._loop.call_soon(self.executor.submit, work)   # after the flush
                else:
                    self.executor.submit(work)
            elif kind == "drop":
                data = self.data
                for key in ins[1]:
                    value = data.pop(key, None)
                    if type(value) is Spilled:
                        self.spill.remove(value)
            elif kind == "fetch":
                asyncio.ensure_future(self._fetch(ins[1], ins[2]))
            elif kind == "stop":
                self.executor.stop_task(ins[1])
            elif kind == "terminate":
                self._terminate(ins[1])
            elif kind == "spill":
                self._spill(ins[1])
            elif kind == "unspill":
                marker, value = self._loaded.pop(ins[1])
                self.data[ins[1]] = value
                self.spill.remove(marker)

    # ------------------------------------------------------------------ execution
    def _is_cancelled(self, key: str) -> bool:
        ts = self.state.tasks.get(key)        # read from a task thread: a benign race
        return ts is None or ts.cancelled

    def _output(self, key: str, stream: str, text: str) -> None:
        """From a task thread: forward what the task printed, whole lines at a time (print
        writes its parts separately), coalesced per loop tick; the rest at the task's end."""
        with self._done_lock:
            held = self._partial.pop((key, stream), "") + text
            cut = held.rfind("\n") + 1
            if cut == 0 and len(held) < 4096:
                self._partial[(key, stream)] = held
                return
            if cut and cut < len(held):
                self._partial[(key, stream)] = held[cut:]
                held = held[:cut]
            self._outputs.append([m.OUTPUT, key, stream, held])
            wake = len(self._outputs) == 1
        if wake:
            try:
                self._loop.call_soon_threadsafe(self._drain_outputs)
            except RuntimeError:
                pass

    def _task_ended(self, key: str) -> None:
        """From a task thread, as a task ends: send what it printed without a final newline."""
        if self._partial:
            for stream in ("stdout", "stderr", "log"):
                with self._done_lock:
                    rest = self._partial.pop((key, stream), None)
                if rest:
                    self._output(key, stream, rest + "\n")

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

    def _on_outcomes(self, done: list) -> None:
        if self._outputs:
            self._drain_outputs()     # what a task printed goes before its result
        st = self.state
        data = self.data
        finished = {o[1] for o in done if o[0] != "started"}
        for outcome in done:
            if outcome[0] == "started":
                if outcome[1] in self._announced:
                    self._announced.discard(outcome[1])
                elif outcome[1] not in finished:   # still running: tell the scheduler
                    ts = st.tasks.get(outcome[1])
                    if ts is not None:
                        self.scheduler.send([m.STARTED, outcome[1], outcome[2], ts.run_id])
            elif outcome[0]:
                _, key, result, nbytes, start, stop, has_value, value, typ = outcome
                data[key] = result
                self._apply(st.task_finished(key, nbytes, start, stop, has_value, value, typ))
            else:
                _, key, exc, text, start, stop, retry = outcome
                self._apply(st.task_failed(key, exc, text, start, stop, retry))

    def _on_stuck(self, key: str) -> None:
        """A task would not stop: a worker process exits (its cluster replaces it); an
        in-process worker has already moved on to a fresh thread."""
        if self.exit_when_stuck and not self._closing:
            logger.warning("task %s does not stop; this worker exits so it can be replaced", key)
            asyncio.ensure_future(self.close("stuck task"))

    # ------------------------------------------------------------------ spilling
    def _spill(self, keys: list) -> None:
        data, tasks = self.data, self.state.tasks
        for key in keys:
            value = data.get(key)
            if value is not None and type(value) is not Spilled:
                self.spill.write_later(key, value, tasks[key].nbytes, self._spill_written)

    def _read_back(self, key, marker, value) -> None:
        """From a task thread: a spilled input was loaded; offer it back to memory."""
        try:
            self._loop.call_soon_threadsafe(self._unspilled, key, marker, value)
        except RuntimeError:     # loop closed: the worker is gone
            pass

    def _unspilled(self, key, marker, value) -> None:
        if self.data.get(key) is not marker:     # dropped, or read back by another task
            return
        self._loaded[key] = (marker, value)
        self._apply(self.state.unspilled(key))
        self._loaded.pop(key, None)              # not taken: it stays on disk

    def _spill_written(self, key, value, marker, error) -> None:
        """On the spill thread: hand the outcome to the event loop."""
        try:
            self._loop.call_soon_threadsafe(self._spill_done, key, value, marker, error)
        except RuntimeError:     # loop closed: the worker is gone
            pass

    def _spill_done(self, key, value, marker, error) -> None:
        if marker is None:               # not written: a plain value, or an error
            self.spill.kept_in_memory(key, error)
            self._apply(self.state.spill_failed(key))
        else:
            if self.data.get(key) is value:
                self.data[key] = marker  # the value itself is freed (unless a task holds it)
            else:                        # dropped or replaced while it was written
                self.spill.remove(marker)
            self._apply(self.state.spill_written(key))

    # ------------------------------------------------------------------ data transfer
    async def _fetch(self, peer: str, keys: list) -> None:
        start = time.time()
        try:
            values, missing, errors = await self.pool.get_data(peer, keys)
        except Exception as e:
            logger.info("fetch of %d keys from %s failed: %r", len(keys), peer, e)
            self._apply(self.state.fetch_failed(peer, keys))
            return
        nbytes = {}
        for key, value in values.items():
            held = self.data.get(key)
            if held is not None:     # computed or fetched here meanwhile: keep that copy
                nbytes[key] = held.nbytes if type(held) is Spilled else sizeof(held)
                continue
            try:
                self.data[key] = obj = load_value(value)
            except Exception as e:
                errors[key] = f"cannot unpickle {key!r} from {peer}: {e}"
                continue
            nbytes[key] = sizeof(obj)
        stop = time.time()
        if nbytes:   # for the dashboard's task stream: one mark per transfer
            self.scheduler.send([m.TRANSFERS, [[k, peer, start, stop, n] for k, n in nbytes.items()]])
        for key, text in errors.items():
            self._apply(self.state.fetch_errored(key, exception_payload(SerializationError(text))))
        self._apply(self.state.fetch_done(peer, nbytes, missing))

    def _on_peer(self, comm: Comm) -> None:
        def on_batch(batch):
            for msg in batch:
                op = m.check(msg)
                if op == m.GET_DATA:
                    if any(type(self.data.get(k)) is Spilled for k in msg[2]):
                        asyncio.ensure_future(self._get_data_from_disk(comm, msg[1], msg[2]))
                    else:
                        comm.send(self._get_data(msg[1], msg[2]))
                elif op == m.PUT_DATA:
                    comm.send(self._put_data(msg[1], msg[2]))
                elif op != m.HELLO:
                    raise m.ProtocolError(f"{op!r} is not accepted from a peer")

        comm.start(on_batch, lambda reason: None)

    async def _get_data_from_disk(self, comm: Comm, request_id, keys) -> None:
        """Some of the values asked for are on disk: read them off the event loop."""
        spilled = {k: v for k in keys if type(v := self.data.get(k)) is Spilled}
        read = await asyncio.get_running_loop().run_in_executor(None, _read_spilled, spilled)
        comm.send(self._get_data(request_id, keys, read))

    def _get_data(self, request_id, keys, read: dict | None = None) -> list:
        values, missing, errors = {}, [], {}
        data = self.data
        for key in keys:
            if read is not None and key in read and key in data:
                if read[key] is None:            # its file went with the key meanwhile
                    missing.append(key)
                else:
                    values[key] = read[key]
                continue
            if key not in data:
                missing.append(key)
                continue
            try:
                value = data[key]
                values[key] = value.serialized() if type(value) is Spilled else \
                    dump_value(value, what=f"the result of {key!r}")
            except SerializationError as e:
                errors[key] = str(e)
            except OSError:                      # a spill file removed under us
                missing.append(key)
            except BaseException as e:  # noqa: BLE001 - SystemExit from a __reduce__: a reply
                errors[key] = str(result_error(key, data.get(key), e))
        return [m.DATA, request_id, values, missing, errors]

    def _put_data(self, request_id, values) -> list:
        refused = self.state.refuses_data(values)
        if refused:
            return [m.REPLY, request_id, False,
                    f"{', '.join(map(repr, refused))} already name tasks on this worker"]
        nbytes = {}
        for key, value in values.items():
            if type(self.data.get(key)) is Spilled:
                self.spill.remove(self.data[key])
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
                payload = (False, exception_payload(e)[0])
            self._loop.call_soon_threadsafe(
                self.scheduler.send, [m.RUN_RESULT, request_id, payload[0], payload[1]])

        threading.Thread(target=run, name="nbcluster-run", daemon=True).start()

    async def _heartbeat_loop(self) -> None:
        import psutil

        proc = psutil.Process()
        while not self._closing:
            try:
                metrics = {"rss": proc.memory_info().rss, "cpu": proc.cpu_percent(),
                           "nbytes": self.state.nbytes, "spilled": self.state.spilled,
                           "executing": len(self.state.executing),
                           "ready": len(self.state.ready), "time": time.time()}
                self.scheduler.send([m.HEARTBEAT, metrics])
            except Exception:  # metrics are best effort
                logger.debug("heartbeat failed", exc_info=True)
            await asyncio.sleep(HEARTBEAT_SECONDS)


    async def _memory_loop(self) -> None:
        """Measure the process's memory often enough to pause before it runs out."""
        import psutil

        proc = psutil.Process()
        while not self._closing:
            try:
                self._apply(self.state.memory_used(proc.memory_info().rss))
            except psutil.Error:
                logger.debug("memory measurement failed", exc_info=True)
            await asyncio.sleep(MEMORY_CHECK_SECONDS)

    def set_memory_limit(self, limit: int | None) -> None:
        """On the loop: a new memory limit (LocalCluster re-divides the machine's memory
        among its workers when it scales); the scheduler hears of it."""
        if self._closing or self.state is None:
            return
        self.memory_limit = limit or None
        self._apply(self.state.set_memory_limit(self.memory_limit))
        if self.state.spill_limit is not None:
            self.executor.on_unspilled = self._read_back
        if self.memory_limit and (self.memory_pause or self.memory_terminate) \
                and self._memory_watch is None and not self._closing:
            self._memory_watch = asyncio.ensure_future(self._memory_loop())

    def _terminate(self, reason: str) -> None:
        if not self.own_process:
            # a worker thread in the user's process cannot be replaced: stay, but say so once
            if not self._over_limit_told:
                self._over_limit_told = True
                logger.warning("worker %s: %s; an in-process worker cannot be restarted",
                               self.address, reason)
            return
        if self._terminating:
            return
        self._terminating = True
        # as an out-of-memory kill would, but with the reason: LocalCluster starts a
        # replacement and the scheduler recomputes what was lost from lineage (and names the
        # reason if a task keeps doing this)
        print(f"nbcluster worker {self.address} terminating: {reason}", file=sys.stderr,
              flush=True)
        self.scheduler.send([m.STATUS, "terminating", reason])
        self._loop.call_later(TERMINATE_GRACE_SECONDS, os._exit, MEMORY_EXIT_CODE)


def _read_spilled(spilled: dict) -> dict:
    """On a thread: the wire form of each spilled value, None if its file is gone."""
    read = {}
    for key, marker in spilled.items():
        try:
            read[key] = marker.serialized()
        except OSError:
            read[key] = None
    return read


async def run_worker(scheduler_address: str, **kwargs) -> None:
    """Run a worker until the scheduler tells it to stop or goes away."""
    worker = Worker(scheduler_address, **kwargs)
    # a process of its own: memory over the limit ends it (as the kernel's OOM killer would,
    # but first); whoever started it, such as SSHCluster, starts another
    worker.own_process = True
    try:
        await worker.start()
    except Exception as e:
        raise ClusterError(f"worker could not join the scheduler at {scheduler_address}: {e}") from e
    print(f"nbcluster worker {worker.address} joined {scheduler_address}", file=sys.stderr, flush=True)
    close_on_sigterm(lambda: worker.close("SIGTERM"))
    await worker.finished.wait()
