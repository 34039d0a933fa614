"""The circuit breaker, on a fake clock: it opens on a failure rate over its window, probes when the
open time has passed, and opens for longer after each failed probe."""

from __future__ import annotations

import pytest

from sluicegate.routing.breaker import BreakerSettings, BreakerState, CircuitBreaker


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(clock: FakeClock, **settings: float) -> tuple[CircuitBreaker, list[tuple[BreakerState, BreakerState]]]:
    changes: list[tuple[BreakerState, BreakerState]] = []
    breaker = CircuitBreaker(
        BreakerSettings(**settings),  # type: ignore[arg-type]
        clock=clock,
        on_change=lambda old, new: changes.append((old, new)),
    )
    return breaker, changes


def state(breaker: CircuitBreaker) -> str:
    # a plain str, so mypy does not narrow the property between two reads
    return breaker.state


def report(breaker: CircuitBreaker, *outcomes: bool) -> None:
    for ok in outcomes:
        assert breaker.allow()
        breaker.record(ok)


def trip(breaker: CircuitBreaker, calls: int) -> None:
    report(breaker, *([False] * calls))
    assert state(breaker) == "open"


def test_it_opens_when_the_failure_rate_over_the_window_reaches_the_threshold() -> None:
    clock = FakeClock()
    breaker, changes = make(clock, failure_rate=0.5, min_calls=10)
    report(breaker, *([True] * 5 + [False] * 4))
    assert state(breaker) == "closed"
    report(breaker, False)  # 5 failures out of 10
    assert state(breaker) == "open"
    assert not breaker.allow()
    assert changes == [("closed", "open")]


def test_it_stays_closed_below_min_calls_even_if_every_call_failed() -> None:
    clock = FakeClock()
    breaker, changes = make(clock, min_calls=10)
    report(breaker, *([False] * 9))
    assert state(breaker) == "closed"
    assert changes == []


def test_it_stays_closed_when_the_rate_is_below_the_threshold() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, failure_rate=0.5, min_calls=4)
    for _ in range(50):
        report(breaker, True, True, False)  # a third fail
    assert state(breaker) == "closed"


def test_old_failures_age_out_of_the_window() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, min_calls=10, window_s=30.0)
    report(breaker, *([False] * 9))
    clock.now += 31.0
    assert breaker.snapshot()["calls"] == 0
    report(breaker, False)  # one failure in a fresh window: not enough calls
    assert state(breaker) == "closed"
    assert breaker.snapshot()["failures"] == 1


def test_the_window_slides_bucket_by_bucket() -> None:
    clock = FakeClock(0.0)
    breaker, _ = make(clock, min_calls=10, window_s=10.0)  # buckets of 1 s
    report(breaker, *([False] * 5))
    clock.now = 5.0
    report(breaker, *([True] * 4))
    clock.now = 9.9  # both buckets still in the window
    assert breaker.snapshot()["calls"] == 9
    clock.now = 10.0  # the first bucket has left it
    assert (breaker.snapshot()["calls"], breaker.snapshot()["failures"]) == (4, 0)
    report(breaker, *([False] * 6))  # 6 of 10 failed, all in the window
    assert state(breaker) == "open"


def test_an_open_breaker_refuses_until_open_s_then_lets_one_probe_through() -> None:
    clock = FakeClock()
    breaker, changes = make(clock, min_calls=2, open_s=30.0)
    trip(breaker, 2)
    clock.now += 29.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()
    assert state(breaker) == "half_open"
    assert not breaker.allow()  # the probe is still out
    assert changes == [("closed", "open"), ("open", "half_open")]


def test_half_open_lets_at_most_half_open_probes_out_at_once() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, min_calls=2, open_s=10.0, half_open_probes=3)
    trip(breaker, 2)
    clock.now += 10.0
    assert [breaker.allow() for _ in range(5)] == [True, True, True, False, False]
    assert breaker.snapshot()["probes_out"] == 3


def test_a_probe_success_closes_the_breaker_with_an_empty_window() -> None:
    clock = FakeClock()
    breaker, changes = make(clock, min_calls=2, open_s=10.0)
    trip(breaker, 2)
    clock.now += 10.0
    assert breaker.allow()
    breaker.record(True)
    assert state(breaker) == "closed"
    assert (breaker.snapshot()["calls"], breaker.snapshot()["failures"]) == (0, 0)
    report(breaker, False)  # one failure is below min_calls again
    assert state(breaker) == "closed"
    assert changes[-1] == ("half_open", "closed")


def test_each_probe_failure_doubles_the_open_time_up_to_the_cap_and_closing_resets_it() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, min_calls=2, open_s=10.0)
    trip(breaker, 2)
    waits = []
    for _ in range(6):
        waits.append(breaker.snapshot()["next_probe_in_s"])
        clock.now += breaker.snapshot()["open_for_s"]  # type: ignore[operator]
        assert breaker.allow()
        breaker.record(False)
        assert state(breaker) == "open"
    assert waits == [10.0, 20.0, 40.0, 80.0, 80.0, 80.0]
    clock.now += 79.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()
    breaker.record(True)
    trip(breaker, 2)
    assert breaker.snapshot()["open_for_s"] == 10.0


def test_max_open_s_sets_the_cap() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, min_calls=1, open_s=10.0, max_open_s=15.0)
    trip(breaker, 1)
    clock.now += 10.0
    assert breaker.allow()
    breaker.record(False)
    assert breaker.snapshot()["open_for_s"] == 15.0


def test_a_released_probe_frees_its_slot() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, min_calls=2, open_s=10.0)
    trip(breaker, 2)
    clock.now += 10.0
    assert breaker.allow()
    assert not breaker.allow()
    breaker.release()
    assert state(breaker) == "half_open"
    assert breaker.allow()
    breaker.release()
    breaker.release()  # one release too many does not make room for two probes
    assert breaker.allow()
    assert not breaker.allow()


def test_release_changes_nothing_when_closed_or_open() -> None:
    clock = FakeClock()
    breaker, changes = make(clock, min_calls=2)
    breaker.release()
    assert state(breaker) == "closed"
    trip(breaker, 2)
    breaker.release()
    assert state(breaker) == "open"
    assert not breaker.allow()
    assert changes == [("closed", "open")]


def test_late_reports_from_calls_allowed_before_it_opened_are_ignored() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, min_calls=2, open_s=10.0)
    assert breaker.allow()  # a long call goes out while the target is still trusted
    trip(breaker, 2)
    breaker.record(True)  # it returns while open
    assert state(breaker) == "open"
    clock.now += 10.0
    breaker.record(True)  # or while half-open, with no probe out
    assert state(breaker) == "half_open"
    assert breaker.allow()


def test_snapshot_describes_each_state() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, min_calls=3, open_s=30.0)
    report(breaker, True, False)
    assert breaker.snapshot() == {
        "state": "closed",
        "failures": 1,
        "calls": 2,
        "open_age_s": None,
        "next_probe_in_s": None,
        "open_for_s": None,
        "probes_out": 0,
        "transitions": 0,
    }
    report(breaker, False)
    clock.now += 12.0
    assert breaker.snapshot() == {
        "state": "open",
        "failures": 0,
        "calls": 0,
        "open_age_s": 12.0,
        "next_probe_in_s": 18.0,
        "open_for_s": 30.0,
        "probes_out": 0,
        "transitions": 1,
    }
    clock.now += 18.0
    assert breaker.allow()
    snapshot = breaker.snapshot()
    assert (snapshot["state"], snapshot["next_probe_in_s"], snapshot["probes_out"]) == ("half_open", None, 1)
    assert snapshot["transitions"] == 2


def test_on_change_sees_every_transition_in_order_with_the_new_state_already_set() -> None:
    clock = FakeClock()
    seen: list[tuple[BreakerState, BreakerState, BreakerState]] = []
    breaker = CircuitBreaker(
        BreakerSettings(min_calls=1, open_s=5.0),
        clock=clock,
        on_change=lambda old, new: seen.append((old, new, breaker.state)),
    )
    trip(breaker, 1)
    clock.now += 5.0
    assert breaker.allow()
    breaker.record(False)
    clock.now += 10.0
    assert breaker.allow()
    breaker.record(True)
    assert [(old, new) for old, new, _ in seen] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    assert all(new == current for _, new, current in seen)
    assert breaker.transitions == 5


@pytest.mark.parametrize(
    "settings",
    [
        {"failure_rate": 0.0},
        {"failure_rate": 1.5},
        {"min_calls": 0},
        {"window_s": 0.0},
        {"open_s": -1.0},
        {"half_open_probes": 0},
        {"open_s": 10.0, "max_open_s": 5.0},
    ],
    ids=["rate-zero", "rate-above-one", "no-min-calls", "no-window", "negative-open", "no-probes", "cap-below-open"],
)
def test_settings_that_cannot_work_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BreakerSettings(**settings)  # type: ignore[arg-type]
