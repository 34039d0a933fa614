"""Counting windows: calendar days, weeks and months in a time zone (across DST changes), fixed
windows aligned to the epoch, rolling windows that forget spend one bucket at a time."""

from __future__ import annotations

import asyncio
import datetime as dt
import zoneinfo

import pytest
from pydantic import ValidationError

from sluicegate.limits.config import BudgetConfig, LimitsConfig, RateLimitConfig
from sluicegate.limits.counters import MemoryCounters
from sluicegate.limits.plan import Applied, Rule
from sluicegate.limits.windows import Window, calendar_bounds

PARIS = zoneinfo.ZoneInfo("Europe/Paris")


def at(zone: zoneinfo.ZoneInfo, *args: int) -> float:
    return dt.datetime(*args, tzinfo=zone).timestamp()


@pytest.mark.parametrize(
    ("day", "hours"),
    [((2026, 3, 29), 23), ((2026, 10, 25), 25), ((2026, 6, 1), 24)],
    ids=["spring-forward", "fall-back", "summer"],
)
def test_a_calendar_day_in_a_time_zone_lasts_what_the_clock_says(day: tuple[int, int, int], hours: int) -> None:
    start, end = calendar_bounds(at(PARIS, *day, 12), "day", PARIS)
    assert (end - start) / 3600 == hours
    assert dt.datetime.fromtimestamp(start, PARIS).hour == 0
    assert dt.datetime.fromtimestamp(end, PARIS) == dt.datetime(*day, tzinfo=PARIS) + dt.timedelta(days=1)


def test_a_day_whose_midnight_does_not_exist_starts_at_its_first_minute() -> None:
    santiago = zoneinfo.ZoneInfo("America/Santiago")  # springs forward at 00:00 to 01:00
    start, end = calendar_bounds(at(santiago, 2026, 9, 6, 12), "day", santiago)
    assert dt.datetime.fromtimestamp(start, santiago).hour == 1
    assert (end - start) / 3600 == 23


def test_weeks_start_on_monday_and_months_on_the_first_local_midnight() -> None:
    start, end = calendar_bounds(at(PARIS, 2026, 12, 3, 15), "week", PARIS)  # a Thursday
    assert dt.datetime.fromtimestamp(start, PARIS) == dt.datetime(2026, 11, 30, tzinfo=PARIS)
    assert end - start == 7 * 86400
    start, end = calendar_bounds(at(PARIS, 2026, 10, 31, 23, 59), "month", PARIS)
    assert dt.datetime.fromtimestamp(start, PARIS) == dt.datetime(2026, 10, 1, tzinfo=PARIS)
    assert dt.datetime.fromtimestamp(end, PARIS) == dt.datetime(2026, 11, 1, tzinfo=PARIS)
    assert (end - start) / 3600 == 31 * 24 + 1  # October holds the fall-back hour


def test_a_month_window_changes_bucket_at_local_midnight_not_utc() -> None:
    window = Window("month", timezone="Europe/Paris")
    before = window.span(at(PARIS, 2026, 11, 30, 23, 59, 59))
    after = window.span(at(PARIS, 2026, 12, 1, 0, 0, 0))
    assert before.bucket != after.bucket
    assert before.ends == after.starts == at(PARIS, 2026, 12, 1)
    # 23:30 UTC on Nov 30 is already December in Paris.
    utc = window.span(dt.datetime(2026, 11, 30, 23, 30, tzinfo=dt.UTC).timestamp())
    assert utc.bucket == after.bucket


def test_fixed_windows_are_aligned_to_the_epoch() -> None:
    window = Window("minute")
    span = window.span(1_800_000_059.9)
    assert span.starts % 60 == 0 and span.starts <= 1_800_000_059.9 < span.ends
    assert span.ends - span.starts == 60
    assert window.span(span.ends).bucket != span.bucket
    assert window.span(span.ends - 0.001).bucket == span.bucket
    assert Window("90s").span(0.0).ends == 90


def test_a_rolling_window_forgets_spend_one_bucket_at_a_time() -> None:
    now = [1_800_000_000.0]
    counters = MemoryCounters(clock=lambda: now[0])
    rule = Rule("r", "budget", "gateway", None, 100, Window("1h", rolling=True))
    applied = Applied(rule, "*")

    def spend(amount: int, request_id: str) -> bool:
        charge, _ = applied.charge(amount, now[0])
        held = asyncio.run(counters.reserve(request_id, [charge], 60))
        if not isinstance(held, list):
            return False
        asyncio.run(counters.settle(request_id, [amount], [charge.window]))
        return True

    assert spend(60, "a")
    now[0] += 30 * 60
    assert spend(40, "b")
    assert not spend(1, "c")  # 100 spent within the hour
    now[0] += 30 * 60 + 60  # the first spend is over an hour old (one bucket is a minute)
    assert spend(60, "d")
    assert not spend(1, "e")
    now[0] += 30 * 60
    assert spend(40, "f")  # b left the window


def test_config_refuses_what_cannot_be_counted() -> None:
    with pytest.raises(ValidationError, match="not a window"):
        BudgetConfig(name="b", scope="consumer", amount=1, window="fortnight")
    with pytest.raises(ValidationError, match="unknown time zone"):
        BudgetConfig(name="b", scope="consumer", amount=1, timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match="at least one of"):
        RateLimitConfig(name="r", scope="consumer")
    with pytest.raises(ValidationError, match="takes no 'match'"):
        RateLimitConfig(name="r", scope="gateway", match=["x"], requests=1)
    with pytest.raises(ValidationError, match="unique"):
        LimitsConfig(
            budgets=[BudgetConfig(name="same", scope="consumer", amount=1)],
            rate_limits=[RateLimitConfig(name="same", scope="consumer", requests=1)],
        )
    with pytest.raises(ValidationError, match="needs a 'redis:' section"):
        LimitsConfig(backend="redis")


def test_a_redis_password_in_the_config_is_flagged_without_being_printed() -> None:
    from sluicegate.config.loader import parse_config

    text = 'limits:\n  backend: redis\n  redis: {url: "redis://:hunter2-secret@127.0.0.1:6379/0"}\n'
    snapshot, issues = parse_config(text)
    assert snapshot is not None
    [issue] = [i for i in issues if i.path[:2] == ("limits", "redis")]
    assert issue.warning and "secret reference" in issue.message
    assert "hunter2" not in str(issue)
