"""Every message type, declared once.

A message is a list ``[op, *fields]``. A batch (one write on a connection) is a list of
messages. Fields are msgpack values; user data is a ``Serialized`` or a plain value.
The tables below are the reference: ``FIELDS[op]`` names the fields in order, and
:func:`check` validates a message's shape where it enters a state machine.
"""

from __future__ import annotations

from ..errors import ProtocolError

# client -> scheduler
HELLO = "hello"            # role, identity dict (first message on every connection)
FUNCTION = "fn"            # token, pickled function bytes
SUBMIT = "submit"          # list of task specs, see TASK_FIELDS
RELEASE = "release"        # keys the client no longer holds
WANT = "want"              # keys the client holds futures for, though it did not submit them
CANCEL = "cancel"          # keys to cancel
FIRE_AND_FORGET = "fire"   # keys to run to completion even when no client holds them
UPDATE_DATA = "update-data"  # {key: nbytes}, worker address: scattered data now on a worker
REQUEST = "req"            # request id, request name, argument dict (replied with REPLY)
# scheduler -> client
DONE = "done"              # key, value present flag, value (plain or Serialized), nbytes
ERRED = "erred"            # key, exception (Serialized), traceback text, blamed key
CANCELLED = "cancelled"    # key, reason
REPLY = "reply"            # request id, ok flag, result
# scheduler -> worker
COMPUTE = "compute"        # key, fn token, args, kwargs, {dep: [holders]}, want result, priority
FREE = "free"              # keys to forget (data and tasks)
RUN = "run"                # request id, pickled function, args (run on the worker itself)
CLOSE = "close"            # reason
# worker -> scheduler
STARTED = "started"        # key, start time
FINISHED = "finished"      # key, nbytes, start, stop, value present flag, value, type name
FAILED = "failed"          # key, exception (Serialized), traceback text, start, stop
MISSING = "missing"        # key, dependency key, worker that did not have it
OUTPUT = "output"          # key, stream ("stdout", "stderr", "log"), text (also to clients)
RUN_RESULT = "run-result"  # request id, ok flag, value
HEARTBEAT = "heartbeat"    # metrics dict
# worker <-> worker and client -> worker
GET_DATA = "get"           # request id, keys
DATA = "data"              # request id, {key: value}, missing keys
PUT_DATA = "put"           # request id, {key: value}

FIELDS: dict[str, tuple[str, ...]] = {
    HELLO: ("role", "identity"),
    FUNCTION: ("token", "blob"),
    SUBMIT: ("tasks",),
    RELEASE: ("keys",),
    WANT: ("keys",),
    CANCEL: ("keys",),
    FIRE_AND_FORGET: ("keys",),
    UPDATE_DATA: ("nbytes", "worker"),
    REQUEST: ("request_id", "name", "args"),
    DONE: ("key", "has_value", "value", "nbytes"),
    ERRED: ("key", "exception", "traceback", "blame"),
    CANCELLED: ("key", "reason"),
    REPLY: ("request_id", "ok", "result"),
    COMPUTE: ("key", "fn", "args", "kwargs", "deps", "want", "priority"),
    FREE: ("keys",),
    RUN: ("request_id", "blob", "args"),
    CLOSE: ("reason",),
    STARTED: ("key", "start"),
    FINISHED: ("key", "nbytes", "start", "stop", "has_value", "value", "type"),
    FAILED: ("key", "exception", "traceback", "start", "stop"),
    MISSING: ("key", "dep", "worker"),
    OUTPUT: ("key", "stream", "text"),
    RUN_RESULT: ("request_id", "ok", "value"),
    HEARTBEAT: ("metrics",),
    GET_DATA: ("request_id", "keys"),
    DATA: ("request_id", "values", "missing"),
    PUT_DATA: ("request_id", "values"),
}

# A task spec inside SUBMIT: [key, fn token, args, kwargs, dependency keys, options]
# args is a list of plain values or a Serialized tuple; kwargs is None, a dict of plain
# values, or a Serialized dict; options is None or a dict (priority, workers, ...).
TASK_FIELDS = ("key", "fn", "args", "kwargs", "deps", "options")


def check(msg) -> str:
    """Return the op of ``msg`` after checking its shape; raise ProtocolError if malformed."""
    if type(msg) is not list or not msg:
        raise ProtocolError(f"a message must be a non-empty list, got {type(msg).__name__}")
    op = msg[0]
    fields = FIELDS.get(op) if type(op) is str else None
    if fields is None:
        raise ProtocolError(f"unknown message type {op!r}")
    if len(msg) != len(fields) + 1:
        raise ProtocolError(f"{op!r} takes {len(fields)} fields {fields}, got {len(msg) - 1}")
    return op
