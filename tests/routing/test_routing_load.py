"""Routing strategies under real concurrency, over HTTP: a gateway on loopback, called by many
clients at once, spreading its calls over fake upstreams (one that answers at once, one that takes
`SLOW_S` to answer). Each test counts which target served each call, both from the answer's
`x-sluicegate-target` header and from what the upstreams received."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import pytest

from sluicegate.testing import FakeUpstream, Reply, serve_in_thread
from tests.conftest import CANARY_KEY, RunningGateway, run_gateway

#: how long the slow upstream takes before its answer's headers
SLOW_S = 0.3

FAST, TWIN, SLOW = "mock/gpt-a", "twin/gpt-b", "laggard/gpt-slow"
QUICK = "mock/gpt-fast"


def providers(fast_url: str, slow_url: str) -> str:
    return f"""\
  - {{name: twin, type: openai_compatible, base_url: "{fast_url}/v1", api_key: env://TEST_UPSTREAM_KEY}}
  - {{name: laggard, type: openai_compatible, base_url: "{slow_url}/v1", api_key: env://TEST_UPSTREAM_KEY}}
"""


# One attempt per call and no breaker: a failed call fails the test instead of being served by
# the other target, which would skew the shares.
ONCE = "    retry: {max_attempts: 1}\n    breaker: {enabled: false}\n"
FAST_AND_SLOW = """\
    targets:
      - {provider: mock, model: gpt-fast}
      - {provider: laggard, model: gpt-slow}
"""
MODELS = (
    """\
  - name: split-3-1
    strategy: weighted
    targets:
      - {provider: mock, model: gpt-a, weight: 3}
      - {provider: twin, model: gpt-b, weight: 1}
"""
    + ONCE
    + """\
  - name: rotate-2-1
    strategy: round_robin
    targets:
      - {provider: mock, model: gpt-a, weight: 2}
      - {provider: twin, model: gpt-b, weight: 1}
"""
    + ONCE
    + """\
  - name: rotate-2-1-concurrent
    strategy: round_robin
    targets:
      - {provider: mock, model: gpt-a, weight: 2}
      - {provider: twin, model: gpt-b, weight: 1}
"""
    + ONCE
    + "  - name: least-busy\n    strategy: least_outstanding\n"
    + FAST_AND_SLOW
    + ONCE
    + "  - name: coin-flip\n    strategy: weighted\n"
    + FAST_AND_SLOW
    + ONCE
    + "  - name: quickest\n    strategy: lowest_latency\n"
    + FAST_AND_SLOW
    + ONCE
)


@dataclass
class Upstreams:
    fast: FakeUpstream
    slow: FakeUpstream
    fast_url: str
    slow_url: str


@pytest.fixture(scope="module")
def upstreams() -> Iterator[Upstreams]:
    """Two fake upstreams of this module's own: one answering at once, one after `SLOW_S` (the
    fake's latency is per instance, its `default` reply, not per model)."""
    fast = FakeUpstream(required_key=CANARY_KEY, max_recorded=20_000)
    slow = FakeUpstream(required_key=CANARY_KEY, max_recorded=20_000, default=Reply(delay_s=SLOW_S))
    with serve_in_thread(fast) as fast_url, serve_in_thread(slow) as slow_url:
        yield Upstreams(fast, slow, fast_url, slow_url)


@pytest.fixture(scope="module")
def gw(upstreams: Upstreams, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    # The base config's provider `mock` is the fast upstream.
    with run_gateway(tmp_path_factory.mktemp("routing-load"), upstreams.fast_url) as running:

        def edit(text: str) -> str:
            # the providers list ends where `models:` begins; the new models go first in theirs
            more = providers(upstreams.fast_url, upstreams.slow_url)
            return text.replace("models:\n", more + "models:\n" + MODELS, 1)

        running.reconfigure(edit)
        yield running


@pytest.fixture
def up(upstreams: Upstreams) -> Upstreams:
    """The upstreams, their records cleared for this test."""
    upstreams.fast.reset()
    upstreams.slow.reset()
    return upstreams


def received(*fakes: FakeUpstream) -> Counter[str]:
    """The upstream model of each chat call the fakes received."""
    return Counter(
        json.loads(r.body)["model"] for fake in fakes for r in fake.requests if r.path.endswith("/chat/completions")
    )


async def call_many(gw: RunningGateway, model: str, n: int, concurrency: int) -> list[str]:
    """Make `n` chat calls of `model`, `concurrency` of them in flight at any time (each client
    sends its next call when its last one is answered); return the serving target of each, in the
    order the answers came. Every call must succeed."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = {"authorization": f"Bearer {gw.keys['alice']}", "content-type": "application/json"}
    served: list[str] = []
    failures: list[tuple[int, str]] = []
    tickets = iter(range(n))
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(gw.url, connector=connector, timeout=timeout, headers=headers) as session:

        async def client() -> None:
            for _ in tickets:
                async with session.post("/v1/chat/completions", data=body) as resp:
                    text = await resp.text()
                    if resp.status != 200:
                        failures.append((resp.status, text))
                        continue
                    served.append(resp.headers["x-sluicegate-target"])

        await asyncio.gather(*(client() for _ in range(concurrency)))
    assert not failures, failures[:5]
    assert len(served) == n
    return served


async def test_weighted_shares_hold_over_10000_concurrent_calls(gw: RunningGateway, up: Upstreams) -> None:
    n, share = 10_000, 0.75
    started = time.monotonic()
    served = await call_many(gw, "split-3-1", n, concurrency=48)
    elapsed = time.monotonic() - started
    counts = Counter(served)
    expected, sigma = n * share, math.sqrt(n * share * (1 - share))
    assert set(counts) == {FAST, TWIN}, counts
    assert abs(counts[FAST] - expected) < 5 * sigma, (counts, expected, sigma)
    # The upstream saw the same split: the header names the target that really served each call.
    assert received(up.fast) == {"gpt-a": counts[FAST], "gpt-b": counts[TWIN]}
    print(f"\n10,000 weighted calls, 48 in flight: {elapsed:.1f} s ({n / elapsed:.0f} calls/s), {dict(counts)}")


async def test_round_robin_gives_exact_shares_evenly_spread(gw: RunningGateway, up: Upstreams) -> None:
    served = await call_many(gw, "rotate-2-1", 300, concurrency=1)
    assert Counter(served) == {FAST: 200, TWIN: 100}
    # Smooth: A B A, over and over; every three consecutive calls hold exactly one B.
    for i in range(len(served) - 2):
        assert served[i : i + 3].count(TWIN) == 1, (i, served[i : i + 3])
    assert received(up.fast) == {"gpt-a": 200, "gpt-b": 100}


async def test_round_robin_shares_stay_exact_under_concurrency(gw: RunningGateway, up: Upstreams) -> None:
    served = await call_many(gw, "rotate-2-1-concurrent", 600, concurrency=32)
    assert Counter(served) == {FAST: 400, TWIN: 200}


async def test_least_outstanding_sends_most_calls_to_the_target_that_answers_sooner(
    gw: RunningGateway, up: Upstreams
) -> None:
    n, in_flight = 600, 40
    # Weighted 1:1 on the same targets ignores how busy each is: about half the calls each.
    started = time.monotonic()
    blind = Counter(await call_many(gw, "coin-flip", n, in_flight))
    blind_s = time.monotonic() - started
    expected, sigma = n / 2, math.sqrt(n / 4)
    assert abs(blind[QUICK] - expected) < 5 * sigma, blind
    # Least outstanding: calls pile up on the slow target, so new ones go to the fast one.
    started = time.monotonic()
    aware = Counter(await call_many(gw, "least-busy", n, in_flight))
    aware_s = time.monotonic() - started
    assert set(aware) <= {QUICK, SLOW}, aware
    assert aware[QUICK] >= 0.75 * n, aware
    assert aware[QUICK] > blind[QUICK] + 10 * sigma, (aware, blind)
    assert received(up.fast)["gpt-fast"] == blind[QUICK] + aware[QUICK]
    assert received(up.slow)["gpt-slow"] == blind[SLOW] + aware[SLOW]
    # Nothing left in flight once every call was answered.
    with gw.client(None) as plain:
        status = plain.get("/readyz").json()["routing"]["least-busy"]
    assert [t["outstanding"] for t in status] == [0, 0], status
    print(f"\nweighted 1:1 {dict(blind)} in {blind_s:.1f} s; least_outstanding {dict(aware)} in {aware_s:.1f} s")


async def test_lowest_latency_prefers_the_faster_target_once_measured(gw: RunningGateway, up: Upstreams) -> None:
    # Warm-up: a target not measured yet goes first, so both are measured within a few calls.
    warm = await call_many(gw, "quickest", 4, concurrency=1)
    assert set(warm) == {QUICK, SLOW}, warm
    n = 400
    served = Counter(await call_many(gw, "quickest", n, concurrency=8))
    assert set(served) <= {QUICK, SLOW}, served
    # The slow target is first only when a call explores (5 %, half of them landing on it): ~10 calls.
    assert served[QUICK] >= 0.9 * n, served
    assert served[SLOW] >= 1, f"no call explored the slow target: {served}"
