"""FHIR R4 date, dateTime and instant values (FHIR R4 datatypes page) as UTC intervals.

A FHIR date can be partial (``2021``, ``2021-03``, ``2021-03-04``); it stands for every instant
in that year, month or day. Each value becomes an inclusive interval ``(low, high)`` of aware
UTC datetimes, so "inside a Period" and "overlaps a Period" are plain comparisons. Values without a
time zone are read as UTC. Values that are not FHIR dates give ``None``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

Interval = tuple[datetime, datetime]

MIN = datetime(1, 1, 1, tzinfo=UTC)
MAX = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
_TICK = timedelta(microseconds=1)
_PARTIAL = re.compile(r"^(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?$")


def interval(value: object) -> Interval | None:
    """The instants a FHIR date/dateTime/instant string stands for, or ``None``."""
    if not isinstance(value, str):
        return None
    match = _PARTIAL.match(value)
    try:
        if match:
            year, month, day = match.groups()
            low = datetime(int(year), int(month or 1), int(day or 1), tzinfo=UTC)
            if day:
                high = low + timedelta(days=1)
            elif month:
                high = low.replace(year=low.year + (low.month == 12), month=low.month % 12 + 1)
            else:
                high = low.replace(year=low.year + 1)
            return low, high - _TICK
        instant = datetime.fromisoformat(value)
        instant = instant.replace(tzinfo=UTC) if instant.tzinfo is None else instant.astimezone(UTC)
    except (ValueError, OverflowError):  # not a date; or one whose UTC time is outside 1..9999
        return None
    return instant, instant


def period(value: object) -> Interval | None:
    """A FHIR Period as an inclusive interval; an absent bound is open. ``None`` if malformed."""
    if not isinstance(value, Mapping):
        return None
    start, end = value.get("start"), value.get("end")
    low = interval(start) if start is not None else (MIN, MIN)
    high = interval(end) if end is not None else (MAX, MAX)
    if low is None or high is None:
        return None
    return low[0], high[1]


def contains(outer: Interval, inner: Interval) -> bool:
    return outer[0] <= inner[0] and inner[1] <= outer[1]


def overlaps(a: Interval, b: Interval) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def period_contains_instant(value: Any, now: datetime) -> bool:
    """True when ``now`` lies in the FHIR Period ``value`` (absent Period: always)."""
    if value is None:
        return True
    bounds = period(value)
    return bounds is not None and bounds[0] <= now <= bounds[1]


def fhir_instant(moment: datetime) -> str:
    """An aware datetime as a FHIR instant in UTC with millisecond precision."""
    if moment.tzinfo is None:
        raise ValueError("FHIR instants need a time zone")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
