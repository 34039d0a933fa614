"""How a route picks among its targets: the attempt order for one call, first the chosen target, then the fallbacks.

Pure selection logic: no I/O, no clock. The caller keeps one `TargetStats` per target (and one
`SmoothWeighted` per route for `round_robin`), builds `Candidate`s from them and its circuit breakers,
and calls `order()` on every call.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: the strategies `order()` knows, by the name a route's config gives
STRATEGIES = ("priority", "weighted", "round_robin", "least_outstanding", "lowest_latency", "lowest_cost")
#: the EWMA's weight for a new time-to-first-token sample: a half-life of about two samples
DEFAULT_ALPHA = 0.3
#: how often `lowest_latency` puts a random target first, so a slow one's figure stays current
DEFAULT_EXPLORE = 0.05


class TargetStats:
    """What selection knows about one target; long-lived, shared by every call to it.

    `ewma_ttft` is an exponentially weighted mean of the time to first token in seconds, None
    until the first sample: each sample moves it `alpha` of the way. `half_life` (in samples) is
    the other way to say it: after that many samples an old value's weight has halved, so
    `alpha = 1 - 0.5 ** (1 / half_life)`. `price` is the integrator's estimate of a call's cost,
    in any unit as long as it is the same for every target of a route; None is unknown.

    Usage:

        stats.start()
        try:
            ...  # the upstream call; on its first token: stats.observe_ttft(elapsed_s)
        finally:
            stats.done()
    """

    __slots__ = ("alpha", "calls", "ewma_ttft", "outstanding", "price")

    def __init__(self, *, alpha: float | None = None, half_life: float | None = None, price: float | None = None):
        if alpha is not None and half_life is not None:
            raise ValueError("give alpha or half_life, not both")
        if half_life is not None:
            if not (half_life > 0 and math.isfinite(half_life)):
                raise ValueError(f"half_life must be a positive number of samples, not {half_life!r}")
            alpha = 1.0 - 0.5 ** (1.0 / half_life)
        elif alpha is None:
            alpha = DEFAULT_ALPHA
        elif not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], not {alpha!r}")
        self.alpha: float = alpha
        #: calls started (`start()`), ever
        self.calls: int = 0
        #: calls in flight: started and not yet done
        self.outstanding: int = 0
        self.ewma_ttft: float | None = None
        self.price: float | None = price

    def __repr__(self) -> str:
        return (
            f"TargetStats(outstanding={self.outstanding}, calls={self.calls}, "
            f"ewma_ttft={self.ewma_ttft!r}, price={self.price!r})"
        )

    def start(self) -> None:
        """A call to this target begins."""
        self.calls += 1
        self.outstanding += 1

    def done(self) -> None:
        """A call to this target ended, however it ended."""
        # a done() without its start() is a caller's bug; a negative count would then pull every
        # call to this target under least_outstanding, so it stops at zero
        if self.outstanding > 0:
            self.outstanding -= 1

    def observe_ttft(self, seconds: float) -> None:
        """Fold one time to first token (seconds, >= 0) into `ewma_ttft`."""
        if not seconds >= 0.0:  # NaN fails this too
            raise ValueError(f"a time to first token is >= 0 seconds, not {seconds!r}")
        ewma = self.ewma_ttft
        self.ewma_ttft = seconds if ewma is None else ewma + self.alpha * (seconds - ewma)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One target of a route as selection sees it for a call.

    `index` is the target's position in the route (what `order()` returns); `weight` (> 0) is its
    share; `priority` ranks groups, lower first; `available` is False while its circuit breaker is
    open, and then it is in no order at all. Build them once per route and replace one
    (`dataclasses.replace`) when its breaker changes state.
    """

    index: int
    weight: float
    priority: int
    stats: TargetStats
    available: bool = True

    def __post_init__(self) -> None:
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise ValueError(f"target {self.index}: weight must be a positive number, not {self.weight!r}")


class SmoothWeighted:
    """Smooth weighted round robin for one route (nginx's): deterministic, exact shares, well spread.

    Each call, every available candidate of the best priority group gains its weight; the one
    with the most is chosen and pays back the group's total weight. Weights 3:1 give
    A A B A, over and over: exactly 3:1 over every four calls, never more than three of one in a
    row. State is one number per target index, so one object serves one route; a target whose
    breaker is open keeps its number and resumes from it. Not thread-safe (one event loop).

    Usage:

        rr = SmoothWeighted()  # one per route, kept as long as the route's targets are unchanged
        attempts = order("round_robin", candidates, rng, rr=rr)
    """

    __slots__ = ("_current",)

    def __init__(self) -> None:
        self._current: dict[int, float] = {}

    def next_order(self, candidates: Sequence[Candidate]) -> list[int]:
        """The attempt order for the next call, advancing the rotation of the best group only.

        The rest of the best group follows in the order the rotation would choose them next; the
        lower priority groups follow likewise, without advancing: they are fallbacks, not choices.
        """
        groups = _groups(candidates)
        if not groups:
            return []
        current = self._current
        best = groups[0]
        total = 0.0
        chosen = best[0]
        top = -math.inf
        for c in best:
            due = current.get(c.index, 0.0) + c.weight
            current[c.index] = due
            total += c.weight
            if due > top:  # strict: on a tie the first listed wins, so the order is deterministic
                top = due
                chosen = c
        current[chosen.index] = top - total
        result = [chosen.index]
        if len(best) > 1:
            result.extend(c.index for c in sorted(best, key=self._due) if c is not chosen)
        for group in groups[1:]:
            result.extend(c.index for c in sorted(group, key=self._due))
        return result

    def _due(self, c: Candidate) -> float:
        # what the next step would give it, negated: sorted() puts the most due first
        return -(self._current.get(c.index, 0.0) + c.weight)


def order(
    strategy: str,
    candidates: Sequence[Candidate],
    rng: random.Random,
    *,
    rr: SmoothWeighted | None = None,
    explore: float = DEFAULT_EXPLORE,
) -> list[int]:
    """The attempt order for one call: target indexes, the chosen one first, then the fallbacks.

    Unavailable candidates are left out; an empty result means nothing can be tried. Candidates are
    grouped by `priority`, lowest first: the strategy chooses within the best group that has an
    available candidate, orders the rest of that group the same way, then each following group.

    - `priority`: heaviest weight first, always (a preference list); equal weights in random order.
    - `weighted`: weighted random without replacement: each is first in proportion to its weight.
    - `round_robin`: smooth weighted round robin; needs `rr`, the route's `SmoothWeighted`.
    - `least_outstanding`: fewest calls in flight first.
    - `lowest_latency`: lowest `ewma_ttft` first, targets without a sample before all others (one
      call at a time: while it is out, such a target comes last); with
      probability `explore` a uniformly random target of the best group is put first instead.
    - `lowest_cost`: lowest `price` first, unknown prices last.

    Ties are broken by weighted random. `rng` supplies every random draw (seed it to replay).
    """
    if strategy == "round_robin":
        if rr is None:
            raise ValueError("the round_robin strategy needs rr=SmoothWeighted(), one per route")
        return rr.next_order(candidates)
    keys = _KEYS.get(strategy)
    if keys is None:
        raise ValueError(f"unknown routing strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    keyed = keys(candidates, rng.random)
    if len(keyed) > 1:
        keyed.sort()
    result = [key[-1] for key in keyed]
    if strategy == "lowest_latency" and len(result) > 1 and rng.random() < explore:
        _explore(result, candidates, rng)
    return result


# Each key list holds, per available candidate, a tuple ending in its index: the priority, the
# strategy's measure, then a weighted random tie-break. The tie-break is an Efraimidis-Spirakis key
# (u ** (1 / weight), largest first, so negated): sorting by it alone is a weighted random draw
# without replacement. One sort then orders the groups and every group within them.
_Key = tuple[int, float, int] | tuple[int, float, float, int]  # (priority, measure..., index)
_Keys = Callable[[Sequence[Candidate], Callable[[], float]], list[_Key]]


def _weighted_keys(candidates: Sequence[Candidate], rand: Callable[[], float]) -> list[_Key]:
    return [(c.priority, -(rand() ** (1.0 / c.weight)), c.index) for c in candidates if c.available]


def _priority_keys(candidates: Sequence[Candidate], rand: Callable[[], float]) -> list[_Key]:
    return [(c.priority, -c.weight, rand(), c.index) for c in candidates if c.available]


def _least_outstanding_keys(candidates: Sequence[Candidate], rand: Callable[[], float]) -> list[_Key]:
    return [
        (c.priority, c.stats.outstanding, -(rand() ** (1.0 / c.weight)), c.index) for c in candidates if c.available
    ]


def _lowest_latency_keys(candidates: Sequence[Candidate], rand: Callable[[], float]) -> list[_Key]:
    return [(c.priority, _latency(c.stats), -(rand() ** (1.0 / c.weight)), c.index) for c in candidates if c.available]


def _latency(stats: TargetStats) -> float:
    # A target never measured sorts before every measured one (-1.0 < any time): it is explored
    # first, by one call at a time; while that call is out it sorts last, so a burst of calls does
    # not all wait on a target that may be slow.
    ewma = stats.ewma_ttft
    if ewma is not None:
        return ewma
    return -1.0 if stats.outstanding == 0 else math.inf


def _lowest_cost_keys(candidates: Sequence[Candidate], rand: Callable[[], float]) -> list[_Key]:
    return [
        (c.priority, math.inf if c.stats.price is None else c.stats.price, -(rand() ** (1.0 / c.weight)), c.index)
        for c in candidates
        if c.available
    ]


_KEYS: dict[str, _Keys] = {
    "priority": _priority_keys,
    "weighted": _weighted_keys,
    "least_outstanding": _least_outstanding_keys,
    "lowest_latency": _lowest_latency_keys,
    "lowest_cost": _lowest_cost_keys,
}


def _explore(result: list[int], candidates: Sequence[Candidate], rng: random.Random) -> None:
    """Move a uniformly random target of the best priority group to the front of `result`."""
    priority_of = {c.index: c.priority for c in candidates}
    best = priority_of[result[0]]
    size = 1
    while size < len(result) and priority_of[result[size]] == best:
        size += 1
    pick = rng.randrange(size)
    if pick:
        result.insert(0, result.pop(pick))


def _groups(candidates: Sequence[Candidate]) -> list[list[Candidate]]:
    """The available candidates by priority, lowest first; the given order is kept within a group."""
    live = [c for c in candidates if c.available]
    if not live:
        return []
    first = live[0].priority
    if all(c.priority == first for c in live):
        return [live]
    live.sort(key=_priority_of)
    groups: list[list[Candidate]] = [[live[0]]]
    for c in live[1:]:
        if c.priority == groups[-1][0].priority:
            groups[-1].append(c)
        else:
            groups.append([c])
    return groups


def _priority_of(c: Candidate) -> int:
    return c.priority
