"""Cron expressions (five fields, as crontab(5) and Celery's ``crontab``), in UTC.

``minute hour day-of-month month day-of-week``; each field ``*``, a number, a range
``a-b``, a step ``*/n`` or ``a-b/n``, or a comma list of those; months and weekdays may be
named (``jan``, ``mon``); weekday 0 and 7 are Sunday. As in cron, when both day-of-month and
day-of-week are restricted, a day matching either one runs. Pure: times come in as data.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass

_MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_abbr) if name}
_DAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS), ("day of week", 0, 7, _DAYS))


def _civil(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a day counted from 1970-01-01 (proleptic Gregorian)."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


@dataclass(frozen=True)
class Cron:
    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]          # 0 = Sunday
    any_day: bool                     # day of month was *
    any_weekday: bool                 # day of week was *

    def next_after(self, when: float) -> float:
        """The first time strictly after ``when`` (epoch seconds) that matches, to the minute."""
        minute_of_epoch = int(when // 60) + 1
        day, first = divmod(minute_of_epoch, 1440)
        for _ in range(366 * 5):     # every day of five years: a date that exists comes up
            _, month, mday = _civil(day)
            if month in self.months and self._day_matches(day, mday):
                for hour in sorted(h for h in self.hours if h >= first // 60):
                    start = first % 60 if hour == first // 60 else 0
                    for minute in sorted(self.minutes):
                        if minute >= start:
                            return float((day * 1440 + hour * 60 + minute) * 60)
            day, first = day + 1, 0
        raise ValueError(f"cron {self.text!r} never matches a date")

    def _day_matches(self, day: int, mday: int) -> bool:
        weekday = (day + 4) % 7                    # 1970-01-01 was a Thursday; Sunday is 0
        in_month, in_week = mday in self.days, weekday in self.weekdays
        if self.any_day or self.any_weekday:
            return in_month and in_week
        return in_month or in_week


def parse_cron(text: str) -> Cron:
    """A :class:`Cron`; ValueError naming the field that is wrong."""
    if not isinstance(text, str):
        raise TypeError(f"cron must be a string such as '0 * * * *', got {text!r}")
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(f"cron {text!r} must have five fields (minute hour day-of-month "
                         f"month day-of-week), it has {len(fields)}")
    sets = [_field(f, *spec, text) for f, spec in zip(fields, _FIELDS)]
    weekdays = frozenset(d % 7 for d in sets[4])
    cron = Cron(text, sets[0], sets[1], sets[2], sets[3], weekdays,
                fields[2] == "*", fields[4] == "*")
    cron.next_after(0.0)      # refuses "0 0 31 2 *" (February 31st) here, not at run time
    return cron


def _field(text: str, name: str, low: int, high: int, names: dict[str, int],
           whole: str) -> frozenset[int]:
    def number(part: str) -> int:
        value = names.get(part.lower())
        if value is None:
            if not part.isdigit():
                raise ValueError(f"cron {whole!r}: {name} {part!r} is not a number")
            value = int(part)
        if not low <= value <= high:
            raise ValueError(f"cron {whole!r}: {name} {value} is outside {low}-{high}")
        return value

    values: set[int] = set()
    for item in text.split(","):
        body, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"cron {whole!r}: {name} step {step_text!r} must be a "
                                 "positive number")
            step = int(step_text)
        if body == "*":
            first, last = low, high
        elif "-" in body:
            a, _, b = body.partition("-")
            first, last = number(a), number(b)
            if first > last:
                raise ValueError(f"cron {whole!r}: {name} range {body!r} runs backwards")
        else:
            first = last = number(body)
            if step_text:
                last = high
        values.update(range(first, last + 1, step))
    return frozenset(values)
