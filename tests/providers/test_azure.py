"""Azure OpenAI: deployment URLs, `api-version`, the key in `api-key`; the openai SDK as client."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import openai
import pytest

from sluicegate.config.loader import parse_config
from sluicegate.testing import FakeUpstream
from tests.conftest import CANARY_KEY, RunningGateway, run_gateway

AZURE = """\
  - name: azure
    type: azure_openai
    base_url: {upstream}
    api_key: env://TEST_UPSTREAM_KEY
    options: {{api_version: "2024-10-21"}}
"""


@pytest.fixture(scope="module")
def gw(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with run_gateway(tmp_path_factory.mktemp("azure"), upstream_url) as gw:
        text = gw.config_path.read_text()
        text = text.replace("models:\n", AZURE.format(upstream=upstream_url) + "models:\n", 1)
        text = text.replace(
            "models:\n",
            "models:\n  - {name: az-chat, provider: azure, model: my-gpt4o-deployment}\n"
            "  - {name: az-embed, provider: azure, model: embed-deployment}\n",
            1,
        )
        gw.config_path.write_text(text)
        assert asyncio.run(gw.app.reload()), gw.app.last_reload_error
        yield gw


def client(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys["alice"], max_retries=0)


def test_chat_goes_to_the_deployment_with_api_key(gw: RunningGateway, upstream: FakeUpstream) -> None:
    reply = client(gw).chat.completions.create(model="az-chat", messages=[{"role": "user", "content": "echo: hi"}])
    assert reply.choices[0].message.content == "hi"
    sent = upstream.requests[-1]
    assert sent.path == "/openai/deployments/my-gpt4o-deployment/chat/completions"
    assert sent.query == "api-version=2024-10-21"
    assert sent.headers["api-key"] == CANARY_KEY and "authorization" not in sent.headers
    assert gw.last_audit()["provider"] == "azure"


def test_stream_and_embeddings(gw: RunningGateway, upstream: FakeUpstream) -> None:
    chunks = client(gw).chat.completions.create(
        model="az-chat", messages=[{"role": "user", "content": "echo: a b c"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "a b c"
    assert gw.last_audit()["completion_tokens"] == 3
    assert len(client(gw).embeddings.create(model="az-embed", input="x").data) == 1
    assert upstream.requests[-1].path == "/openai/deployments/embed-deployment/embeddings"


def test_options_are_checked() -> None:
    text = """\
providers:
  - name: az
    type: azure_openai
    base_url: https://res.openai.azure.com
    api_key: env://AZ
    options: {api_version: "2024-10-21", region: west}
  - name: o
    type: openai
    api_key: env://O
    options: {api_version: x}
"""
    _, issues = parse_config(text)
    got = [str(i) for i in issues if not i.warning]
    assert got == [
        "providers[0].options.region (line 6): unknown key",
        "providers[1].options (line 10): provider type 'openai' takes no options",
    ]
