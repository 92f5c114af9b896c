"""Every message type, declared once, as a typed record.

A record is the message's schema, its validator and its handler's signature. On the wire it is
a compact msgpack array ``[op, *fields]`` (``op`` is the record's tag); a batch (one write on a
connection) is an array of messages. Decoding (``nbcluster.protocol.framing``) checks every
field's type against these declarations, so a state machine only ever sees well-formed records.
User data is a ``Serialized`` (fields typed ``Any``) or a plain msgpack value.

Handlers are tables keyed by record type (``{Submit: on_submit, ...}``), one style everywhere.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

import msgspec
from msgspec import Meta, Struct

from ..errors import ProtocolError
from .task_records import (Count, Key, Keys, Positive, Rate, RunId, Seconds, TaskOptions,
                           TaskSpec, _show, check_task)

__all__ = ["Message", "ProtocolError", "TaskSpec", "TaskOptions", "MESSAGES", "TO_SCHEDULER",
           "check_task", "explain"]


class Message(Struct, array_like=True, tag_field="op", forbid_unknown_fields=True, gc=False):
    """Base of every message (gc=False: messages hold no reference cycles)."""


# ---------------------------------------------------------------------- on every connection
class Hello(Message, tag="hello"):
    """First message on every connection: who is speaking."""
    role: Literal["client", "worker", "peer"]
    identity: dict[str, Any]


class Reply(Message, tag="reply"):
    """The answer to a Request (or to a Hello: request id 0), from scheduler or worker."""
    request_id: int
    ok: bool
    result: Any


class Close(Message, tag="close"):
    """The sender is closing the connection, and why (an expected end, not a failure)."""
    reason: str


# ---------------------------------------------------------------------- client -> scheduler
class Function(Message, tag="fn"):
    """A pickled function, sent once per client (and once per worker by the scheduler)."""
    token: str
    blob: bytes


class ReleaseFunctions(Message, tag="release-fn"):
    """Functions the client will not name again (none of its futures uses them); the scheduler
    drops each once no known task names it either."""
    tokens: Keys


class Submit(Message, tag="submit"):
    tasks: list[TaskSpec]


class Release(Message, tag="release"):
    """Keys the client no longer holds."""
    keys: Keys


class Want(Message, tag="want"):
    """Keys the client holds futures for, though it did not submit them."""
    keys: Keys


class Cancel(Message, tag="cancel"):
    keys: Keys


class RetryTasks(Message, tag="retry"):
    """Run failed tasks again (with the failed inputs they blamed)."""
    keys: Keys


class FireAndForget(Message, tag="fire"):
    """Run these to completion even when no client holds them."""
    keys: Keys


class SetLimit(Message, tag="limit"):
    key: Key
    rate: Rate | None
    concurrency: Count | None


class UpdateData(Message, tag="update-data"):
    """Scattered data now on a worker: {key: nbytes}."""
    nbytes: dict[str, int]
    worker: str


class Request(Message, tag="req"):
    """Ask the scheduler's shell something (answered with a Reply)."""
    request_id: int
    name: str
    args: dict[str, Any]


# ---------------------------------------------------------------------- scheduler -> client
class Done(Message, tag="done"):
    key: str
    has_value: bool
    value: Any                            # the result (plain or Serialized) if has_value
    nbytes: int
    holders: Keys                         # workers holding a value that did not travel


class Erred(Message, tag="erred"):
    key: str
    exception: Any                        # Serialized
    traceback: str | None
    blame: str | None                     # the key whose failure this is


class Cancelled(Message, tag="cancelled"):
    key: str
    reason: str


# ---------------------------------------------------------------------- scheduler -> worker
class Compute(Message, tag="compute"):
    key: str
    fn: str
    args: Any
    kwargs: Any
    deps: dict[str, Keys]                 # dependency -> workers that hold it
    want: bool                            # the result travels with Finished if small
    priority: float
    options: dict[str, Any] | None        # worker options: timeout, retry_on, retries, ...
    run: RunId


class Free(Message, tag="free"):
    """Keys to forget (data and tasks). ``runs[i]``: the scheduler's latest run id when it let
    go of ``keys[i]``; a worker keeps a key assigned to it by a later run (that COMPUTE was
    decided after this FREE, whatever order they arrive in)."""
    keys: Keys
    runs: list[RunId]


class ForgetFunctions(Message, tag="forget-fn"):
    """Functions no task needs any more: drop them (a later task that names one brings it
    again, in a Function message before its Compute)."""
    tokens: Keys


class Run(Message, tag="run"):
    """Run a function on the worker itself (client.run), answered with RunResult."""
    request_id: int
    blob: bytes
    args: Any


class Settings(Message, tag="settings"):
    """How often to send a Heartbeat (seconds): longer as the cluster grows, so that idle
    workers cost the scheduler little however many there are."""
    heartbeat: Positive


# ---------------------------------------------------------------------- worker -> scheduler
class Started(Message, tag="started"):
    key: str
    start: Seconds
    run: RunId


class Finished(Message, tag="finished"):
    key: str
    nbytes: int
    start: Seconds
    stop: Seconds
    has_value: bool
    value: Any
    type: str                             # the result's type name
    run: RunId


class Failed(Message, tag="failed"):
    key: str
    exception: Any                        # Serialized
    traceback: str | None
    start: Seconds
    stop: Seconds
    retry: dict[str, Any] | None          # {"delay": seconds or None, "max": int or None}
    run: RunId


class Missing(Message, tag="missing"):
    """A dependency could not be fetched from the worker said to hold it."""
    key: str
    dep: str
    worker: str


Stream = Literal["stdout", "stderr", "log"]


class Output(Message, tag="output"):
    """What a task printed (also forwarded to the clients holding it)."""
    key: str
    stream: Stream
    text: str


class Transfers(Message, tag="transfers"):
    """Copies a worker fetched: (key, from worker, start, stop, nbytes)."""
    entries: list[tuple[str, str, Seconds, Seconds, int]]


class RunResult(Message, tag="run-result"):
    request_id: int
    ok: bool
    value: Any


class Heartbeat(Message, tag="heartbeat"):
    metrics: dict[str, Any]


class Status(Message, tag="status"):
    """Paused: memory above the pause threshold (said again, with why, if it has nothing left
    to spill); terminating: over the limit, about to exit."""
    status: Literal["running", "paused", "terminating"]
    detail: str


class MemoryLimit(Message, tag="memory-limit"):
    """The worker's memory limit changed (LocalCluster re-divides memory when it scales)."""
    limit: Count | None


class Retire(Message, tag="retire"):
    """The worker asks to leave gracefully (its lifetime is up): the scheduler moves its work
    and results to others, then sends Close."""
    reason: str


class Replicate(Message, tag="replicate"):
    """Copy ``keys`` from ``source`` (retiring, or for client.replicate/rebalance) and keep
    them; answered with Replicated."""
    source: str
    keys: Keys


class Replicated(Message, tag="replicated"):
    """Keys copied for a Replicate (held here now), and those the source did not have."""
    keys: Keys
    missing: Keys


# ---------------------------------------------------------------------- worker <-> worker, client -> worker
class GetData(Message, tag="get"):
    request_id: int
    keys: Keys


class Data(Message, tag="data"):
    request_id: int
    values: dict[str, Any]
    missing: Keys
    errors: dict[str, str]


class Schedule(Message, tag="schedule"):
    """Run ``task`` again and again, ``every`` seconds or at the times of ``cron`` (UTC); each
    run is a task of its own, named after the schedule. Answered by a Reply."""
    request_id: int
    name: Annotated[str, Meta(min_length=1, max_length=200)]
    task: TaskSpec                        # its key is unused: each run gets its own
    every: Positive | None
    cron: Annotated[str, Meta(max_length=200)] | None
    overlap: bool                         # start a run while the last one still runs
    keep: Count                           # finished runs whose results are kept
    start: Seconds | None                 # the first run (default: now, or cron's next time)


class Unschedule(Message, tag="unschedule"):
    """Stop a schedule (runs already started go on). Answered by a Reply."""
    request_id: int
    name: str


class PutData(Message, tag="put"):
    request_id: int
    values: dict[str, Any]


# ---- coordination (issue 17): Queue, Variable, Event, Lock, Semaphore and publish
CoordKind = Literal["queue", "variable", "event", "lock", "semaphore", "published"]
CoordAction = Literal["put", "get", "qsize", "set", "add", "delete", "clear", "is_set", "wait",
                  "acquire", "release", "value", "list", "cancel"]


class Coordinate(Message, tag="coord"):
    """An operation on the named primitive ``kind``/``name``, answered by a Reply at once,
    when it can be (waiters in arrival order) or after ``timeout`` s (None: no limit; 0: now
    or never); ``cancel`` (no reply) withdraws the waiting request ``n``. ``value``: plain or
    Serialized, or ``key``: a future's; ``lease``: the holder's id (lock, semaphore); ``n``:
    maxsize (put), batch (get: 0 one, -1 all there), max_leases (acquire)."""
    request_id: int
    kind: CoordKind
    action: CoordAction
    name: Annotated[str, Meta(max_length=1000)]
    value: Any
    key: str | None
    lease: str
    n: int
    timeout: Annotated[float, Meta(ge=0)] | None


# ---- tasks that submit tasks, worker setup (issue 17)
class Seceded(Message, tag="seceded"):
    """A running task gave up its thread (or, ``rejoined``, took one again): it counts
    against its worker's threads only while it holds one."""
    key: str
    run: RunId
    rejoined: bool


SetupKind = Literal["function", "file", "package"]   # a pickled fn(), a .py/.zip/.egg, a zip


class Setup(Message, tag="setup"):
    """Run before the worker starts another task (answered with a RunResult)."""
    request_id: int
    name: Annotated[str, Meta(min_length=1, max_length=200)]
    kind: SetupKind
    blob: bytes


MESSAGES: tuple[type[Message], ...] = (
    Hello, Reply, Close, Function, ReleaseFunctions, Submit, Release, Want, Cancel, RetryTasks,
    FireAndForget, SetLimit, UpdateData, Request, Done, Erred, Cancelled, Compute, Free,
    ForgetFunctions, Run, Settings, Started, Finished, Failed, Missing, Output, Transfers,
    RunResult, Heartbeat, Status, MemoryLimit, GetData, Data, PutData, Schedule, Unschedule,
    Retire, Replicate, Replicated,
    Coordinate, Seceded, Setup)

AnyMessage = Union[MESSAGES]          # type: ignore[valid-type]   # decoded batches

# What each role may send to the scheduler's state machine (requests go to its shell).
TO_SCHEDULER: dict[str, frozenset[type[Message]]] = {
    "client": frozenset((Function, ReleaseFunctions, Submit, Release, Want, Cancel, RetryTasks,
                         FireAndForget, UpdateData, SetLimit, Schedule, Unschedule,
                         Coordinate)),
    "worker": frozenset((Started, Finished, Failed, Missing, Output, Heartbeat, Transfers,
                         Status, MemoryLimit, Retire, Replicated,
                         Seceded)),
}


def explain(batch: object, error: msgspec.ValidationError) -> str:
    """Name the message and field that failed to decode (``$[i][j]`` in the error's path)."""
    text = str(error)
    path = re.search(r"`\$((?:\[\d+\])*)", text)
    index = [int(i) for i in re.findall(r"\d+", path.group(1))] if path else []
    if type(batch) is not list or not index or index[0] >= len(batch):
        return text
    msg = batch[index[0]]
    if type(msg) is not list or not msg:
        return f"message {index[0]}: {text}"
    kind = next((t for t in MESSAGES if t.__struct_config__.tag == msg[0]), None)
    if kind is None:
        return f"unknown message type {_show(msg[0])}"
    if len(index) > 1 and 1 <= index[1] <= len(kind.__struct_fields__):
        name = kind.__struct_fields__[index[1] - 1]
        return f"{msg[0]!r}: bad {name}: {text}"
    return f"{msg[0]!r} takes {list(kind.__struct_fields__)}: {text}"
