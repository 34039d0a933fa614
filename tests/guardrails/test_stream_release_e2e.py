"""Streamed answers through output guards, over HTTP, by every client API (chat, completions,
Responses, Messages): text that holds no partial match reaches the client before the upstream
sends its next event, however long the guards' reach (a `\\s+` pattern's 256 characters); text
that could still become a match waits only for the event that settles it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sluicegate.testing import FakeUpstream, Reply
from sluicegate.testing.wire import Progress
from tests.conftest import RunningGateway, guarded_alice, run_gateway, with_claude

GUARDS = """\
guards:
  - name: codename
    kind: regex
    settings:
      deny: ["project\\\\s+nightingale"]
  - {name: pii, kind: pii, action: redact}
  - {name: secrets, kind: secrets}
groups:
  - name: guarded
    guards: [codename, pii, secrets]
"""
CLAUDE = "claude-sonnet"
APIS = ["chat", "completions", "responses", "messages"]
#: every event ends after a comma: nothing in it can be the start of a match
LIST = "Tents, stakes, ropes, lamps, maps, boots,"
#: every event ends inside a word that could still become an address or a key
PROSE = "Summarise the report for the board"
INTERVAL_S = 0.2


@pytest.fixture(scope="module")
def gw(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with run_gateway(tmp_path_factory.mktemp("guards-release"), upstream_url, GUARDS) as gw:
        gw.reconfigure(
            lambda text: guarded_alice(with_claude(text, upstream_url, CLAUDE)).replace(
                "    models: [gpt-4o-mini]\n",
                f"    models: [gpt-4o-mini, {CLAUDE}]\n",  # bob: no guards
            )
        )
        yield gw


def _request(api: str, key: str) -> tuple[str, dict[str, Any], dict[str, str]]:
    body: dict[str, Any] = {"model": CLAUDE if api == "messages" else "gpt-4o-mini", "stream": True}
    if api == "chat":
        path, body["messages"] = "/v1/chat/completions", [{"role": "user", "content": "list"}]
    elif api == "completions":
        path, body["prompt"] = "/v1/completions", "list"
    elif api == "responses":
        path, body["input"] = "/v1/responses", "list"
    else:
        path, body["messages"], body["max_tokens"] = "/v1/messages", [{"role": "user", "content": "list"}], 100
    if api == "messages":
        return path, body, {"x-api-key": key, "anthropic-version": "2023-06-01"}
    return path, body, {"Authorization": f"Bearer {key}"}


def _text_of(data: Any) -> str:
    """The answer text an event carries, in any of the four APIs."""
    if not isinstance(data, dict):
        return ""
    if data.get("type") == "response.output_text.delta" or data.get("type") == "content_block_delta":
        delta = data.get("delta")
        return delta if isinstance(delta, str) else (delta or {}).get("text", "") if isinstance(delta, dict) else ""
    out = ""
    for choice in data.get("choices") or ():
        out += choice.get("text") or (choice.get("delta") or {}).get("content") or ""
    return out


def stream_pieces(
    gw: RunningGateway, upstream: FakeUpstream, api: str, consumer: str, text: str
) -> list[tuple[str, int]]:
    """Each text event `consumer` receives, with how many body events the upstream had sent then."""
    progress = Progress()
    upstream.enqueue(Reply(content=text, chunk_interval_s=INTERVAL_S, progress=progress))
    path, body, headers = _request(api, gw.keys[consumer])
    seen: list[tuple[str, int]] = []
    with httpx.Client(base_url=gw.url, headers=headers, timeout=10) as client:
        with client.stream("POST", path, json=body) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if not line.startswith("data:") or line[5:].strip() in ("", "[DONE]"):
                    continue
                text = _text_of(json.loads(line[5:]))
                if text:
                    seen.append((text, progress.body_events))
    return seen


@pytest.mark.parametrize("api", APIS)
def test_text_without_a_partial_match_reaches_the_client_before_the_next_event(
    gw: RunningGateway, upstream: FakeUpstream, api: str
) -> None:
    plain = stream_pieces(gw, upstream, api, "bob", LIST)  # no guards
    guarded = stream_pieces(gw, upstream, api, "alice", LIST)
    assert "".join(text for text, _ in guarded) == LIST
    # Each piece reached the client before the upstream sent the next one, as without guards
    # (the upstream waits between events, so it cannot have sent more).
    assert guarded == plain
    assert [sent for _, sent in plain] == list(range(plain[0][1], plain[0][1] + len(plain)))


@pytest.mark.parametrize("api", APIS)
def test_text_that_may_still_become_a_match_waits_for_one_event(
    gw: RunningGateway, upstream: FakeUpstream, api: str
) -> None:
    plain = stream_pieces(gw, upstream, api, "bob", PROSE)
    guarded = stream_pieces(gw, upstream, api, "alice", PROSE)
    assert "".join(text for text, _ in guarded) == PROSE
    # Each word goes out once the next one shows it did not become an address or a key.
    assert [sent for _, sent in guarded[:-1]] == [sent + 1 for _, sent in plain[:-1]]
