"""Mistral: OpenAI's shape, but unknown fields are refused; usage rides on the last chunk."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import openai
import pytest

from sluicegate.testing import FakeUpstream
from tests.conftest import RunningGateway, run_gateway

MISTRAL = '  - {{name: mistral, type: mistral, base_url: "{upstream}/mistral/v1", api_key: env://TEST_UPSTREAM_KEY}}\n'


@pytest.fixture(scope="module")
def gw(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with run_gateway(tmp_path_factory.mktemp("mistral"), upstream_url) as gw:
        text = gw.config_path.read_text()
        text = text.replace("models:\n", MISTRAL.format(upstream=upstream_url) + "models:\n", 1)
        text = text.replace("models:\n", "models:\n  - {name: mistral-small, provider: mistral}\n", 1)
        gw.config_path.write_text(text)
        assert asyncio.run(gw.app.reload()), gw.app.last_reload_error
        yield gw


def client(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys["alice"], max_retries=0)


def test_stream_accounts_usage_without_stream_options(gw: RunningGateway, upstream: FakeUpstream) -> None:
    chunks = list(
        client(gw).chat.completions.create(
            model="mistral-small",
            messages=[{"role": "user", "content": "echo: one two three"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two three"
    sent = upstream.requests[-1].json()
    assert "stream_options" not in sent
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    event = gw.last_audit()
    assert (event["completion_tokens"], event["usage_source"]) == (3, "upstream")


def test_renamed_fields(gw: RunningGateway, upstream: FakeUpstream) -> None:
    reply = client(gw).chat.completions.create(
        model="mistral-small",
        messages=[{"role": "user", "content": "echo: a b c d"}],
        max_completion_tokens=2,
        seed=7,
    )
    assert reply.choices[0].message.content == "a b"
    sent = upstream.requests[-1].json()
    assert sent["max_tokens"] == 2 and sent["random_seed"] == 7
    assert "seed" not in sent and "max_completion_tokens" not in sent
