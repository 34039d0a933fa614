"""Retries within bounds, on a fake clock and seeded randomness: the retry budget caps how much a
failing target's traffic grows, backoff stays within its jitter range and honours Retry-After, and
a deadline refuses a wait it cannot fit."""

from __future__ import annotations

import math
import random

import pytest

from sluicegate.routing.retry import BUDGET_BUCKETS, RetryBudget, RetryPolicy, backoff_s


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def simulate_failing_target(seed: int, span_windows: float) -> tuple[RetryBudget, float, int, int, float, float]:
    """Random first attempts and retry attempts against a target that fails every call, over less
    than `span_windows` budget windows of simulated time; retries are tried far more eagerly than any
    client would. Returns the budget, its window, first attempts, total attempts, and the first and last times."""
    rng = random.Random(seed)
    clock = FakeClock(rng.choice([0.0, 1000.0, 12345.678]))
    window_s = rng.choice([1.0, 10.0, 30.0])
    budget = RetryBudget(
        ratio=rng.choice([0.0, 0.1, 0.2, 0.5, 1.0]),
        min_retries_per_s=rng.choice([0.0, 0.5, 1.0, 3.0]),
        window_s=window_s,
        clock=clock,
    )
    span_s = span_windows * window_s
    start = clock.now
    first = attempts = 0
    request_share = rng.uniform(0.05, 0.9)  # how much of the traffic is first attempts
    mean_gap_s = span_s / rng.choice([50, 300, 1000])
    while True:
        step = rng.expovariate(1 / mean_gap_s) if rng.random() < 0.9 else 0.0  # bursts at one instant
        if clock.now + step - start >= span_s:
            break
        clock.now += step
        if rng.random() < request_share:
            budget.request()
            first += 1
            attempts += 1
        else:
            for _ in range(rng.randint(1, 5)):
                attempts += budget.try_retry()
    return budget, window_s, first, attempts, start, clock.now


@pytest.mark.parametrize("seed", range(150))
def test_within_one_window_a_failing_target_gets_at_most_ratio_more_attempts_or_the_floor(seed: int) -> None:
    # shorter than nine buckets: every event falls in the ten buckets of one window, whatever the phase
    span_windows = random.Random(-seed).uniform(0.05, 0.89)
    budget, window_s, first, attempts, start, end = simulate_failing_target(seed, span_windows)
    width = window_s / BUDGET_BUCKETS
    assert math.floor(end / width) - math.floor(start / width) + 1 <= BUDGET_BUCKETS
    assert attempts <= first + max(first * budget.ratio, budget.floor) + 1e-9


@pytest.mark.parametrize("seed", range(150))
def test_over_any_span_the_floor_is_granted_once_per_window(seed: int) -> None:
    budget, window_s, first, attempts, start, end = simulate_failing_target(
        seed, random.Random(-seed).uniform(1.0, 20.0)
    )
    width = window_s / BUDGET_BUCKETS
    buckets = math.floor(end / width) - math.floor(start / width) + 1
    windows = math.ceil(buckets / BUDGET_BUCKETS)
    assert attempts <= first * (1 + budget.ratio) + budget.floor * windows + 1e-9
    # in time terms: the floor is a rate, min_retries_per_s over the span plus two windows (bucket edges)
    assert attempts <= first * (1 + budget.ratio) + budget.floor * ((end - start) / window_s + 2)


def test_the_bound_is_reached_by_an_eager_client() -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(ratio=0.2, min_retries_per_s=1.0, window_s=10.0, clock=clock)
    for _ in range(100):
        budget.request()
    granted = sum(budget.try_retry() for _ in range(1000))
    assert granted == 100 * 0.2  # the ratio's share is above the floor (10): no more than it
    assert budget.room() == 0.0


def test_the_floor_is_not_added_to_the_ratio() -> None:
    # A target failing every call receives at most calls * (1 + ratio) once that share is a retry.
    clock = FakeClock(0.0)
    budget = RetryBudget(ratio=0.2, clock=clock)
    assert budget.floor == 1.0
    budget.request()
    assert budget.try_retry()  # a lone call may retry once (the floor)
    assert not budget.try_retry()
    for _ in range(39):
        budget.request()
    assert sum(budget.try_retry() for _ in range(100)) == 7  # 40 * 0.2 = 8, one used already


def test_a_quiet_target_can_still_retry_a_little() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_retries_per_s=0.5, window_s=10.0, clock=clock)
    budget.request()
    assert [budget.try_retry() for _ in range(6)] == [True] * 5 + [False]  # 0.2 + 5: five whole retries
    clock.now += 10.0
    assert budget.try_retry()


def test_no_floor_and_no_ratio_means_no_retries() -> None:
    budget = RetryBudget(ratio=0.0, min_retries_per_s=0.0, clock=FakeClock())
    budget.request()
    assert not budget.try_retry()


def test_the_window_slides_bucket_by_bucket() -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(ratio=0.5, min_retries_per_s=0.0, window_s=10.0, clock=clock)  # buckets of 1 s
    for _ in range(10):
        budget.request()
    clock.now = 5.0
    for _ in range(10):
        budget.request()
    assert sum(budget.try_retry() for _ in range(20)) == 10
    clock.now = 9.99  # everything is still in the window
    assert not budget.try_retry()
    clock.now = 10.0  # the first ten requests have left it; the retries at 5 s have not
    assert (budget.requests, budget.retries) == (10, 10)
    assert not budget.try_retry()
    clock.now = 15.0  # the rest have left too
    assert (budget.requests, budget.retries, budget.room()) == (0, 0, 0.0)
    clock.now = 1e6  # a long idle time empties the ring in one turn
    budget.request()
    budget.request()
    assert budget.try_retry()
    assert not budget.try_retry()


def test_budget_settings_that_cannot_work_are_refused() -> None:
    with pytest.raises(ValueError):
        RetryBudget(ratio=-0.1)
    with pytest.raises(ValueError):
        RetryBudget(min_retries_per_s=-1.0)
    with pytest.raises(ValueError):
        RetryBudget(window_s=0.0)


def test_backoff_never_exceeds_the_cap_nor_the_exponential_term() -> None:
    rng = random.Random(7)
    for attempt in [*range(12), 63, 64, 1000, 10**6]:
        ceiling = min(4.0, 0.25 * 2.0 ** min(attempt, 64))
        for _ in range(200):
            delay = backoff_s(attempt, base_s=0.25, cap_s=4.0, rng=rng)
            assert delay is not None
            assert 0.0 <= delay <= ceiling


def test_backoff_is_never_shorter_than_retry_after_even_above_the_cap() -> None:
    rng = random.Random(8)
    for retry_after_s in [0.0, 0.1, 3.0, 4.0, 10.0, 60.0]:
        for attempt in range(6):
            delay = backoff_s(attempt, 0.25, 4.0, rng, retry_after_s=retry_after_s)
            assert delay is not None
            assert delay >= retry_after_s
            assert delay <= max(4.0, retry_after_s)
    assert backoff_s(0, 0.25, 4.0, rng, retry_after_s=-5.0) is not None


def test_a_retry_after_beyond_the_bound_means_do_not_retry() -> None:
    rng = random.Random(9)
    assert backoff_s(0, 0.25, 4.0, rng, retry_after_s=60.5) is None
    assert backoff_s(0, 0.25, 4.0, rng, retry_after_s=120.0, max_retry_after_s=200.0) == 120.0
    assert backoff_s(0, 0.25, 4.0, rng, retry_after_s=2.0, max_retry_after_s=1.0) is None


def test_a_negative_attempt_is_a_caller_bug() -> None:
    with pytest.raises(ValueError):
        backoff_s(-1, 0.25, 4.0, random.Random(0))


@pytest.mark.parametrize(("attempt", "ceiling"), [(0, 0.25), (2, 1.0), (30, 4.0)], ids=["first", "third", "capped"])
def test_full_jitter_is_uniform_over_the_whole_range(attempt: int, ceiling: float) -> None:
    rng = random.Random(attempt)
    draws = [backoff_s(attempt, 0.25, 4.0, rng) for _ in range(10_000)]
    delays = [d for d in draws if d is not None]
    assert len(delays) == 10_000
    assert all(0.0 <= d <= ceiling for d in delays)
    mean = sum(delays) / len(delays)
    assert abs(mean - ceiling / 2) < 0.03 * ceiling  # the standard error is ~0.003 * ceiling
    low = sum(d < ceiling / 4 for d in delays) / len(delays)
    high = sum(d > 3 * ceiling / 4 for d in delays) / len(delays)
    assert 0.22 < low < 0.28
    assert 0.22 < high < 0.28


def test_the_same_seed_gives_the_same_waits() -> None:
    first = [backoff_s(a, 0.25, 4.0, random.Random(42)) for a in range(5)]
    again = [backoff_s(a, 0.25, 4.0, random.Random(42)) for a in range(5)]
    assert first == again


def test_a_policy_backs_off_within_its_own_bounds() -> None:
    policy = RetryPolicy(base_s=0.5, cap_s=1.0, max_retry_after_s=5.0)
    rng = random.Random(3)
    for _ in range(100):
        delay = policy.delay_s(4, rng)
        assert delay is not None
        assert 0.0 <= delay <= 1.0
    assert policy.delay_s(0, rng, retry_after_s=5.0) == 5.0
    assert policy.delay_s(0, rng, retry_after_s=5.1) is None
    assert RetryPolicy() == RetryPolicy(max_attempts=3, base_s=0.25, cap_s=4.0, budget_ratio=0.2, max_retry_after_s=60)


@pytest.mark.parametrize(
    "fields",
    [
        {"max_attempts": 0},
        {"base_s": -1.0},
        {"base_s": 2.0, "cap_s": 1.0},
        {"budget_ratio": -0.5},
        {"max_retry_after_s": -1.0},
    ],
    ids=["no-attempts", "negative-base", "cap-below-base", "negative-ratio", "negative-retry-after"],
)
def test_policies_that_cannot_work_are_refused(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**fields)  # type: ignore[arg-type]
