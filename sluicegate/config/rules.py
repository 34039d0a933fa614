"""Access rules compiled for the request path: time windows, source ranges, model and provider globs.

Parsed once when the config loads; checking a call is a few comparisons. A time window reads
`Mon-Fri 08:00-19:00 Europe/Paris`: days (`Mon-Fri`, `Sat,Sun`, `daily`), a span (may cross
midnight: `22:00-06:00`), and an IANA time zone (default UTC).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import ipaddress
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SPAN = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class RuleError(ValueError):
    """A rule that cannot be parsed; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Days of the week and a span of minutes, in one time zone."""

    text: str
    days: frozenset[int]
    start_min: int
    end_min: int
    zone: dt.tzinfo

    def contains(self, when: dt.datetime) -> bool:
        """Whether the instant `when` (aware) falls in this window."""
        local = when.astimezone(self.zone)
        minute = local.hour * 60 + local.minute
        day = local.weekday()
        if self.start_min < self.end_min:
            return day in self.days and self.start_min <= minute < self.end_min
        # Crosses midnight: the early-morning part belongs to the previous day's window.
        if minute >= self.start_min:
            return day in self.days
        return minute < self.end_min and (day - 1) % 7 in self.days


def parse_time_window(text: str) -> TimeWindow:
    """Parse `Mon-Fri 08:00-19:00 Europe/Paris` (raises `RuleError`)."""
    parts = text.split()
    if len(parts) not in (2, 3):
        raise RuleError(f"expected 'DAYS HH:MM-HH:MM [TIME/ZONE]', got '{text}'")
    days = _parse_days(parts[0])
    match = _SPAN.match(parts[1])
    if not match:
        raise RuleError(f"expected a span like 08:00-19:00, got '{parts[1]}'")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if not (0 <= h1 <= 23 and 0 <= h2 <= 24 and m1 < 60 and m2 < 60) or (h2 == 24 and m2):
        raise RuleError(f"not a valid span of the day: '{parts[1]}'")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        raise RuleError(f"an empty span: '{parts[1]}'")
    zone: dt.tzinfo = dt.UTC
    if len(parts) == 3:
        try:
            zone = ZoneInfo(parts[2])
        except (ZoneInfoNotFoundError, ValueError):
            raise RuleError(f"unknown time zone '{parts[2]}'") from None
    return TimeWindow(text, days, start, end, zone)


def _parse_days(text: str) -> frozenset[int]:
    low = text.lower()
    if low in ("daily", "*"):
        return frozenset(range(7))
    days: set[int] = set()
    for item in low.split(","):
        first, sep, last = item.partition("-")
        a = _DAY_NAMES.get(first)
        b = _DAY_NAMES.get(last) if sep else a
        if a is None or b is None:
            raise RuleError(f"unknown days '{text}' (use Mon-Fri, Sat,Sun or daily)")
        while True:  # Fri-Mon wraps over the weekend
            days.add(a)
            if a == b:
                break
            a = (a + 1) % 7
    return frozenset(days)


_FULL = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_NAMES = {**{d: i for i, d in enumerate(DAYS)}, **{d: i for i, d in enumerate(_FULL)}}


def parse_network(text: str) -> IPNetwork:
    """A CIDR range or single address (raises `RuleError`)."""
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise RuleError(f"not an IP address or CIDR range: '{text}'") from None


class NameMatcher:
    """Names and globs (`gpt-*`, `*`), matched exactly first."""

    __slots__ = ("any", "exact", "globs")

    def __init__(self, patterns: list[str]) -> None:
        self.any = "*" in patterns
        self.exact = frozenset(p for p in patterns if not is_glob(p))
        self.globs = tuple(re.compile(fnmatch.translate(p)) for p in patterns if is_glob(p))

    def __call__(self, name: str) -> bool:
        return self.any or name in self.exact or any(g.match(name) for g in self.globs)


def is_glob(name: str) -> bool:
    """Whether a name in config is a pattern rather than one name."""
    return any(c in name for c in "*?[")
