"""Cron strings and time zones as dbops.yaml gives them to Dagster schedules: checked when the
file is read, so a typo is a config error naming its key, not a code location that fails to load
(taking every other schedule with it). Pure; no Dagster import.

Five fields (minute hour day-of-month month day-of-week), each ``*``, a number, a range ``a-b``,
a step ``*/n`` or ``a-b/n``, or a comma list of those; months and weekdays may be named (jan,
mon). Also the shorthands Dagster accepts: @hourly, @daily, @weekly, @monthly, @yearly.
"""

from __future__ import annotations

import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

SHORTHANDS = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@weekly": "0 0 * * 0",
              "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *"}
_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))
_NAMES = {3: ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
          4: ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]}
_PART = re.compile(r"(\*|(\w+)(?:-(\w+))?)(?:/(\d+))?")


def _value(text: str, index: int) -> int:
    names = _NAMES.get(index, [])
    if text.lower() in names:
        return names.index(text.lower()) + (1 if index == 3 else 0)
    if not text.isdigit():
        raise ValueError(f"{text!r} is not a number")
    return int(text)


def cron_problem(cron: str) -> str | None:
    """Why ``cron`` is not a schedule Dagster can run, or None when it is fine."""
    fields = SHORTHANDS.get(cron.strip(), cron).split()
    if len(fields) != 5:
        return f"{cron!r} has {len(fields)} fields; a cron string has 5 (minute hour day-of-month month day-of-week)"
    for index, (field, (name, low, high)) in enumerate(zip(fields, _FIELDS)):
        for part in field.split(","):
            m = _PART.fullmatch(part)
            if not m or (m[4] is not None and int(m[4]) == 0):
                return f"{cron!r}: the {name} field {field!r} is not valid"
            try:
                values = [_value(v, index) for v in (m[2], m[3]) if v is not None]
            except ValueError:
                return f"{cron!r}: the {name} field {field!r} is not valid"
            if any(not low <= v <= high for v in values):
                return f"{cron!r}: the {name} field {field!r} is outside {low}-{high}"
    return None


def check_cron(cron: str | None) -> str | None:
    if cron is not None and (problem := cron_problem(cron)):
        raise ValueError(problem + " (e.g. \"*/5 * * * *\", \"0 2 * * *\")")
    return cron


def check_timezone(name: str | None) -> str | None:
    if name is not None:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{name!r} is not a time zone name (e.g. UTC, Europe/Berlin)") from None
    return name


def period_minutes(cron: str) -> float | None:
    """How often a simple schedule fires, in minutes (``*/5 * * * *`` -> 5, ``0 * * * *`` -> 60,
    ``30 2 * * *`` -> 1440); None for shapes this does not judge (lists, weekdays, ...)."""
    fields = SHORTHANDS.get(cron.strip(), cron).split()
    if len(fields) != 5 or fields[2:] != ["*", "*", "*"]:
        return 1440 * 7 if len(fields) == 5 and fields[2:4] == ["*", "*"] and fields[4].isdigit() else None
    minute, hour = fields[0], fields[1]
    if minute == "*" and hour == "*":
        return 1
    if (m := re.fullmatch(r"\*/(\d+)", minute)) and hour == "*":
        return float(m[1])
    if minute.isdigit() and hour == "*":
        return 60
    if minute.isdigit() and (h := re.fullmatch(r"\*/(\d+)", hour)):
        return 60 * float(h[1])
    if minute.isdigit() and hour.isdigit():
        return 1440
    return None
