"""Routes of several targets over HTTP: fallback on each failure kind and never after the first
streamed byte, the serving target in a header and every attempt in the audit, weights, circuit
breakers, the retry budget and `Retry-After`."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import openai
import prometheus_client
import pytest

from sluicegate.testing import FakeUpstream, Reply
from tests.conftest import RunningGateway, run_gateway


def routes(upstream: str) -> str:
    return f"""\
  - {{name: alt, type: openai_compatible, base_url: "{upstream}/v1", api_key: env://TEST_UPSTREAM_KEY}}
  - {{name: dead, type: openai_compatible, base_url: "http://127.0.0.1:9/v1", api_key: env://TEST_UPSTREAM_KEY}}
  - name: slow
    type: openai_compatible
    base_url: "{upstream}/v1"
    api_key: env://TEST_UPSTREAM_KEY
    timeouts: {{connect_s: 2, read_s: 0.3, total_s: 5}}
"""


MODELS = """\
  - name: pair
    targets:
      - {provider: mock, model: gpt-a}
      - {provider: alt, model: gpt-b, priority: 1}
    retry: {max_attempts: 3, base_s: 0.001, cap_s: 0.002}
    breaker: {enabled: false}
  - name: pair-400
    targets:
      - {provider: mock, model: gpt-a}
      - {provider: alt, model: gpt-b, priority: 1}
    fallback_on_status: [400, 500]
    breaker: {enabled: false}
  - name: from-dead
    targets:
      - {provider: dead, model: gpt-a}
      - {provider: alt, model: gpt-b, priority: 1}
    breaker: {enabled: false}
  - name: from-slow
    targets:
      - {provider: slow, model: gpt-a}
      - {provider: alt, model: gpt-b, priority: 1}
    breaker: {enabled: false}
  - name: split
    strategy: weighted
    targets:
      - {provider: mock, model: gpt-a, weight: 3}
      - {provider: alt, model: gpt-b, weight: 1}
  - name: guarded-pair
    targets:
      - {provider: mock, model: gpt-a}
      - {provider: alt, model: gpt-b, priority: 1}
    breaker: {failure_rate: 0.5, min_calls: 3, window_s: 30, open_s: 0.5}
  - name: lonely
    targets:
      - {provider: mock, model: gpt-a}
    retry: {max_attempts: 3, base_s: 0.001, cap_s: 0.002, budget_ratio: 0.2}
    breaker: {enabled: false}
  - name: thrifty
    strategy: lowest_cost
    targets:
      - {provider: mock, model: gpt-4o}
      - {provider: alt, model: gpt-4o-mini}
  - name: patient
    targets:
      - {provider: mock, model: gpt-a}
    breaker: {enabled: false}
"""


@pytest.fixture(scope="module")
def gw(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with run_gateway(tmp_path_factory.mktemp("routing"), upstream_url) as running:

        def edit(text: str) -> str:
            text = text.replace("models:\n", routes(upstream_url) + "models:\n", 1)
            # (the providers list ends where `models:` begins; new models go first in theirs)
            return text.replace("models:\n", "models:\n" + MODELS, 1)

        running.reconfigure(lambda text: edit(text).replace("providers:\n" + routes(upstream_url), "providers:\n"))
        yield running


def client(gw: RunningGateway, who: str = "alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys[who], max_retries=0)


def served_models(upstream: FakeUpstream) -> list[str]:
    return [json.loads(r.body)["model"] for r in upstream.requests if r.path.endswith("/chat/completions")]


def ask(gw: RunningGateway, model: str, stream: bool = False) -> openai.types.chat.ChatCompletion:
    return client(gw).chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    "failure",
    [Reply(status=500, error_message="boom"), Reply(status=503), Reply(status=429), Reply(status=502)],
    ids=["500", "503", "429", "502"],
)
def test_a_failing_target_falls_back_to_the_next(gw: RunningGateway, upstream: FakeUpstream, failure: Reply) -> None:
    upstream.enqueue(failure, Reply(content="from b"))
    raw = client(gw).chat.completions.with_raw_response.create(
        model="pair", messages=[{"role": "user", "content": "x"}]
    )
    assert raw.parse().choices[0].message.content == "from b"
    assert raw.headers["x-sluicegate-target"] == "alt/gpt-b"
    assert served_models(upstream) == ["gpt-a", "gpt-b"]
    event = gw.last_audit()
    attempts = json.loads(event["attempts"])
    assert [(a["target"], a["status"]) for a in attempts] == [("mock/gpt-a", failure.status), ("alt/gpt-b", 200)]
    assert event["provider"] == "alt" and event["status"] == 200


def test_connection_failure_and_timeout_fall_back(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content="after dead"))
    assert ask(gw, "from-dead").choices[0].message.content == "after dead"
    attempts = json.loads(gw.last_audit()["attempts"])
    assert [a["error"] for a in attempts] == ["upstream_unavailable", None]
    upstream.enqueue(Reply(content="too late", delay_s=1.0), Reply(content="after slow"))
    assert ask(gw, "from-slow").choices[0].message.content == "after slow"
    attempts = json.loads(gw.last_audit()["attempts"])
    assert [a["error"] for a in attempts] == ["upstream_timeout", None]


def test_a_status_not_listed_does_not_fall_back(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(status=400, error_message="context length exceeded"), Reply(content="unused"))
    with pytest.raises(openai.BadRequestError):
        ask(gw, "pair")
    assert served_models(upstream) == ["gpt-a"]
    # Listed, it does (a longer-context target, say).
    upstream.reset()
    upstream.enqueue(Reply(status=400, error_message="context length exceeded"), Reply(content="longer context"))
    assert ask(gw, "pair-400").choices[0].message.content == "longer context"


def test_no_fallback_once_the_stream_began(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content="one two three four five", fault="reset"), Reply(content="never"))
    with pytest.raises(openai.APIError):
        list(client(gw).chat.completions.create(model="pair", messages=[{"role": "user", "content": "x"}], stream=True))
    assert served_models(upstream) == ["gpt-a"]


def test_weights_share_the_calls(gw: RunningGateway, upstream: FakeUpstream) -> None:
    n = 800
    sdk = client(gw)
    for _ in range(n):
        sdk.chat.completions.create(model="split", messages=[{"role": "user", "content": "hi"}])
    counts = Counter(served_models(upstream))
    expected, sigma = n * 0.75, math.sqrt(n * 0.75 * 0.25)
    assert abs(counts["gpt-a"] - expected) < 5 * sigma, counts
    assert counts["gpt-a"] + counts["gpt-b"] == n


def test_lowest_cost_goes_to_the_cheaper_target(gw: RunningGateway, upstream: FakeUpstream) -> None:
    sdk = client(gw)
    for _ in range(20):
        sdk.chat.completions.create(model="thrifty", messages=[{"role": "user", "content": "hi"}])
    assert set(served_models(upstream)) == {"gpt-4o-mini"}
    # Its cost is the serving target's; one attempt is described by the event itself.
    event = gw.last_audit()
    assert event["provider"] == "alt" and event["attempts"] is None


def test_a_breaker_opens_skips_its_target_and_closes_after_a_good_probe(
    gw: RunningGateway, upstream: FakeUpstream
) -> None:
    for _ in range(3):
        upstream.enqueue(Reply(status=500), Reply(content="b"))
        ask(gw, "guarded-pair")
    assert served_models(upstream) == ["gpt-a", "gpt-b"] * 3
    # Open: the first target is not tried at all.
    upstream.reset()
    ask(gw, "guarded-pair")
    assert served_models(upstream) == ["gpt-b"]
    with gw.client(None) as plain:
        circuits = plain.get("/readyz").json()["routing"]["guarded-pair"]
    assert {c["target"]: c["circuit"]["state"] for c in circuits}["mock/gpt-a"] == "open"
    exposition = prometheus_client.generate_latest(gw.app.metrics.registry).decode()
    assert 'sluicegate_route_circuit_state{model="guarded-pair",target="mock/gpt-a"} 2.0' in exposition
    # After open_s a probe goes to it; its success closes the circuit.
    time.sleep(0.6)
    upstream.reset()
    upstream.enqueue(Reply(content="a is back"))
    assert ask(gw, "guarded-pair").choices[0].message.content == "a is back"
    upstream.reset()
    ask(gw, "guarded-pair")
    assert served_models(upstream) == ["gpt-a"]


def test_the_retry_budget_bounds_what_a_failing_target_receives(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.default = Reply(status=503)
    try:
        calls = 40
        for _ in range(calls):
            with pytest.raises(openai.InternalServerError):
                ask(gw, "lonely")
        received = len(served_models(upstream))
    finally:
        upstream.default = None
    # Each call may try 3 times; the budget lets retries be 20 % of calls, no more.
    assert calls < received <= calls * 1.2


def test_retry_after_is_honoured(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(status=429, retry_after=0.3), Reply(content="after waiting"))
    started = time.monotonic()
    assert ask(gw, "patient").choices[0].message.content == "after waiting"
    assert time.monotonic() - started >= 0.3
    assert served_models(upstream) == ["gpt-a", "gpt-a"]


def test_a_consumer_is_routed_only_to_providers_it_may_use(
    upstream: FakeUpstream, upstream_url: str, tmp_path: Path
) -> None:
    with run_gateway(tmp_path, upstream_url) as running:

        def edit(text: str) -> str:
            text = text.replace("models:\n", routes(upstream_url) + "models:\n", 1)
            text = text.replace("providers:\n" + routes(upstream_url), "providers:\n")
            text = text.replace("models:\n", "models:\n" + MODELS, 1)
            return text.replace(
                "  - name: bob\n    models: [gpt-4o-mini]\n",
                "  - name: bob\n    models: [split]\n    providers: [alt]\n",
            )

        running.reconfigure(edit)
        for _ in range(20):
            client(running, "bob").chat.completions.create(model="split", messages=[{"role": "user", "content": "x"}])
        assert set(served_models(upstream)) == {"gpt-b"}


def test_an_answer_a_fallback_served_is_not_cached_under_the_first_target(
    upstream: FakeUpstream, upstream_url: str, tmp_path: Path
) -> None:
    with run_gateway(tmp_path, upstream_url, "cache: {enabled: true}\n") as running:

        def edit(text: str) -> str:
            text = text.replace("models:\n", routes(upstream_url) + "models:\n", 1)
            text = text.replace("providers:\n" + routes(upstream_url), "providers:\n")
            return text.replace("models:\n", "models:\n" + MODELS, 1)

        running.reconfigure(edit)
        upstream.enqueue(Reply(status=500), Reply(content="from b"), Reply(content="from a"))
        sdk = client(running)
        first = sdk.chat.completions.with_raw_response.create(model="pair", messages=[{"role": "user", "content": "q"}])
        assert first.parse().choices[0].message.content == "from b"
        again = sdk.chat.completions.with_raw_response.create(model="pair", messages=[{"role": "user", "content": "q"}])
        # The key names the first target: b's answer was not stored under it; a's now is.
        assert again.headers["x-cache"] == "miss"
        assert again.parse().choices[0].message.content == "from a"
        third = sdk.chat.completions.with_raw_response.create(model="pair", messages=[{"role": "user", "content": "q"}])
        assert (third.headers["x-cache"], third.parse().choices[0].message.content) == ("hit", "from a")
