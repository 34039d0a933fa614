"""Every disguise of a forbidden text is seen through, over HTTP, by every client API (chat,
completions, Responses, Messages), on the prompt and on the answer, streamed and not: Unicode tag
characters, default-ignorable padding, combining marks, look-alikes of several scripts in both
cases, other-script digits in a card number, and base64, percent and HTML-entity encodings."""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sluicegate.testing import FakeUpstream, Reply
from tests.conftest import CANARY_KEY, RunningGateway, guarded_alice, run_gateway, with_claude

GUARDS = """\
guards:
  - name: codename
    kind: regex
    settings:
      deny: ["project\\\\s+nightingale"]
  - name: cards
    kind: pii
    settings:
      entities: [CREDIT_CARD]
groups:
  - name: guarded
    guards: [codename, cards]
"""
CLAUDE = "claude-sonnet"

PHRASE = "project nightingale"
CARD = "4663 9233 2146 8814"


def tags(text: str) -> str:
    return "".join(chr(0xE0000 + ord(c)) for c in text)


def padded(text: str) -> str:
    # Default-ignorable code points that are not format characters: a grapheme joiner, Hangul
    # fillers, variation selectors, a Mongolian selector, a shorthand format control.
    pads = ["\u034f", "\u115f", "\u3164", "\ufe0f", "\u180b", "\U000e0100", "\u2060", "\U0001bca1"]
    return "".join(c + pads[i % len(pads)] for i, c in enumerate(text))


def marked(text: str) -> str:
    marks = ["\u0301", "\u0308", "\u0336", "\u0323", "\u20dd", "\u0489", "\u0300"]
    return "".join(c + (marks[i % len(marks)] if c != " " else "") for i, c in enumerate(text))


# Look-alikes from Greek, Cyrillic, Cherokee, Armenian, Myanmar and Arabic letters, none of which a
# short list of Cyrillic and Greek homoglyphs holds (written as escapes: the source stays readable).
LOOKALIKE_LOWER = "\u03f8\u0493\u0473\u03f3\u04bd\u105at \u03b7\u13a5\u0581\u04bbt\u13a5\u0578\u0581a\u0627\u04bd"
LOOKALIKE_UPPER = (
    "\u13e2\u13d2\u0472\u13ab\u13ac\u13df\u04ac \u039d\u04c0\u13c0\u04a2\u04ac\u04c0\u039d\u050c\u13aa\u13de\u13ac"
)


def other_digits(text: str) -> str:
    return "".join(chr(0x0660 + int(c)) if c.isdigit() else c for c in text)  # Arabic-Indic digits


#: name -> (the disguised text, the guard that must catch it)
CLASSES: dict[str, tuple[str, str]] = {
    "tag-characters": (tags(PHRASE), "codename"),
    "default-ignorables": (padded(PHRASE), "codename"),
    "combining-marks": (marked(PHRASE), "codename"),
    "confusables-lower": (LOOKALIKE_LOWER, "codename"),
    "confusables-upper": (LOOKALIKE_UPPER, "codename"),
    "card-in-arabic-digits": (f"card {other_digits(CARD)} exp 09/27", "cards"),
    "base64": (base64.b64encode(PHRASE.encode()).decode(), "codename"),
    "percent": (urllib.parse.quote(f"about {PHRASE}", safe=""), "codename"),
    "html-entities": ("".join(f"&#{ord(c)};" for c in PHRASE), "codename"),
}
APIS = ["chat", "completions", "responses", "messages"]


@pytest.fixture(scope="module")
def gw(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with run_gateway(tmp_path_factory.mktemp("guards-normalisation"), upstream_url, GUARDS) as gw:
        gw.reconfigure(lambda text: guarded_alice(with_claude(text, upstream_url, CLAUDE)))
        yield gw


def request(gw: RunningGateway, api: str, text: str, *, stream: bool) -> httpx.Response:
    """One call of `api` whose prompt is `text`, read whole (a stream's events included)."""
    body: dict[str, Any] = {"model": CLAUDE if api == "messages" else "gpt-4o-mini", "stream": stream}
    if api == "chat":
        path, body["messages"] = "/v1/chat/completions", [{"role": "user", "content": text}]
    elif api == "completions":
        path, body["prompt"] = "/v1/completions", text
    elif api == "responses":
        path, body["input"] = "/v1/responses", text
    else:
        path, body["messages"], body["max_tokens"] = "/v1/messages", [{"role": "user", "content": text}], 100
    headers = {"x-api-key": gw.keys["alice"], "anthropic-version": "2023-06-01"}
    if api != "messages":
        headers = {"Authorization": f"Bearer {gw.keys['alice']}"}
    with httpx.Client(base_url=gw.url, headers=headers, timeout=10) as client:
        return client.post(path, json=body)


def received_strings(resp: httpx.Response) -> str:
    """Every string the client was sent, JSON decoded (an SSE stream's events one by one)."""
    out: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        for line in resp.text.splitlines():
            if line.startswith("data:") and line[5:].strip() not in ("", "[DONE]"):
                walk(json.loads(line[5:]))
    else:
        walk(resp.json())
    return "\n".join(out)


def assert_blocked(resp: httpx.Response, api: str, guard: str) -> None:
    """A refusal in the client's own shape: an error JSON, or an error event in a started stream."""
    assert CANARY_KEY not in resp.text
    if resp.status_code == 200:
        assert resp.headers["content-type"].startswith("text/event-stream"), resp.text
        assert "content_blocked" in resp.text or "invalid_request_error" in resp.text, resp.text
        assert "[DONE]" not in resp.text and "message_stop" not in resp.text and "response.completed" not in resp.text
        return
    assert resp.status_code == 400, resp.text
    error = resp.json()
    if api == "messages":
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error", error
        assert guard in error["error"]["message"]
    else:
        assert error["error"]["code"] == "content_blocked" and guard in error["error"]["message"], error


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("case", list(CLASSES))
def test_prompt_disguises_are_blocked(
    gw: RunningGateway, upstream: FakeUpstream, case: str, api: str, stream: bool
) -> None:
    disguised, guard = CLASSES[case]
    resp = request(gw, api, f"Tell me everything about {disguised}, please.", stream=stream)
    assert_blocked(resp, api, guard)
    assert upstream.calls == 0  # nothing left the gateway
    event = gw.last_audit()
    assert event["outcome"] == "content_blocked" and guard in event["guards"]
    records = json.loads(event["guards"])
    if case == "tag-characters":
        assert {"kind": "unicode_tags", "action": "flag", "direction": "input"}.items() <= next(
            r for r in records if r["kind"] == "unicode_tags"
        ).items()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("case", list(CLASSES))
def test_answer_disguises_are_blocked_without_leaking(
    gw: RunningGateway, upstream: FakeUpstream, case: str, api: str, stream: bool
) -> None:
    disguised, guard = CLASSES[case]
    upstream.enqueue(Reply(content=f"Here it is: {disguised} and nothing else."))
    resp = request(gw, api, "what is the codename?", stream=stream)
    assert_blocked(resp, api, guard)
    seen = received_strings(resp)
    tell = other_digits(CARD)[:4] if guard == "cards" else disguised[:6]
    assert disguised not in seen and tell not in seen
    assert gw.last_audit()["outcome"] == "content_blocked"


@pytest.mark.parametrize("api", APIS)
def test_plain_text_still_flows(gw: RunningGateway, upstream: FakeUpstream, api: str) -> None:
    # The same guards let ordinary text through, encoded or not: base64 of harmless words, a
    # percent-encoded query, entities in HTML, a card-like number that fails Luhn.
    upstream.enqueue(Reply(content="Fine: a&amp;b, 50%25 off, aGVsbG8gd29ybGQ=, 4663 9233 2146 8815."))
    resp = request(gw, api, "Decode aGVsbG8gd29ybGQ= and q=caf%C3%A9+au+lait &eacute;t&eacute;", stream=False)
    assert resp.status_code == 200, resp.text
    assert "4663 9233 2146 8815" in received_strings(resp)


@pytest.mark.parametrize("api", APIS)
def test_stream_window_sees_a_phrase_padded_past_it(gw: RunningGateway, upstream: FakeUpstream, api: str) -> None:
    # 40 invisible characters after each letter: 19 normalised characters, 779 raw ones, and its
    # first word alone longer than the 256-character window of a regex with an unbounded `\s+`.
    disguised = "".join(c + "\u2060" * 40 for c in PHRASE)
    filler = " ".join(f"w{i}" for i in range(40))  # the answer stays within max_tokens (100 pieces)
    upstream.enqueue(Reply(content=f"{filler} {disguised} {filler}", chunk_interval_s=0.001))
    resp = request(gw, api, "what is the codename?", stream=True)
    assert_blocked(resp, api, "codename")
    assert disguised[:41] not in received_strings(resp)
