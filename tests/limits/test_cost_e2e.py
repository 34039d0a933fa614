"""What a call costs, end to end: official SDKs through the gateway to the fake upstream, and the
audit event's usage details and cost, worked out by hand here to the micro-unit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from sluicegate.testing import FakeUpstream, Reply
from tests.conftest import RunningGateway, run_gateway, with_claude

#: `dated-4o` is priced by the built-in table (gpt-4o: input 2.5, cached 1.25, output 10 USD per
#: million tokens); `reasoner` by its own `price:`; `claude` is served as claude-sonnet-4-5 by an
#: Anthropic provider (table: input 3, cache read 0.3, cache write 3.75, output 15)
MODELS = """\
  - name: dated-4o
    provider: mock
    model: gpt-4o-2024-08-06
  - name: reasoner
    provider: mock
    model: private-reasoner
    price: {input: 1.0, output: 4.0, cached_input: 0.25, reasoning: 8.0, per_request: 0.001, per_image: 0.002}
"""
#: a 1x1 PNG
PIXEL = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


@pytest.fixture(scope="module")
def gw(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with run_gateway(tmp_path_factory.mktemp("cost"), upstream_url) as running:
        running.reconfigure(
            lambda text: with_claude(text.replace("models:\n", "models:\n" + MODELS, 1), upstream_url, "claude")
        )
        yield running


def oai(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys["alice"], max_retries=0)


def claude(gw: RunningGateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=gw.keys["alice"], max_retries=0)


def event_of(gw: RunningGateway, request_id: str) -> dict[str, Any]:
    found = [e for e in gw.audit(50) if e["request_id"] == request_id]
    assert len(found) == 1, request_id
    return found[0]


def details(event: dict[str, Any]) -> tuple[Any, ...]:
    return (
        event["prompt_tokens"],
        event["completion_tokens"],
        event["cached_tokens"],
        event["cache_write_tokens"],
        event["reasoning_tokens"],
    )


def test_openai_chat_priced_by_the_table_with_cached_tokens(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content="fine", prompt_tokens=1233, completion_tokens=77, cached_tokens=1001))
    raw = oai(gw).chat.completions.with_raw_response.create(
        model="dated-4o", messages=[{"role": "user", "content": "hello"}]
    )
    completion = raw.parse()
    assert completion.usage is not None and completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 1001
    event = event_of(gw, raw.headers["x-request-id"])
    assert details(event) == (1233, 77, 1001, None, 0)
    # 232 x 2.5 + 1001 x 1.25 + 77 x 10 = 580 + 1251.25 + 770 = 2601.25 micro-USD
    assert event["cost_micro_usd"] == 2601


def test_openai_stream_with_reasoning_image_and_per_request_price(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(
        Reply(
            content="one two three", prompt_tokens=500, completion_tokens=400, cached_tokens=100, reasoning_tokens=300
        )
    )
    message: Any = {
        "role": "user",
        "content": [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": PIXEL}}],
    }
    with oai(gw).chat.completions.with_streaming_response.create(
        model="reasoner", messages=[message], stream=True
    ) as response:
        request_id = response.headers["x-request-id"]
        chunks: Iterator[Any] = iter(response.parse())
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "one two three"
    event = event_of(gw, request_id)
    assert event["stream"] is True
    assert details(event) == (500, 400, 100, None, 300)
    # input: 400 x 1.0 + 100 x 0.25 = 425; output: 100 x 4.0 + 300 x 8.0 = 2800;
    # one request 1000; one image 2000
    assert event["cost_micro_usd"] == 425 + 2800 + 1000 + 2000


def test_legacy_prices_bill_cached_tokens_at_the_input_price(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content="ok", prompt_tokens=1000, completion_tokens=10, cached_tokens=800))
    raw = oai(gw).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    event = event_of(gw, raw.headers["x-request-id"])
    assert details(event) == (1000, 10, 800, None, 0)
    # input_cost_per_mtok 0.15 for all 1000 prompt tokens, output 0.6: 150 + 6
    assert event["cost_micro_usd"] == 156


def test_anthropic_messages_with_cache_reads(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content="cached answer", prompt_tokens=2000, completion_tokens=101, cached_tokens=1500))
    raw = claude(gw).messages.with_raw_response.create(
        model="claude", max_tokens=200, messages=[{"role": "user", "content": "hello"}]
    )
    message = raw.parse()
    assert message.usage.cache_read_input_tokens == 1500 and message.usage.input_tokens == 500
    event = event_of(gw, raw.headers["x-request-id"])
    assert details(event) == (2000, 101, 1500, 0, None)
    # 500 x 3 + 1500 x 0.3 + 101 x 15 = 1500 + 450 + 1515
    assert event["cost_micro_usd"] == 3465


def test_anthropic_stream_with_cache_reads(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content="a b c", prompt_tokens=1003, completion_tokens=9, cached_tokens=1001))
    with claude(gw).messages.with_streaming_response.create(
        model="claude", max_tokens=200, messages=[{"role": "user", "content": "hello"}], stream=True
    ) as response:
        request_id = response.headers["x-request-id"]
        kinds = [event.type for event in response.parse()]
    assert kinds[-1] == "message_stop"
    event = event_of(gw, request_id)
    assert details(event) == (1003, 9, 1001, 0, None)
    # 2 x 3 + 1001 x 0.3 + 9 x 15 = 6 + 300.3 + 135 = 441.3
    assert event["cost_micro_usd"] == 441


def test_anthropic_cache_writes_cost_their_own_price(gw: RunningGateway, upstream: FakeUpstream) -> None:
    answer = {
        "id": "msg_cache_write",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": "written"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 10,
            "cache_creation_input_tokens": 1001,
            "cache_read_input_tokens": 0,
            "output_tokens": 20,
        },
    }
    upstream.enqueue(Reply(body=answer))
    raw = claude(gw).messages.with_raw_response.create(
        model="claude", max_tokens=200, messages=[{"role": "user", "content": "hello"}]
    )
    event = event_of(gw, raw.headers["x-request-id"])
    assert details(event) == (1011, 20, 0, 1001, None)
    # 10 x 3 + 1001 x 3.75 + 20 x 15 = 30 + 3753.75 + 300 = 4083.75
    assert event["cost_micro_usd"] == 4084


def test_openai_client_streaming_from_an_anthropic_provider(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content="x y", prompt_tokens=400, completion_tokens=5, cached_tokens=300))
    with oai(gw).chat.completions.with_streaming_response.create(
        model="claude",
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        request_id = response.headers["x-request-id"]
        usage = [chunk.usage for chunk in response.parse() if chunk.usage is not None]
    assert usage and usage[-1].prompt_tokens == 400
    event = event_of(gw, request_id)
    assert details(event) == (400, 5, 300, 0, None)
    # 100 x 3 + 300 x 0.3 + 5 x 15 = 300 + 90 + 75
    assert event["cost_micro_usd"] == 465
