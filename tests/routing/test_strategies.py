"""Target selection: each strategy's shares, priority groups and fallbacks, measured over many seeded calls."""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import Counter

import pytest

from sluicegate.routing.strategies import STRATEGIES, Candidate, SmoothWeighted, TargetStats, order


def candidates(*weights: float, priority: int = 0) -> list[Candidate]:
    return [Candidate(index=i, weight=w, priority=priority, stats=TargetStats()) for i, w in enumerate(weights)]


def attempts(strategy: str, cands: list[Candidate], rng: random.Random, rr: SmoothWeighted | None = None) -> list[int]:
    if strategy == "round_robin" and rr is None:
        rr = SmoothWeighted()
    return order(strategy, cands, rng, rr=rr)


def within_sigmas(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    """Whether `count` successes of `n` draws fit a binomial(n, p) within `sigmas` standard deviations."""
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


# weighted


@pytest.mark.parametrize("seed", [0, 1, 2, 12345])
def test_weighted_first_choice_follows_the_weights(seed: int) -> None:
    rng = random.Random(seed)
    cands = candidates(3.0, 1.0)
    firsts: Counter[int] = Counter()
    for _ in range(10_000):
        result = order("weighted", cands, rng)
        assert sorted(result) == [0, 1]
        firsts[result[0]] += 1
    assert within_sigmas(firsts[0], 10_000, 0.75)


def test_weighted_without_replacement_over_three_targets() -> None:
    rng = random.Random(7)
    cands = candidates(2.0, 1.0, 1.0)
    firsts: Counter[int] = Counter()
    seconds_after_0: Counter[int] = Counter()
    for _ in range(10_000):
        result = order("weighted", cands, rng)
        assert sorted(result) == [0, 1, 2]
        firsts[result[0]] += 1
        if result[0] == 0:
            seconds_after_0[result[1]] += 1
    assert within_sigmas(firsts[0], 10_000, 0.5)
    assert within_sigmas(firsts[1], 10_000, 0.25)
    # once the heavy one is drawn, the two equal ones are equally likely next
    assert within_sigmas(seconds_after_0[1], firsts[0], 0.5)


# priority groups, every strategy


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_lower_priority_group_only_when_the_best_has_none_available(strategy: str) -> None:
    rng = random.Random(1)
    stats = [TargetStats(price=1.0) for _ in range(4)]
    group0 = [Candidate(0, 1.0, 0, stats[0]), Candidate(1, 1.0, 0, stats[1])]
    group1 = [Candidate(2, 1.0, 1, stats[2]), Candidate(3, 1.0, 1, stats[3])]
    rr = SmoothWeighted()
    for _ in range(200):
        result = attempts(strategy, group1 + group0, rng, rr)  # listed out of order on purpose
        assert sorted(result[:2]) == [0, 1]
        assert sorted(result[2:]) == [2, 3]
    down = [Candidate(c.index, c.weight, c.priority, c.stats, available=False) for c in group0]
    for _ in range(200):
        result = attempts(strategy, down + group1, rng, rr)
        assert sorted(result) == [2, 3]
    half = [down[0], group0[1], *group1]
    for _ in range(200):
        assert attempts(strategy, half, rng, rr)[0] == 1


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_fallbacks_follow_priority_order(strategy: str) -> None:
    rng = random.Random(2)
    cands = [
        Candidate(0, 1.0, 2, TargetStats(price=1.0)),
        Candidate(1, 5.0, 1, TargetStats(price=9.0)),
        Candidate(2, 1.0, 0, TargetStats(price=5.0)),
        Candidate(3, 2.0, 1, TargetStats(price=2.0)),
        Candidate(4, 1.0, 0, TargetStats(price=3.0)),
    ]
    rr = SmoothWeighted()
    for _ in range(100):
        result = attempts(strategy, cands, rng, rr)
        assert sorted(result[:2]) == [2, 4]
        assert sorted(result[2:4]) == [1, 3]
        assert result[4] == 0


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_unavailable_targets_are_never_in_the_order(strategy: str) -> None:
    rng = random.Random(3)
    cands = [
        Candidate(0, 10.0, 0, TargetStats(price=0.1), available=False),
        Candidate(1, 1.0, 0, TargetStats(price=1.0)),
        Candidate(2, 1.0, 1, TargetStats(price=2.0)),
        Candidate(3, 10.0, 1, TargetStats(price=0.1), available=False),
    ]
    rr = SmoothWeighted()
    for _ in range(100):
        assert attempts(strategy, cands, rng, rr) == [1, 2]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_nothing_available_gives_an_empty_order(strategy: str) -> None:
    rng = random.Random(4)
    assert attempts(strategy, [], rng) == []
    down = [Candidate(i, 1.0, i, TargetStats(), available=False) for i in range(3)]
    assert attempts(strategy, down, rng) == []


def test_unknown_strategy_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="least_outstanding") as caught:
        order("fastest", candidates(1.0), random.Random(0))
    assert all(name in str(caught.value) for name in STRATEGIES)


def test_round_robin_needs_its_state() -> None:
    with pytest.raises(ValueError, match="SmoothWeighted"):
        order("round_robin", candidates(1.0), random.Random(0))


def test_weights_must_be_positive() -> None:
    for weight in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="weight"):
            Candidate(0, weight, 0, TargetStats())


# priority


def test_priority_puts_the_heaviest_first_and_shuffles_equals() -> None:
    rng = random.Random(5)
    cands = candidates(1.0, 3.0, 1.0)
    tails: Counter[tuple[int, ...]] = Counter()
    for _ in range(1_000):
        result = order("priority", cands, rng)
        assert result[0] == 1
        tails[tuple(result[1:])] += 1
    assert set(tails) == {(0, 2), (2, 0)}
    assert within_sigmas(tails[(0, 2)], 1_000, 0.5)


# round robin


def test_round_robin_shares_are_exact_and_well_spread() -> None:
    rng = random.Random(0)
    cands = candidates(3.0, 1.0)
    rr = SmoothWeighted()
    firsts = []
    for _ in range(1_000):
        result = order("round_robin", cands, rng, rr=rr)
        assert sorted(result) == [0, 1]
        firsts.append(result[0])
    assert Counter(firsts) == {0: 750, 1: 250}
    longest = run = 1
    for before, after in itertools.pairwise(firsts):
        run = run + 1 if after == before else 1
        longest = max(longest, run)
    assert longest == 3
    # the same sequence every time: no randomness in it
    again = SmoothWeighted()
    assert [order("round_robin", cands, rng, rr=again)[0] for _ in range(1_000)] == firsts


def test_round_robin_fallbacks_are_the_next_due() -> None:
    rr = SmoothWeighted()
    cands = candidates(5.0, 1.0, 1.0)
    # nginx's example sequence for 5:1:1 is a a b a c a a
    assert [rr.next_order(cands)[0] for _ in range(7)] == [0, 0, 1, 0, 2, 0, 0]
    result = rr.next_order(cands)
    assert result[0] == 0
    assert sorted(result) == [0, 1, 2]


def test_round_robin_skips_an_unavailable_target_and_keeps_its_shares() -> None:
    rng = random.Random(0)
    cands = candidates(1.0, 1.0, 2.0)
    rr = SmoothWeighted()
    without_1 = [cands[0], Candidate(1, 1.0, 0, cands[1].stats, available=False), cands[2]]
    firsts = Counter(order("round_robin", without_1, rng, rr=rr)[0] for _ in range(300))
    assert firsts == {0: 100, 2: 200}
    firsts = Counter(order("round_robin", cands, rng, rr=rr)[0] for _ in range(400))
    assert firsts == {0: 100, 1: 100, 2: 200}


# least outstanding


def test_least_outstanding_sends_more_to_the_faster_target() -> None:
    """A discrete-event run: calls arrive at random, each target holds a call for its own latency."""
    rng = random.Random(6)
    latency_s = {0: 2.0, 1: 0.4}  # target 0 is five times slower
    stats = {i: TargetStats() for i in latency_s}
    cands = [Candidate(i, 1.0, 0, stats[i]) for i in latency_s]
    ends: list[tuple[float, int]] = []
    chosen: Counter[int] = Counter()
    now = 0.0
    for _ in range(5_000):
        now += rng.expovariate(5.0)  # 5 calls per second
        while ends and ends[0][0] <= now:
            stats[heapq.heappop(ends)[1]].done()
        target = order("least_outstanding", cands, rng)[0]
        stats[target].start()
        heapq.heappush(ends, (now + latency_s[target], target))
        chosen[target] += 1
    assert stats[0].calls + stats[1].calls == 5_000
    # equal weights would split evenly; holding equal queues gives the fast one several times more
    assert chosen[1] > 2.5 * chosen[0]


def test_least_outstanding_breaks_ties_by_weight() -> None:
    rng = random.Random(8)
    cands = candidates(3.0, 1.0, 1.0)
    cands[2].stats.start()
    firsts: Counter[int] = Counter()
    for _ in range(10_000):
        result = order("least_outstanding", cands, rng)
        assert result[2] == 2
        firsts[result[0]] += 1
    assert within_sigmas(firsts[0], 10_000, 0.75)


# lowest latency


def test_ewma_converges_to_a_new_level() -> None:
    stats = TargetStats()
    stats.observe_ttft(1.0)
    assert stats.ewma_ttft == 1.0
    for _ in range(20):
        stats.observe_ttft(0.2)
    assert stats.ewma_ttft == pytest.approx(0.2 + 0.8 * 0.7**20)
    assert stats.ewma_ttft == pytest.approx(0.2, abs=1e-3)


def test_ewma_half_life_is_in_samples() -> None:
    stats = TargetStats(half_life=4)
    stats.observe_ttft(1.0)
    for _ in range(4):
        stats.observe_ttft(0.0)
    assert stats.ewma_ttft == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("alpha", "half_life"), [(0.0, None), (1.5, None), (None, 0.0), (None, -1.0), (0.5, 4.0), (math.nan, None)]
)
def test_ewma_decay_is_validated(alpha: float | None, half_life: float | None) -> None:
    with pytest.raises(ValueError):
        TargetStats(alpha=alpha, half_life=half_life)


def test_a_time_to_first_token_is_not_negative() -> None:
    for seconds in (-0.1, math.nan):
        with pytest.raises(ValueError):
            TargetStats().observe_ttft(seconds)


def test_done_never_makes_outstanding_negative() -> None:
    stats = TargetStats()
    stats.done()
    stats.start()
    stats.done()
    stats.done()
    assert (stats.outstanding, stats.calls) == (0, 1)


def test_lowest_latency_learns_and_explores_the_slower_at_the_explore_rate() -> None:
    rng = random.Random(9)
    noise = random.Random(10)
    ttft_s = {0: 0.8, 1: 0.3}
    cands = candidates(1.0, 1.0)
    firsts: Counter[int] = Counter()
    n = 20_000
    for call in range(n):
        target = order("lowest_latency", cands, rng, explore=0.05)[0]
        cands[target].stats.observe_ttft(ttft_s[target] * noise.uniform(0.8, 1.2))
        if call >= 2:  # each has had its first, unmeasured, turn
            firsts[target] += 1
    assert cands[0].stats.ewma_ttft == pytest.approx(0.8, rel=0.25)
    assert cands[1].stats.ewma_ttft == pytest.approx(0.3, rel=0.25)
    # exploring picks one of the two uniformly: the slower is first on half the explore draws
    assert within_sigmas(firsts[0], n - 2, 0.05 / 2)


def test_lowest_latency_tries_an_unmeasured_target_first() -> None:
    cands = candidates(1.0, 1.0, 1.0)
    cands[0].stats.observe_ttft(0.1)
    cands[2].stats.observe_ttft(0.5)
    assert order("lowest_latency", cands, random.Random(0), explore=0.0) == [1, 0, 2]


def test_lowest_latency_probes_an_unmeasured_target_one_call_at_a_time() -> None:
    cands = candidates(1.0, 1.0)
    cands[0].stats.observe_ttft(0.1)
    assert order("lowest_latency", cands, random.Random(0), explore=0.0) == [1, 0]
    # Its first call is out: the next calls go to the measured one, not to wait behind it.
    cands[1].stats.start()
    assert order("lowest_latency", cands, random.Random(0), explore=0.0) == [0, 1]
    cands[1].stats.done()
    cands[1].stats.observe_ttft(0.4)
    assert order("lowest_latency", cands, random.Random(0), explore=0.0) == [0, 1]


def test_lowest_latency_without_exploring_never_picks_the_slower() -> None:
    rng = random.Random(11)
    cands = candidates(1.0, 1.0)
    cands[0].stats.observe_ttft(0.9)
    cands[1].stats.observe_ttft(0.2)
    assert all(order("lowest_latency", cands, rng, explore=0.0) == [1, 0] for _ in range(1_000))


def test_lowest_latency_explores_within_the_best_group_only() -> None:
    rng = random.Random(12)
    cands = [Candidate(0, 1.0, 0, TargetStats()), Candidate(1, 1.0, 1, TargetStats())]
    cands[0].stats.observe_ttft(5.0)
    cands[1].stats.observe_ttft(0.1)
    assert all(order("lowest_latency", cands, rng, explore=1.0) == [0, 1] for _ in range(100))


# lowest cost


def test_lowest_cost_cheapest_first_unknown_last() -> None:
    rng = random.Random(13)
    cands = [
        Candidate(0, 1.0, 0, TargetStats(price=None)),
        Candidate(1, 1.0, 0, TargetStats(price=15.0)),
        Candidate(2, 1.0, 0, TargetStats(price=0.6)),
        Candidate(3, 1.0, 0, TargetStats(price=3.0)),
    ]
    assert all(order("lowest_cost", cands, rng) == [2, 3, 1, 0] for _ in range(100))


def test_lowest_cost_breaks_ties_by_weight() -> None:
    rng = random.Random(14)
    cands = [
        Candidate(0, 3.0, 0, TargetStats(price=1.0)),
        Candidate(1, 1.0, 0, TargetStats(price=1.0)),
        Candidate(2, 9.0, 0, TargetStats(price=2.0)),
    ]
    firsts: Counter[int] = Counter()
    for _ in range(10_000):
        result = order("lowest_cost", cands, rng)
        assert result[2] == 2
        firsts[result[0]] += 1
    assert within_sigmas(firsts[0], 10_000, 0.75)
