"""Durations as users write them: seconds as a number, a ``timedelta``, or text such as
``"10 ms"``, ``"1.5s"``, ``"2 minutes"`` or ``"1h"`` (what dask accepts for timeouts)."""

from __future__ import annotations

import datetime
import re
from typing import Any

_UNITS = {
    "us": 1e-6, "µs": 1e-6, "microsecond": 1e-6, "microseconds": 1e-6,
    "ms": 1e-3, "millisecond": 1e-3, "milliseconds": 1e-3,
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hrs": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
    "w": 604800.0, "week": 604800.0, "weeks": 604800.0,
}
_TEXT = re.compile(r"^\s*((?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)\s*([a-zµ]*)\s*$")


def parse_duration(value: Any, what: str = "timeout") -> float:
    """Seconds in ``value``; ValueError/TypeError naming ``what`` if it is not a duration."""
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, str):
        match = _TEXT.match(value.lower())
        unit = match.group(2) if match else None
        if match is None or (unit and unit not in _UNITS):
            raise ValueError(f"{what} must be seconds or a duration such as '10 ms', '1.5s', "
                             f"'2 minutes' or '1h', got {value!r}")
        return float(match.group(1)) * (_UNITS[unit] if unit else 1.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be seconds (a number), a timedelta or a duration such "
                        f"as '10 ms', got {type(value).__name__} {value!r}")
    return float(value)


def optional_timeout(value: Any, what: str = "timeout") -> float | None:
    """``None`` (wait for ever) or non-negative seconds, from any form ``parse_duration`` takes."""
    if value is None:
        return None
    seconds = parse_duration(value, what)
    if seconds < 0:
        raise ValueError(f"{what} must not be negative, got {value!r}")
    return seconds
