"""Counting windows: which bucket a moment falls in, which buckets a check sums, when it resets.

- calendar (`day`, `week` from Monday, `month`) in a time zone: one bucket per window, from local
  midnight to local midnight, so a day across a DST change lasts 23 or 25 hours;
- fixed (`minute`, `90s`, `2h`): one bucket per window, aligned to the epoch;
- rolling: the window's length back from now, counted in `ROLLING_BUCKETS` buckets, so spend
  leaves the window one bucket (1/60 of its length) at a time.

A `Window` keeps its current bucket until the clock passes its end: the request path pays a
comparison, not a date computation.
"""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo
from dataclasses import dataclass

from sluicegate.limits.config import CALENDAR_UNITS, window_seconds

#: buckets of a rolling window
ROLLING_BUCKETS = 60
#: a bucket outlives its window by this much (a call settles into the bucket it reserved in)
TTL_MARGIN_S = 3600.0
#: the length of a rolling window named by a calendar unit
_CALENDAR_SECONDS = {"day": 86400, "week": 7 * 86400, "month": 30 * 86400}


@dataclass(frozen=True, slots=True)
class Span:
    """The current bucket of a window."""

    #: the bucket's id (its start, epoch seconds or bucket number), part of counter keys
    bucket: str
    #: when the current bucket starts (epoch seconds)
    starts: float
    #: every bucket a check sums (the current one last)
    buckets: tuple[str, ...]
    #: when the current bucket ends (epoch seconds)
    ends: float
    #: when the window's oldest counted spend leaves it: its reset (epoch seconds)
    resets: float
    #: what the window is, for messages: "day (Europe/Paris)", "rolling 24h", "60s"
    label: str


class Window:
    """One configured window (`window`, `rolling`, `timezone`)."""

    def __init__(self, window: str, rolling: bool = False, timezone: str = "UTC") -> None:
        self.unit = window
        self.rolling = rolling
        self.zone = zoneinfo.ZoneInfo(timezone)
        self.timezone = timezone
        seconds = window_seconds(window)
        self.calendar = seconds is None and not rolling
        self.length = float(seconds if seconds is not None else _CALENDAR_SECONDS[window])
        if rolling:
            count = min(ROLLING_BUCKETS, max(1, int(self.length)))
            self.step = self.length / count
            self.count = count
            self.label = f"rolling {_human(self.length)}"
        elif self.calendar:
            self.label = window if timezone == "UTC" else f"{window} ({timezone})"
        else:
            self.label = _human(self.length)
        self._span: Span | None = None

    def span(self, now: float) -> Span:
        """The bucket `now` falls in (cached until it ends)."""
        span = self._span
        if span is not None and span.starts <= now < span.ends:
            return span
        span = self._compute(now)
        self._span = span
        return span

    def ttl_s(self, span: Span) -> float:
        """How long a bucket must be kept from its first charge: at most its whole window (a
        calendar month's length, or a rolling window's after the bucket ends), and a margin."""
        if self.rolling:
            return span.ends - span.starts + self.length + TTL_MARGIN_S
        return span.ends - span.starts + TTL_MARGIN_S

    def _compute(self, now: float) -> Span:
        if self.rolling:
            index = math.floor(now / self.step)
            first = index - self.count + 1
            buckets = tuple(f"r{i}" for i in range(first, index + 1))
            ends = (index + 1) * self.step
            return Span(f"r{index}", index * self.step, buckets, ends, ends, self.label)
        if self.calendar:
            start, end = calendar_bounds(now, self.unit, self.zone)
            bucket = str(int(start))
            return Span(bucket, start, (bucket,), end, end, self.label)
        start = math.floor(now / self.length) * self.length
        bucket = str(int(start))
        return Span(bucket, start, (bucket,), start + self.length, start + self.length, self.label)


def calendar_bounds(now: float, unit: str, zone: zoneinfo.ZoneInfo) -> tuple[float, float]:
    """Start and end (epoch seconds) of the calendar day, week (from Monday) or month that holds `now` in `zone`."""
    assert unit in CALENDAR_UNITS
    local = dt.datetime.fromtimestamp(now, zone)
    day = local.date()
    if unit == "day":
        first, after = day, day + dt.timedelta(days=1)
    elif unit == "week":
        first = day - dt.timedelta(days=day.weekday())
        after = first + dt.timedelta(days=7)
    else:
        first = day.replace(day=1)
        after = (first + dt.timedelta(days=32)).replace(day=1)
    return _midnight(first, zone), _midnight(after, zone)


def local_days(since: float, until: float, zone: zoneinfo.ZoneInfo) -> list[tuple[dt.date, float, float]]:
    """The calendar days of `zone` that [since, until) overlaps, in order: (date, start, end) in
    epoch seconds, the first and last cut to the period. A day across a DST change lasts 23 or 25 hours."""
    one = dt.timedelta(days=1)
    day = dt.datetime.fromtimestamp(since, zone).date()
    while _midnight(day + one, zone) <= since:
        day += one
    days: list[tuple[dt.date, float, float]] = []
    start = since
    while start < until:
        end = min(_midnight(day + one, zone), until)
        days.append((day, start, end))
        start, day = end, day + one
    return days


def _midnight(day: dt.date, zone: zoneinfo.ZoneInfo) -> float:
    """The first moment of a local day. Where a DST change skips midnight, `fold=0` reads 00:00
    with the offset before the change: the instant the day's first existing minute begins; where
    it repeats midnight, the first of the two."""
    return dt.datetime(day.year, day.month, day.day, tzinfo=zone).timestamp()


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def retry_after(span: Span, now: float) -> float:
    """Seconds until the window resets (at least 1)."""
    return max(1.0, span.resets - now)
