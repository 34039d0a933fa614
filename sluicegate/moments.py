"""Moments as commands take them: a time ago (`7d`, `24h`, `30m`, `90s`, `2w`) or ISO 8601."""

from __future__ import annotations

import datetime as dt
import re

#: `7d`, `24h`, `30m`, `90s`, `2w`: that long before now
AGO = re.compile(r"^(\d{1,9})([smhdw])$")
AGO_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_moment(text: str, now: float, zone: dt.tzinfo = dt.UTC) -> float:
    """`text` as epoch seconds: a time ago counts back from `now`; an ISO 8601 date or time without
    an offset is in `zone`. A ValueError with a one-line message otherwise."""
    text = text.strip()
    ago = AGO.match(text)
    if ago is not None:
        return now - int(ago.group(1)) * AGO_S[ago.group(2)]
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"'{text}' is neither a time ago (7d, 24h, 30m) nor an ISO 8601 time (2026-12-01, 2026-12-01T08:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.timestamp()
