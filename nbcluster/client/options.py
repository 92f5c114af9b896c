"""Task-control keyword arguments of ``submit``/``map``: checked here, at submit time, with an
error that names the argument; turned into the plain ``options`` map a task spec carries."""

from __future__ import annotations

import datetime
import re
import time
from typing import Any

from ..config import parse_resources
from ..durations import parse_duration
from ..protocol.serialize import dumps

OPTION_NAMES = ("priority", "workers", "queue", "retries", "retry_on", "retry_backoff",
                "retry_backoff_max", "retry_jitter", "rate_limit", "limit_key", "concurrency",
                "timeout", "countdown", "eta", "expires", "collect_errors", "resources")

_PERIODS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
            "h": 3600.0, "hour": 3600.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*$")
_QUEUE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def parse_rate(value: Any, what: str = "rate_limit") -> tuple[float, float]:
    """``"10/s"`` -> (10.0, 1.0): that many starts per that many seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value), 1.0
    match = _RATE.match(value) if isinstance(value, str) else None
    if not match or match.group(2) not in _PERIODS or float(match.group(1)) <= 0:
        raise ValueError(f"{what} must look like '10/s', '30/m' or '100/h' (a positive count per "
                         f"second, minute or hour), got {value!r}")
    return float(match.group(1)), _PERIODS[match.group(2)]


def check_queue_name(name: Any, what: str = "queue") -> str:
    if not isinstance(name, str) or not _QUEUE.match(name):
        raise ValueError(f"{what} must be a name of letters, digits, '_', '.', ':' or '-' "
                         f"(at most 64), got {name!r}")
    return name


def _seconds(value: Any, what: str, allow_zero: bool = True) -> float:
    """Seconds from a number, a timedelta or text such as ``"10 ms"`` or ``"2 minutes"``."""
    try:
        seconds = parse_duration(value, what)
    except (TypeError, ValueError):
        seconds = -1.0
    if seconds < 0 or (not allow_zero and seconds == 0):
        raise ValueError(f"{what} must be a {'non-negative' if allow_zero else 'positive'} "
                         f"number of seconds or a duration such as '10 ms' or '2 minutes', "
                         f"got {value!r}")
    return seconds


def _moment(value: Any, what: str, now: float) -> float:
    """A point in time: a datetime, or seconds from now."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.astimezone()
        return value.timestamp()
    return now + _seconds(value, what)


def check_option_names(kw: dict, where: str) -> None:
    """Refuse keywords that are not task options (where every keyword must be one)."""
    unknown = [name for name in kw if name not in OPTION_NAMES]
    if unknown:
        raise TypeError(f"{where} got unknown task option{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(map(repr, unknown))}; task options are "
                        f"{', '.join(OPTION_NAMES)}")


def build_options(kw: dict) -> dict | None:
    """Validate task-control keywords (already separated from the function's kwargs)."""
    if not kw:
        return None
    out: dict = {}
    now = time.time()
    for name, value in kw.items():
        if value is None:
            continue
        if name == "priority":
            if type(value) is not int:
                raise TypeError(f"priority must be an int, got {value!r}")
            if value:
                out["priority"] = value
        elif name == "workers":
            workers = [value] if isinstance(value, str) else value
            if not isinstance(workers, (list, tuple, set)) or not workers or \
                    not all(isinstance(w, str) for w in workers):
                raise TypeError(f"workers must be a worker address or a list of them, got {value!r}")
            out["workers"] = list(workers)
        elif name == "queue":
            out["queue"] = check_queue_name(value)
        elif name == "retries":
            if type(value) is not int or value < 0:
                raise ValueError(f"retries must be a non-negative int, got {value!r}")
            out["retries"] = value
        elif name == "retry_on":
            classes = value if isinstance(value, tuple) else (value,)
            if not all(isinstance(c, type) and issubclass(c, BaseException) for c in classes):
                raise TypeError(f"retry_on must be an exception class or a tuple of them, got {value!r}")
            out["retry_on"] = dumps(classes, what="retry_on")
        elif name in ("retry_backoff", "retry_backoff_max"):
            out[name] = _seconds(value, name)
        elif name == "retry_jitter":
            if not isinstance(value, bool):
                raise TypeError(f"retry_jitter must be True or False, got {value!r}")
            out["retry_jitter"] = value
        elif name == "rate_limit":
            out["rate"] = list(parse_rate(value))
        elif name == "limit_key":
            if not isinstance(value, str) or not value:
                raise TypeError(f"limit_key must be a non-empty string, got {value!r}")
            out["limit_key"] = value
        elif name == "concurrency":
            if type(value) is not int or value < 1:
                raise ValueError(f"concurrency must be a positive int, got {value!r}")
            out["concurrency"] = value
        elif name == "timeout":
            out["timeout"] = _seconds(value, "timeout", allow_zero=False)
        elif name == "countdown":
            out["not_before"] = now + _seconds(value, "countdown")
        elif name == "eta":
            if not isinstance(value, datetime.datetime):
                raise TypeError(f"eta must be a datetime, got {value!r} (use countdown= for seconds)")
            out["not_before"] = _moment(value, "eta", now)
        elif name == "expires":
            out["expires"] = _moment(value, "expires", now)
        elif name == "collect_errors":
            if value:
                out["collect_errors"] = True
        elif name == "resources":
            resources = parse_resources(value, "resources")
            if resources:
                out["resources"] = resources
        else:   # pragma: no cover - callers pass only OPTION_NAMES
            raise TypeError(f"unknown option {name!r}")
    if "retries" not in out and any(k in out for k in ("retry_on", "retry_backoff")):
        raise ValueError("retry_on/retry_backoff need retries=N (how many times to retry)")
    if "limit_key" in out and "rate" not in out and "concurrency" not in out:
        out["limit_key_only"] = True   # shares a budget set elsewhere (set_limit)
    if "not_before" in out and "expires" in out and out["expires"] <= out["not_before"]:
        raise ValueError("expires is not after the task's countdown/eta: it could never run")
    return out or None
