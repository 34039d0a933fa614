"""Claude Code's traffic through the gateway: its request shape, betas, streaming and tool loop.

The shape follows what Claude Code 2.1 sends (`POST /v1/messages?beta=true`, `anthropic-beta`
with several betas, system blocks with `cache_control`, a system message mid-conversation,
`thinking: adaptive`, `context_management`, `output_config`, a JSON `metadata.user_id`, many
tools, a stream), with the gateway's own texts. Both ways are checked: to an Anthropic upstream
(passthrough) and to an OpenAI-compatible one (translated). When the `claude` CLI is installed
(`.ci/run` installs it when npm is there), the real CLI is run against the gateway too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from sluicegate.testing import FakeUpstream, Reply
from tests.conftest import CANARY_KEY, RunningGateway, run_gateway, with_claude

BETAS = ",".join(
    ("claude-code-20250219", "interleaved-thinking-2025-05-14", "context-management-2025-06-27",
     "mid-conversation-system-2026-04-07")
)  # fmt: skip
#: model served by the Anthropic fake (passthrough) and by the OpenAI one (translated)
MODELS = {"claude-sonnet": "/v1/messages", "gpt-4o-mini": "/v1/chat/completions"}


@pytest.fixture(scope="module")
def gw(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with run_gateway(tmp_path_factory.mktemp("claude-code"), upstream_url) as gw:
        gw.reconfigure(lambda text: with_claude(text, upstream_url, "claude-sonnet"))
        yield gw


def tool(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "description": f"The {name} tool of the agent.",
        "input_schema": {
            "type": "object",
            "properties": {"command": {"type": "string", "description": "what to run"}},
            "required": ["command"],
            "additionalProperties": False,
            "$schema": "http://json-schema.org/draft-07/schema#",
        },
    }


def claude_code_body(model: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "model": model,
        "messages": messages,
        "system": [
            {"type": "text", "text": "x-billing-header: test"},
            {"type": "text", "text": "You are a coding agent.", "cache_control": {"type": "ephemeral"}},
            {
                "type": "text",
                "text": "Use the tools to inspect the repository.",
                "cache_control": {"type": "ephemeral"},
            },
        ],
        "tools": [tool(name) for name in ("Bash", "Read", "Edit", "Write", "Grep", "Glob", "Task", "WebFetch")],
        "metadata": {"user_id": json.dumps({"device_id": "d1", "account_uuid": "", "session_id": "s1"})},
        "max_tokens": 32000,
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
        "stream": True,
    }


FIRST_TURN = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "<reminder>context for the agent</reminder>"},
            {"type": "text", "text": "list the files", "cache_control": {"type": "ephemeral"}},
        ],
    },
    {"role": "system", "content": "Agents available: general-purpose."},
]


def stream_events(gw: RunningGateway, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """POST like Claude Code does and return the (event, data) pairs of the SSE answer."""
    headers = {
        "x-api-key": gw.keys["alice"],
        "anthropic-version": "2023-06-01",
        "anthropic-beta": BETAS,
        "x-app": "cli",
        "anthropic-dangerous-direct-browser-access": "true",
    }
    events: list[tuple[str, dict[str, Any]]] = []
    with httpx.stream("POST", gw.url + "/v1/messages?beta=true", json=body, headers=headers, timeout=10) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        name = ""
        for line in resp.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    return events


@pytest.mark.parametrize("model", list(MODELS))
def test_claude_code_request_streams(gw: RunningGateway, upstream: FakeUpstream, model: str) -> None:
    upstream.enqueue(Reply(content="Two files.", prompt_tokens=40, completion_tokens=3))
    events = stream_events(gw, claude_code_body(model, FIRST_TURN))
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_stop", names
    assert all(data["type"] == name for name, data in events)
    text = "".join(
        d["delta"]["text"] for n, d in events if n == "content_block_delta" and d["delta"]["type"] == "text_delta"
    )
    assert text == "Two files."
    delta = next(d for n, d in events if n == "message_delta")
    assert delta["delta"]["stop_reason"] == "end_turn" and delta["usage"]["output_tokens"] == 3
    sent = upstream.requests[-1]
    assert sent.path == MODELS[model]
    body = sent.json()
    if model == "claude-sonnet":  # passthrough: the body and the betas as Claude Code sent them
        assert sent.headers["anthropic-beta"] == BETAS and sent.headers["x-api-key"] == CANARY_KEY
        assert body["messages"][1]["role"] == "system" and body["context_management"]
    else:  # translated: system prompt first, the mid-conversation one where it stood
        roles = [m["role"] for m in body["messages"]]
        assert roles == ["system", "user", "system"], roles
        assert {t["function"]["name"] for t in body["tools"]} >= {"Bash", "Edit"}
    event = gw.last_audit()
    assert event["outcome"] == "ok" and (event["prompt_tokens"], event["completion_tokens"]) == (40, 3)


@pytest.mark.parametrize("model", list(MODELS))
def test_claude_code_tool_loop(gw: RunningGateway, upstream: FakeUpstream, model: str) -> None:
    client = anthropic.Anthropic(base_url=gw.url, api_key=gw.keys["alice"], max_retries=0)
    body = claude_code_body(model, FIRST_TURN)
    kwargs = {k: v for k, v in body.items() if k not in ("stream", "context_management", "output_config")}
    extra = {k: body[k] for k in ("context_management", "output_config")}
    upstream.enqueue(Reply(tool_calls=[{"name": "Bash", "arguments": {"command": "ls"}}]))
    with client.messages.stream(**kwargs, extra_body=extra, extra_headers={"anthropic-beta": BETAS}) as stream:
        first = stream.get_final_message()
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    assert (use.name, use.input) == ("Bash", {"command": "ls"})
    upstream.enqueue(Reply(content="I see two files."))
    kwargs["messages"] = [
        *FIRST_TURN,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "a.py\nb.py"}]},
    ]
    with client.messages.stream(**kwargs, extra_body=extra, extra_headers={"anthropic-beta": BETAS}) as stream:
        second = stream.get_final_message()
    assert second.content[-1].type == "text" and second.content[-1].text == "I see two files."
    sent = upstream.requests[-1].json()
    if model == "gpt-4o-mini":  # the tool result reached the OpenAI upstream as a tool message
        tool_message = next(m for m in sent["messages"] if m["role"] == "tool")
        assert tool_message["tool_call_id"] == use.id and "b.py" in tool_message["content"]


def _claude_cli() -> str | None:
    return os.environ.get("SLUICEGATE_CLAUDE_CLI") or shutil.which("claude")


@pytest.mark.skipif(_claude_cli() is None, reason="the claude CLI is not installed (npm i @anthropic-ai/claude-code)")
@pytest.mark.parametrize("model", list(MODELS))
def test_real_claude_code_cli(gw: RunningGateway, upstream: FakeUpstream, model: str, tmp_path: Path) -> None:
    cli = _claude_cli()
    assert cli is not None
    upstream.default = Reply(content="Hello from the gateway.")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "ANTHROPIC_BASE_URL": gw.url,
        "ANTHROPIC_API_KEY": gw.keys["alice"],
        "ANTHROPIC_MODEL": model,
        "ANTHROPIC_SMALL_FAST_MODEL": model,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
    }
    try:
        done = subprocess.run(
            [cli, "-p", "say hello"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=90
        )
    finally:
        upstream.default = None
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Hello from the gateway." in done.stdout
    events = [e for e in gw.audit(20) if e["model_requested"] == model]
    assert events and all(e["outcome"] == "ok" for e in events), events
    assert CANARY_KEY not in done.stdout + done.stderr


def test_models_list_in_anthropic_shape(gw: RunningGateway) -> None:
    client = anthropic.Anthropic(base_url=gw.url, api_key=gw.keys["bob"], max_retries=0)
    assert [m.id for m in client.models.list()] == ["gpt-4o-mini"]  # only what bob may use
    bad = anthropic.Anthropic(base_url=gw.url, api_key="sg-nope", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        bad.models.list()
    assert caught.value.response.json()["type"] == "error"


def test_anthropic_stream_passes_through_as_sent(gw: RunningGateway, upstream: FakeUpstream) -> None:
    """Events the gateway does not model (here `ping`; in production server-tool blocks and
    citations) reach an Anthropic client of an Anthropic model unchanged."""
    upstream.enqueue(Reply(content="Two files.", prompt_tokens=40, completion_tokens=3))
    events = stream_events(gw, claude_code_body("claude-sonnet", FIRST_TURN))
    names = [name for name, _ in events]
    assert "ping" in names and names[-1] == "message_stop"
    start = events[0][1]["message"]
    assert start["model"] == "claude-sonnet-4-5" and start["id"].startswith("msg_")  # the upstream's own
    assert gw.last_audit()["completion_tokens"] == 3
