"""The exact cache with every provider family: an answer stored from one family's stream (in its
own wire format) is a hit for the OpenAI SDK unstreamed and the Anthropic SDK streamed, with the
same text and usage."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import anthropic
import openai
import pytest

from sluicegate.testing import FakeUpstream, Reply
from tests.conftest import RunningGateway, run_gateway
from tests.e2e.test_matrix import FAMILIES, PROVIDERS, Family


@pytest.fixture(scope="module")
def gw(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with run_gateway(tmp_path_factory.mktemp("cache-matrix"), upstream_url, "cache: {enabled: true}\n") as gw:
        text = gw.config_path.read_text()
        text = text.replace("models:\n", PROVIDERS.format(upstream=upstream_url) + "models:\n", 1)
        models = "".join(
            f"  - {{name: {f.model}, provider: {f.provider}, model: {f.upstream_model}}}\n" for f in FAMILIES
        )
        gw.config_path.write_text(text.replace("models:\n", "models:\n" + models, 1))
        assert asyncio.run(gw.app.reload()), gw.app.last_reload_error
        yield gw


def settled(gw: RunningGateway) -> None:
    gw.audit()  # the call has finished (its audit event queued): its entry is stored


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_every_provider_family_is_cached_across_dialects(
    gw: RunningGateway, upstream: FakeUpstream, family: Family
) -> None:
    upstream.enqueue(Reply(content=f"Cached words from {family.name}, in several pieces."))
    prompt = [{"role": "user", "content": f"cache me ({family.name})"}]
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys["alice"], max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model=family.model,
            messages=prompt,  # type: ignore[arg-type]
            max_tokens=64,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert text == f"Cached words from {family.name}, in several pieces." and usage is not None
    settled(gw)
    whole = client.chat.completions.with_raw_response.create(model=family.model, messages=prompt, max_tokens=64)  # type: ignore[arg-type]
    assert whole.headers["x-cache"] == "hit"
    completion = whole.parse()
    assert completion.choices[0].message.content == text
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    claude = anthropic.Anthropic(base_url=gw.url, api_key=gw.keys["alice"], max_retries=0)
    with claude.messages.stream(model=family.model, max_tokens=64, messages=prompt) as stream:  # type: ignore[arg-type]
        assert "".join(stream.text_stream) == text
        assert stream.get_final_message().usage.output_tokens == usage.completion_tokens
    assert len(upstream.requests) == 1
    assert upstream.requests[0].path == family.paths[1]
    assert gw.last_audit()["cache"] == "hit"
