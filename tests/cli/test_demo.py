"""Demo mode, as the README's first command runs it: no config, no internet, no provider key."""

from __future__ import annotations

import re
from pathlib import Path

import anthropic
import openai

from sluicegate.demo import demo_key
from sluicegate.store.db import create_engine
from tests.conftest import gateway_process


def test_demo_mode_answers_offline_with_the_printed_key(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with gateway_process(data, cwd=tmp_path) as gw:
        key = (data / "demo-key").read_text().strip()
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
        reply = client.chat.completions.create(model="mock-chat", messages=[{"role": "user", "content": "echo: hi"}])
        assert reply.choices[0].message.content == "hi"
        chunks = client.chat.completions.create(
            model="mock-chat", messages=[{"role": "user", "content": "echo: a b"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "a b"
        assert len(client.embeddings.create(model="mock-embed", input="x").data) == 1
        assert sorted(m.id for m in client.models.list()) == ["mock-chat", "mock-claude", "mock-embed"]
        # Anthropic clients too: passthrough to the mock's Messages API, and translated to its OpenAI one
        claude = anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)
        for model in ("mock-claude", "mock-chat"):
            message = claude.messages.create(
                model=model, max_tokens=20, messages=[{"role": "user", "content": "echo: hello claude"}]
            )
            assert message.content[0].type == "text" and message.content[0].text == "hello claude"
            with claude.messages.stream(
                model=model, max_tokens=20, messages=[{"role": "user", "content": "echo: x y z"}]
            ) as stream:
                assert "".join(stream.text_stream) == "x y z"
    # the key printed at start is the one kept in the data folder, and a second start reuses it
    printed = re.search(r"key: (sg-\S+)", gw.output.decode())
    assert printed and printed.group(1) == key
    assert demo_key(create_engine(f"sqlite:///{data / 'sluicegate.db'}"), data) == key
