"""The worker: a thin I/O shell around :class:`WorkerState`.

It keeps results in memory (``self.data``), runs tasks in its own threads, serves its data to
peers and clients, and fetches inputs from peers directly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any, Callable

from ..comm import Comm, Listener, advertised, connect, listen
from ..comm.pool import DataPool
from ..config import check_fraction, parse_resources
from ..versions import versions
from ..errors import ClusterError, SerializationError
from ..protocol import messages as m
from ..protocol.serialize import dump_value, loads_function

from ..state.instructions import (Drop, Execute, Fetch, Instruction, Log, Resume, Send, Spill,
                                  Stop, Terminate, Unspill)
from ..state.invariants import check_worker, shell_check
from ..state.model import HEARTBEAT_SECONDS
from ..state.worker_state import PAUSE_AT, SPILL_AT, TERMINATE_AT, WorkerState
from . import capture, worker_data, worker_health, worker_setup
from .executor import Executor, exception_payload
from .worker_reconnect import SchedulerLink
from .spill import Spilled, SpillStore
from .worker_outcomes import (InputReadBack, Outcome, TaskFailed, TaskFinished, TaskSeceded,
                              TaskStarted)
from .worker_output import TaskOutput

logger = logging.getLogger("nbcluster.worker")


class Worker:
    def __init__(self, scheduler_address: str, nthreads: int = 1, name: str | None = None,
                 token: str | None = None, listen_address: str | None = None,
                 memory_limit: int | None = None, security=None,
                 queues: list[str] | None = None, memory_pause: float | None = PAUSE_AT,
                 memory_terminate: float | None = TERMINATE_AT,
                 memory_spill: float | None = SPILL_AT, spill_dir: str | None = None,
                 reconnect_timeout: float | None = None, heartbeat_timeout: float = 30.0,
                 contact_address: str | None = None,
                 resources: dict[str, float] | str | None = None) -> None:
        if listen_address is None:   # serve data the way the scheduler is reached
            scheme = scheduler_address.split("://", 1)[0]
            listen_address = "inproc://" if scheme == "inproc" else f"{scheme}://127.0.0.1:0"
        self.security = security
        self.queues = list(queues) if queues else ["default"]
        self.resources = parse_resources(resources)   # e.g. {"GPU": 1}: see state/resources.py
        self.scheduler_address = scheduler_address
        self.nthreads = max(1, int(nthreads))
        self.name = name
        self.token = token
        self.listen_address = listen_address
        self.contact_address = contact_address   # what peers are told (default: as bound)
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
        self.listener: Listener | None = None
        self.pool: DataPool | None = None
        self.finished = asyncio.Event()
        self.executor: Executor | None = None
        self.exit_when_stuck = False      # set in LocalCluster's worker processes
        self.own_process = False          # the process is this worker's alone (may exit)
        self.output: TaskOutput | None = None
        self._started: list[TaskStarted] = []   # handled after the ends of the same batch
        # how each instruction of the state machine, and each outcome of the executor, is
        # carried out, and each message from the scheduler handled: one handler per record type
        self._do: dict[type, Callable[[Any], None]] = {
            Send: self._send, Execute: self._execute, Drop: self._drop, Fetch: self._fetch,
            Stop: self._stop, Resume: self._resume, Terminate: lambda ins: worker_health.terminate(self, ins),
            Spill: self._spill, Unspill: self._unspill,
            Log: lambda ins: logger.warning("%s", ins.text)}
        self._on: dict[type, Callable[[Any], None]] = {
            TaskFinished: self._finished, TaskFailed: self._failed,
            TaskStarted: self._started.append, InputReadBack: self._read_back,
            TaskSeceded: lambda o: self.apply((self._state.task_rejoined if o.rejoined else
                                               self._state.task_seceded)(o.key))}
        self._from_scheduler: dict[type, Callable[[Any], None]] = {
            m.Compute: self._on_compute, m.Free: self._on_free, m.Function: self._define_function,
            m.ForgetFunctions: self._forget_functions,
            m.Run: self._run_function, m.Close: self._on_close_message, m.Reply: self._on_reply,
            m.Settings: self._on_settings, m.Setup: lambda msg: worker_setup.on_setup(self, msg),
            m.Replicate: lambda msg: self.apply(self._state.replicate(msg.source, msg.keys))}
        self.heartbeat_seconds = HEARTBEAT_SECONDS
        self._loop: asyncio.AbstractEventLoop | None = None
        self._heartbeat: asyncio.Task | None = None
        self._memory_watch: asyncio.Task | None = None
        self._over_limit_told = False
        self._terminating = False
        self._closing = False
        self.close_reason = ""
        self._check = shell_check(check_worker, os.environ.get("NBCLUSTER_VALIDATE") == "1")
        # keepalive, and joining the scheduler again when the connection is lost
        self.link = SchedulerLink(self, reconnect_timeout, heartbeat_timeout)
        self.identity: dict[str, Any] = {}
        self.setups = worker_setup.Setups()   # run before tasks; the tasks' own client
        self._hello: asyncio.Future     # the answer to the last HELLO (link.attach)

    # What start() sets up, for the code that runs only after it (handlers, instructions).
    @property
    def _state(self) -> WorkerState:
        assert self.state is not None, "the worker has not started"
        return self.state

    @property
    def _scheduler(self) -> Comm:
        assert self.scheduler is not None, "the worker has not started"
        return self.scheduler

    @property
    def _executor(self) -> Executor:
        assert self.executor is not None, "the worker has not started"
        return self.executor

    @property
    def _output(self) -> TaskOutput:
        assert self.output is not None, "the worker has not started"
        return self.output

    @property
    def _running_loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "the worker has not started"
        return self._loop

    async def start(self) -> "Worker":
        self._loop = asyncio.get_running_loop()
        self.listener = await listen(self.listen_address, self._on_peer, self.token,
                                     self.security)
        # a wildcard bind advertises this machine's address on the route to the scheduler
        self.address = advertised(self.listener.address, self.contact_address,
                                  self.scheduler_address)
        self.state = WorkerState(self.address, self.nthreads, self.memory_limit,
                                 self.memory_pause, self.memory_terminate, self.memory_spill)
        self.name = self.name or self.address
        self.identity = {"address": self.address, "nthreads": self.nthreads, "name": self.name,
                         "pid": os.getpid(), "host": self.address.split("://")[-1].rsplit(":", 1)[0],
                         "queues": self.queues, "versions": versions(),
                         "resources": self.resources}
        self.pool = DataPool(self.token, {"address": self.address}, security=self.security)
        try:
            self.scheduler = await connect(self.scheduler_address, self.token,
                                           security=self.security)
        except Exception:
            self.listener.stop()
            raise
        # executor ready before the hello: the scheduler may send work with its answer
        hello = self.link.attach(self.scheduler)
        try:   # the scheduler may refuse us (a misspelt queue): fail start with its reason
            ok, reason = await asyncio.wait_for(hello, 30)
        except (asyncio.TimeoutError, ConnectionError) as e:
            ok, reason = False, f"no answer to hello: {e!r}"
        if not ok:
            self.listener.stop()
            self.scheduler.abort("refused")
            self._executor.close()
            raise ClusterError(str(reason))
        self.link.joined(reason)
        self._heartbeat = asyncio.ensure_future(worker_health.heartbeat_loop(self))
        if self._watches_memory():
            self._memory_watch = asyncio.ensure_future(worker_health.memory_loop(self))
        capture.install()
        return self

    async def close(self, reason: str = "closing") -> None:
        if self._closing:
            return
        self._closing = True
        self.close_reason = reason
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
        retired = self.link.stop()
        await worker_setup.close(self)   # its tasks' client: seceded tasks waiting on it end
        if self.executor is not None:
            for t in self.executor.close() + retired:
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
            self.link.lost(reason)

    def _on_scheduler_batch(self, batch: list[m.Message]) -> None:
        self.link.last_heard = time.monotonic()   # any message is a sign of life
        handlers = self._from_scheduler
        for msg in batch:
            handler = handlers.get(type(msg))
            if handler is None:
                raise m.ProtocolError(f"{type(msg).__name__} is not accepted by a worker")
            handler(msg)

    def _on_compute(self, msg: m.Compute) -> None:
        self.apply(self._state.compute(msg))

    def _on_free(self, msg: m.Free) -> None:
        self.apply(self._state.free(msg.keys, msg.runs))

    def _on_close_message(self, msg: m.Close) -> None:
        asyncio.ensure_future(self.close(msg.reason))

    def _on_settings(self, msg: m.Settings) -> None:
        self.heartbeat_seconds = msg.heartbeat

    def _on_reply(self, msg: m.Reply) -> None:
        if msg.request_id == 0 and not self._hello.done():   # the answer to our hello
            self._hello.set_result((msg.ok, msg.result))

    def _define_function(self, msg: m.Function) -> None:
        token = msg.token
        if token in self.functions:
            return
        try:
            self.functions[token] = loads_function(msg.blob)
        except Exception as e:
            self.functions[token] = SerializationError(f"cannot unpickle the function: {e!r}")

    def _forget_functions(self, msg: m.ForgetFunctions) -> None:
        # no task here needs them (the scheduler freed those first); one handed to the
        # executor holds its own (see _execute)
        for token in msg.tokens:
            self.functions.pop(token, None)

    # ------------------------------------------------------------------ instructions
    def apply(self, instructions: list[Instruction]) -> None:
        """Carry out what the state machine decided, in order."""
        do = self._do
        for ins in instructions:
            do[type(ins)](ins)
        self._check(self.state)   # debug mode (NBCLUSTER_VALIDATE=1): after every batch

    def _send(self, ins: Send) -> None:
        self._scheduler.send(ins.msg)

    def _execute(self, ins: Execute) -> None:
        fn = self.functions.get(ins.fn_token)   # now: a FORGET-FUNCTIONS may follow
        if ins.announce:
            # STARTED leaves before a thread can run the task: a task that kills the process
            # must still be counted against (KilledWorkerError after 3 deaths)
            self._scheduler.send(m.Started(ins.key, time.time(), ins.run))
            self._running_loop.call_soon(self._executor.submit, ins, fn)   # after the flush
        else:
            self._executor.submit(ins, fn)

    def _drop(self, ins: Drop) -> None:
        data = self.data
        for key in ins.keys:
            value = data.pop(key, None)
            if type(value) is Spilled:
                self.spill.remove(value)

    def _fetch(self, ins: Fetch) -> None:
        asyncio.ensure_future(worker_data.fetch(self, ins.peer, ins.keys))

    def _stop(self, ins: Stop) -> None:
        self._executor.cancel(ins.key)

    def _resume(self, ins: Resume) -> None:
        self._executor.resume(ins.key)

    def _spill(self, ins: Spill) -> None:
        data = self.data
        for key, nbytes in ins.nbytes.items():
            value = data.get(key)
            if value is not None and type(value) is not Spilled:
                self.spill.write_later(key, value, nbytes, self._spill_written)

    def _unspill(self, ins: Unspill) -> None:
        marker, value = self._loaded.pop(ins.key)
        self.data[ins.key] = value
        self.spill.remove(marker)

    # ------------------------------------------------------------------ executor outcomes
    def _on_outcomes(self, done: list[Outcome]) -> None:
        if self._output.queued:
            self._output.drain()     # what a task printed goes before its result
        on = self._on
        for outcome in done:
            on[type(outcome)](outcome)
        # Starts after the ends of the same batch: a task that has ended needs no STARTED.
        started = self._started
        if started:
            for o in started:
                self.apply(self._state.task_started(o.key, o.start))
            started.clear()

    def _finished(self, o: TaskFinished) -> None:
        self.data[o.key] = o.result
        self.apply(self._state.task_finished(o.key, o.nbytes, o.start, o.stop, o.has_value,
                                            o.value, o.type_name))
        worker_health.result_stored(self, o.nbytes)

    def _failed(self, o: TaskFailed) -> None:
        self.apply(self._state.task_failed(o.key, o.exception, o.traceback, o.start, o.stop,
                                          o.retry))

    def _on_stuck(self, key: str) -> None:
        """A task would not stop: a worker process exits (its cluster replaces it); an
        in-process worker has already moved on to a fresh thread."""
        if self.exit_when_stuck and not self._closing:
            logger.warning("task %s does not stop; this worker exits so it can be replaced", key)
            asyncio.ensure_future(self.close("stuck task"))

    # ------------------------------------------------------------------ spilling
    def _read_back(self, o: InputReadBack) -> None:
        """A task loaded a spilled input: the state decides whether it stays in memory."""
        if self.data.get(o.key) is not o.marker:     # dropped, or read back by another task
            return
        self._loaded[o.key] = (o.marker, o.value)
        self.apply(self._state.unspilled(o.key))
        self._loaded.pop(o.key, None)              # not taken: it stays on disk

    def _spill_written(self, key, value, marker, error) -> None:
        """On the spill thread: hand the outcome to the event loop."""
        try:
            self._running_loop.call_soon_threadsafe(self._spill_done, key, value, marker, error)
        except RuntimeError:     # loop closed: the worker is gone
            pass

    def _spill_done(self, key, value, marker, error) -> None:
        if marker is None:               # not written: a plain value, or an error
            self.spill.kept_in_memory(key, error)
            self.apply(self._state.spill_failed(key))
        else:
            if self.data.get(key) is value:
                self.data[key] = marker  # the value itself is freed (unless a task holds it)
            else:                        # dropped or replaced while it was written
                self.spill.remove(marker)
            self.apply(self._state.spill_written(key))

    def _on_peer(self, comm: Comm) -> None:
        worker_data.serve(self, comm)

    # ------------------------------------------------------------------ run and heartbeat
    def _run_function(self, msg: m.Run) -> None:
        request_id, comm = msg.request_id, self._scheduler   # answered where it was asked

        def run() -> None:
            try:
                fn = loads_function(msg.blob)
                result = fn(*(msg.args or ()))
                payload = (True, dump_value(result, what="the result of run"))
            except BaseException as e:  # noqa: BLE001
                payload = (False, exception_payload(e)[0])
            self._running_loop.call_soon_threadsafe(
                comm.send, m.RunResult(request_id, payload[0], payload[1]))

        threading.Thread(target=run, name="nbcluster-run", daemon=True).start()

    def _watches_memory(self) -> bool:
        return bool(self.memory_limit and (self.memory_pause or self.memory_terminate
                                           or self.memory_spill))

    def set_memory_limit(self, limit: int | None) -> None:
        """On the loop: a new memory limit (LocalCluster re-divides the machine's memory
        among its workers when it scales); the scheduler hears of it."""
        if self._closing or self.state is None:
            return
        self.memory_limit = limit or None
        self.apply(self.state.set_memory_limit(self.memory_limit))
        if self._watches_memory() and self._memory_watch is None and not self._closing:
            self._memory_watch = asyncio.ensure_future(worker_health.memory_loop(self))
