"""The records a task travels as (a SUBMIT holds these), and the checks decoding cannot make.

Part of the protocol's one declaration of every message (``messages`` re-exports these): kept
apart so that each module stays small.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from ..errors import ProtocolError
from .serialize import Serialized

Key = Annotated[str, Meta(min_length=1)]
Keys = list[str]
Seconds = float                       # a time (seconds since the epoch) or a duration
Positive = Annotated[float, Meta(gt=0)]
Count = Annotated[int, Meta(gt=0)]
RunId = int                           # new for every assignment; echoed by the worker
Rate = Annotated[list[Positive], Meta(min_length=2, max_length=2)]   # [count, per seconds]
# worker resources and task requests, e.g. {"GPU": 1, "MEM": 16e9} (nbcluster.config.parse_resources)
ResourceName = Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")]
Resources = Annotated[dict[ResourceName, Annotated[float, Meta(gt=0, le=1e300)]],
                      Meta(min_length=1)]


class TaskOptions(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The task options a Submit may carry, by name (see ``nbcluster/client/options.py``).
    They travel as a plain map; this record declares and checks their types."""
    priority: float = 0
    workers: Annotated[Keys, Meta(min_length=1)] | None = None
    queue: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    retries: Annotated[int, Meta(ge=0)] = 0
    retry_on: Any = None                  # Serialized tuple of exception types
    retry_backoff: Annotated[float, Meta(ge=0)] = 0
    retry_backoff_max: Annotated[float, Meta(ge=0)] = 0
    retry_jitter: bool = True
    rate: Rate | None = None
    limit_key: Key | None = None
    limit_key_only: bool = False
    concurrency: Count | None = None
    timeout: Positive | None = None
    not_before: Seconds | None = None
    expires: Seconds | None = None
    collect_errors: bool = False
    resources: Resources | None = None    # runs only where these are free; held while it runs


class TaskSpec(Struct, array_like=True, forbid_unknown_fields=True, gc=False):
    """One task of a Submit."""
    key: Key
    fn: str                               # token of a function sent with Function
    args: Any                             # list of plain values, or a Serialized tuple
    kwargs: Any                           # None, a dict of plain values, or a Serialized dict
    deps: Keys                            # keys of the tasks whose results are arguments
    options: dict[str, Any] | None        # TaskOptions, sparse


def _show(value: object) -> str:
    text = repr(value)
    return f"{text[:60]}... ({type(value).__name__})" if len(text) > 60 else text


def check_task(spec: TaskSpec) -> None:
    """What decoding cannot see in a task spec: a self-dependency, the options' names and
    types (they travel as a sparse map). Raise ProtocolError naming the problem."""
    if type(spec.args) is not list and type(spec.args) is not Serialized:
        raise ProtocolError(f"task {spec.key!r}: args must be a list or Serialized, got "
                            f"{_show(spec.args)}")
    kwargs = spec.kwargs
    if kwargs is not None and type(kwargs) is not dict and type(kwargs) is not Serialized:
        raise ProtocolError(f"task {spec.key!r}: kwargs must be None, a dict or Serialized, "
                            f"got {_show(kwargs)}")
    if spec.deps and spec.key in spec.deps:
        raise ProtocolError(f"task {spec.key!r} depends on itself")
    options = spec.options
    if options:
        try:
            msgspec.convert(options, TaskOptions)
        except msgspec.ValidationError as e:
            raise ProtocolError(f"task {spec.key!r}: bad options {_show(options)}: {e}") from None
