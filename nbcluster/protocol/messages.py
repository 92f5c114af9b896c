"""Every message type, declared once.

A message is a list ``[op, *fields]``. A batch (one write on a connection) is a list of
messages. Fields are msgpack values; user data is a ``Serialized`` or a plain value.
The tables below are the reference: ``FIELDS[op]`` names the fields in order, ``TYPES[op]``
their types. :func:`check` validates a message's shape; :func:`check_fields` (and
:func:`check_task` for task specs) also the field types, where a message enters a state machine.
"""

from __future__ import annotations

from ..errors import ProtocolError
from .serialize import Serialized

# client -> scheduler
HELLO = "hello"            # role, identity dict (first message on every connection)
FUNCTION = "fn"            # token, pickled function bytes
SUBMIT = "submit"          # list of task specs, see TASK_FIELDS
RELEASE = "release"        # keys the client no longer holds
WANT = "want"              # keys the client holds futures for, though it did not submit them
CANCEL = "cancel"          # keys to cancel
RETRY = "retry"            # keys of failed tasks to run again (with their failed inputs)
FIRE_AND_FORGET = "fire"   # keys to run to completion even when no client holds them
SET_LIMIT = "limit"        # limit key, [count, seconds] or None, concurrency or None
UPDATE_DATA = "update-data"  # {key: nbytes}, worker address: scattered data now on a worker
REQUEST = "req"            # request id, request name, argument dict (replied with REPLY)
# scheduler -> client
DONE = "done"              # key, value present flag, value (plain or Serialized), nbytes,
                           # holders: workers holding a value that did not travel (the
                           # client fetches it from one of them), else []
ERRED = "erred"            # key, exception (Serialized), traceback text, blamed key
CANCELLED = "cancelled"    # key, reason
REPLY = "reply"            # request id, ok flag, result
# scheduler -> worker
COMPUTE = "compute"        # key, fn token, args, kwargs, {dep: [holders]}, want result, priority,
                           # worker options (timeout, retry_on, retries, expires, errors) or None,
                           # run id (new for every assignment; echoed by STARTED/FINISHED/FAILED)
FREE = "free"              # keys to forget (data and tasks)
RUN = "run"                # request id, pickled function, args (run on the worker itself)
CLOSE = "close"            # reason
# worker -> scheduler
STARTED = "started"        # key, start time, run id
FINISHED = "finished"      # key, nbytes, start, stop, value present flag, value, type name, run id
FAILED = "failed"          # key, exception (Serialized), traceback text, start, stop,
                           # retry: None, or {"delay": seconds or None, "max": int or None}, run id
MISSING = "missing"        # key, dependency key, worker that did not have it
OUTPUT = "output"          # key, stream ("stdout", "stderr", "log"), text (also to clients)
TRANSFERS = "transfers"    # [[key, from worker, start, stop, nbytes], ...] fetched by a worker
RUN_RESULT = "run-result"  # request id, ok flag, value
HEARTBEAT = "heartbeat"    # metrics dict
STATUS = "status"          # "running", "paused" (memory above the pause threshold) or
                           # "terminating" (over the memory limit: about to exit), detail
MEMORY_LIMIT = "memory-limit"  # bytes or None: the worker's memory limit changed (LocalCluster
                               # re-divides the machine's memory when it scales)
# worker <-> worker and client -> worker
GET_DATA = "get"           # request id, keys
DATA = "data"              # request id, {key: value}, missing keys, {key: error text}
PUT_DATA = "put"           # request id, {key: value}

FIELDS: dict[str, tuple[str, ...]] = {
    HELLO: ("role", "identity"),
    FUNCTION: ("token", "blob"),
    SUBMIT: ("tasks",),
    RELEASE: ("keys",),
    WANT: ("keys",),
    CANCEL: ("keys",),
    RETRY: ("keys",),
    FIRE_AND_FORGET: ("keys",),
    SET_LIMIT: ("key", "rate", "concurrency"),
    UPDATE_DATA: ("nbytes", "worker"),
    REQUEST: ("request_id", "name", "args"),
    DONE: ("key", "has_value", "value", "nbytes", "holders"),
    ERRED: ("key", "exception", "traceback", "blame"),
    CANCELLED: ("key", "reason"),
    REPLY: ("request_id", "ok", "result"),
    COMPUTE: ("key", "fn", "args", "kwargs", "deps", "want", "priority", "options", "run"),
    FREE: ("keys",),
    RUN: ("request_id", "blob", "args"),
    CLOSE: ("reason",),
    STARTED: ("key", "start", "run"),
    FINISHED: ("key", "nbytes", "start", "stop", "has_value", "value", "type", "run"),
    FAILED: ("key", "exception", "traceback", "start", "stop", "retry", "run"),
    MISSING: ("key", "dep", "worker"),
    OUTPUT: ("key", "stream", "text"),
    TRANSFERS: ("entries",),
    RUN_RESULT: ("request_id", "ok", "value"),
    HEARTBEAT: ("metrics",),
    STATUS: ("status", "detail"),
    MEMORY_LIMIT: ("limit",),
    GET_DATA: ("request_id", "keys"),
    DATA: ("request_id", "values", "missing", "errors"),
    PUT_DATA: ("request_id", "values"),
}

# What each role may send to the scheduler.
TO_SCHEDULER = {
    "client": frozenset((FUNCTION, SUBMIT, RELEASE, WANT, CANCEL, RETRY, FIRE_AND_FORGET,
                         UPDATE_DATA, SET_LIMIT, REQUEST)),
    "worker": frozenset((STARTED, FINISHED, FAILED, MISSING, OUTPUT, RUN_RESULT, HEARTBEAT,
                         TRANSFERS, STATUS, MEMORY_LIMIT)),
}

# A task spec inside SUBMIT: [key, fn token, args, kwargs, dependency keys, options]
# args is a list of plain values or a Serialized tuple; kwargs is None, a dict of plain
# values, or a Serialized dict; options is None or a dict (priority, workers, ...).
TASK_FIELDS = ("key", "fn", "args", "kwargs", "deps", "options")


def _str(v) -> bool:
    return type(v) is str


def _num(v) -> bool:
    return type(v) is int or type(v) is float


def _int(v) -> bool:
    return type(v) is int


def _bool(v) -> bool:
    return type(v) is bool


def _bytes(v) -> bool:
    return type(v) is bytes


def _map(v) -> bool:
    return type(v) is dict


def _keys(v) -> bool:
    return type(v) is list and all(type(k) is str for k in v)


def _text(v) -> bool:
    return v is None or type(v) is str


def _args(v) -> bool:
    return type(v) is list or type(v) is Serialized


def _kwargs(v) -> bool:
    return v is None or type(v) is dict or type(v) is Serialized


def _sizes(v) -> bool:
    return type(v) is dict and all(type(k) is str and type(n) is int for k, n in v.items())


def _any(v) -> bool:
    return True


def _rate(v) -> bool:
    return type(v) is list and len(v) == 2 and all(_num(x) and x > 0 for x in v)


def _nonneg(v) -> bool:
    return _num(v) and v >= 0


# Types of the task options a SUBMIT may carry (see nbcluster/client/options.py).
OPTION_TYPES = {
    "priority": _num, "workers": _keys, "queue": lambda v: type(v) is str and 0 < len(v) <= 64,
    "retries": lambda v: _int(v) and v >= 0, "retry_on": lambda v: type(v) is Serialized,
    "retry_backoff": _nonneg, "retry_backoff_max": _nonneg, "retry_jitter": _bool,
    "rate": _rate, "limit_key": lambda v: type(v) is str and bool(v),
    "limit_key_only": _bool, "concurrency": lambda v: _int(v) and v > 0,
    "timeout": lambda v: _num(v) and v > 0, "not_before": _num, "expires": _num,
    "collect_errors": _bool,
}


# The type of each field, checked by check_fields where a message enters a state machine.
TYPES: dict[str, tuple] = {
    HELLO: (_str, _map),
    FUNCTION: (_str, _bytes),
    SUBMIT: (lambda v: type(v) is list,),
    RELEASE: (_keys,),
    WANT: (_keys,),
    CANCEL: (_keys,),
    RETRY: (_keys,),
    FIRE_AND_FORGET: (_keys,),
    SET_LIMIT: (_str, lambda v: v is None or _rate(v), lambda v: v is None or (_int(v) and v > 0)),
    UPDATE_DATA: (_sizes, _str),
    REQUEST: (_any, _str, _map),
    DONE: (_str, _bool, _any, _int, _keys),
    ERRED: (_str, _any, _text, _text),
    CANCELLED: (_str, _str),
    REPLY: (_any, _bool, _any),
    COMPUTE: (_str, _str, _args, _kwargs, _map, _bool, _num, lambda v: v is None or _map(v),
              _int),
    FREE: (_keys,),
    RUN: (_any, _bytes, _any),
    CLOSE: (_str,),
    STARTED: (_str, _num, _int),
    FINISHED: (_str, _int, _num, _num, _bool, _any, _str, _int),
    FAILED: (_str, _any, _text, _num, _num, lambda v: v is None or _map(v), _int),
    MISSING: (_str, _str, _str),
    OUTPUT: (_str, _str, _str),
    TRANSFERS: (lambda v: type(v) is list and all(
        type(e) is list and len(e) == 5 and type(e[0]) is str and type(e[1]) is str
        and _num(e[2]) and _num(e[3]) and _int(e[4]) for e in v),),
    RUN_RESULT: (_any, _bool, _any),
    HEARTBEAT: (_map,),
    STATUS: (lambda v: v in ("running", "paused", "terminating"), _str),
    MEMORY_LIMIT: (lambda v: v is None or (_int(v) and v > 0),),
    GET_DATA: (_any, _keys),
    DATA: (_any, _map, _keys, _map),
    PUT_DATA: (_any, _map),
}
_TASK_TYPES = (_str, _str, _args, _kwargs, _keys, lambda v: v is None or type(v) is dict)


def _show(value) -> str:
    text = repr(value)
    return f"{text[:60]}... ({type(value).__name__})" if len(text) > 60 else text


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


def check_fields(msg) -> str:
    """:func:`check`, then the type of every field; ProtocolError names the first bad one."""
    op = check(msg)
    for name, ok, value in zip(FIELDS[op], TYPES[op], msg[1:]):
        if not ok(value):
            raise ProtocolError(f"{op!r}: bad {name} {_show(value)}")
    return op


def check_task(spec) -> None:
    """Check a task spec of SUBMIT (see TASK_FIELDS) and its options; raise ProtocolError."""
    if type(spec) is not list or len(spec) != len(TASK_FIELDS):
        raise ProtocolError(f"a task spec is a list {TASK_FIELDS}, got {_show(spec)}")
    key, fn, args, kwargs, deps, options = spec
    if not (type(key) is str and type(fn) is str and type(args) is list and kwargs is None
            and deps == [] and options is None):   # not the common plain call: check each
        for name, ok, value in zip(TASK_FIELDS, _TASK_TYPES, spec):
            if not ok(value):
                raise ProtocolError(f"task spec: bad {name} {_show(value)}")
        if key in deps:
            raise ProtocolError(f"task {key!r} depends on itself")
    if not key:
        raise ProtocolError("task spec: empty key")
    if options:
        for name, value in options.items():
            ok = OPTION_TYPES.get(name)
            if ok is None:
                raise ProtocolError(f"task {key!r}: unknown option {name!r}")
            if not ok(value):
                raise ProtocolError(f"task {key!r}: bad {name} {_show(value)}")
        if "workers" in options and not options["workers"]:
            raise ProtocolError(f"task {key!r}: workers must be a list of addresses, got []")
