"""The provider key never leaves: not in what the client gets, not in the audit, not in the logs.

A real `sluicegate serve` runs as a child process; the fake upstream echoes the key it received
(whole, cut, masked) in every place an upstream can put text: in-band stream errors on
passthrough and translated streams, 200 answers that are error bodies, error statuses whose
message straddles a length limit. Each case checks the client's bytes, the audit row and the
server's output for the key and for every 8-character piece of it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from sluicegate.audit.reader import latest_events
from sluicegate.store.db import create_engine
from sluicegate.store.keys import KeyStore
from sluicegate.testing import FakeUpstream, Reply
from tests.conftest import CANARY_KEY, GatewayProcess, gateway_process

CONFIG = """\
providers:
  - {{name: mock, type: openai_compatible, base_url: "{upstream}/v1", api_key: env://TEST_UPSTREAM_KEY}}
  - {{name: p-anthropic, type: anthropic, base_url: "{upstream}", api_key: env://TEST_UPSTREAM_KEY}}
  - {{name: p-gemini, type: gemini, base_url: "{upstream}/v1beta", api_key: env://TEST_UPSTREAM_KEY}}
models:
  - {{name: gpt-4o-mini, provider: mock}}
  - {{name: m-anthropic, provider: p-anthropic, model: claude-sonnet-4-5}}
  - {{name: m-gemini, provider: p-gemini, model: gemini-2.5-flash}}
consumers:
  - {{name: alice, models: ["*"]}}
"""
#: every piece of the key an attacker could use: itself and each run of 8 characters
PIECES = [CANARY_KEY] + [CANARY_KEY[i : i + 8] for i in range(len(CANARY_KEY) - 7)]


@dataclass
class Served:
    proc: GatewayProcess
    key: str
    engine: sa.Engine

    def call(self, path: str, body: dict[str, Any]) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key}", "anthropic-version": "2023-06-01"}
        return httpx.post(self.proc.url + path, json=body, headers=headers, timeout=10)

    def audit_row(self, request_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rows = [e for e in latest_events(self.engine, 50) if e["request_id"] == request_id]
            if rows:
                return rows[0]
            time.sleep(0.05)
        raise AssertionError(f"no audit row for {request_id}")


@pytest.fixture(scope="module")
def served(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp: Path = tmp_path_factory.mktemp("leaks")
    config = tmp / "gw.yaml"
    config.write_text(CONFIG.format(upstream=upstream_url))
    data = tmp / "data"
    engine = create_engine(f"sqlite:///{data / 'sluicegate.db'}")
    key, _ = KeyStore(engine).create("alice")
    with gateway_process(data, "--config", str(config), log=tmp / "gateway.log") as proc:
        yield Served(proc, key, engine)
    assert_clean(proc.output, "the server's output")


def assert_clean(blob: bytes | str, where: str) -> None:
    text = blob.decode("utf-8", "replace") if isinstance(blob, bytes) else blob
    found = [piece for piece in PIECES if piece in text]
    assert not found, f"{where} holds the provider key: {found[:3]}"


def check(served: Served, resp: httpx.Response) -> dict[str, Any]:
    """Nothing of the key in the client's bytes, the audit row or the server's output so far."""
    assert_clean(resp.content, "the client's answer")
    row = served.audit_row(resp.headers["x-request-id"])
    assert_clean(repr(row), "the audit row")
    assert_clean(served.proc.output_so_far(), "the server's output")
    assert row["decision"] == "error" and row["reason"]
    return row


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def messages(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}], **extra}


ECHOES = {
    "whole": "Incorrect API key provided: {key}",
    "cut": "Incorrect API key provided: {key:.20}",
    "masked": "Incorrect API key provided: {key:.14}****" + CANARY_KEY[-4:],
}
#: (client path, body) of streamed calls through each client API and path
STREAMS = {
    "openai-passthrough": ("/v1/chat/completions", chat("gpt-4o-mini", stream=True)),
    "completions-passthrough": ("/v1/completions", {"model": "gpt-4o-mini", "prompt": "hi", "stream": True}),
    "anthropic-passthrough": ("/v1/messages", messages("m-anthropic", stream=True)),
    "openai-to-anthropic": ("/v1/chat/completions", chat("m-anthropic", stream=True)),
    "openai-to-gemini": ("/v1/chat/completions", chat("m-gemini", stream=True)),
    "anthropic-to-openai": ("/v1/messages", messages("gpt-4o-mini", stream=True)),
    "responses-to-openai": ("/v1/responses", {"model": "gpt-4o-mini", "input": "hi", "stream": True}),
}


@pytest.mark.parametrize("echo", list(ECHOES))
@pytest.mark.parametrize("path", list(STREAMS))
def test_an_error_event_inside_a_stream_never_carries_the_key(
    served: Served, upstream: FakeUpstream, path: str, echo: str
) -> None:
    upstream.enqueue(Reply(content="one two three four", fault="error_event", error_message=ECHOES[echo]))
    resp = served.call(*STREAMS[path])
    assert resp.status_code == 200 and b"error" in resp.content[-500:]
    row = check(served, resp)
    assert row["outcome"].startswith("upstream_")


#: (client path, body) of complete answers
ANSWERS = {
    "openai-passthrough": ("/v1/chat/completions", chat("gpt-4o-mini")),
    "anthropic-passthrough": ("/v1/messages", messages("m-anthropic")),
    "openai-to-gemini": ("/v1/chat/completions", chat("m-gemini")),
    "anthropic-to-openai": ("/v1/messages", messages("gpt-4o-mini")),
    "stream-asked": ("/v1/chat/completions", chat("gpt-4o-mini", stream=True)),
}


@pytest.mark.parametrize("path", list(ANSWERS))
def test_a_200_answer_that_is_an_error_body_is_an_upstream_error(
    served: Served, upstream: FakeUpstream, path: str
) -> None:
    upstream.enqueue(Reply(fault="error_200", error_message=ECHOES["whole"]))
    resp = served.call(*ANSWERS[path])
    if path != "stream-asked":
        assert resp.status_code >= 400
    check(served, resp)


@pytest.mark.parametrize("before", [950, 962, 970, 985, 995])
def test_an_error_message_cut_at_its_limit_keeps_no_part_of_the_key(
    served: Served, upstream: FakeUpstream, before: int
) -> None:
    # the key straddles the length a message is cut to, wherever that cut falls
    upstream.enqueue(Reply(status=400, error_message="x" * before + "{key} tail"))
    resp = served.call("/v1/chat/completions", chat("gpt-4o-mini"))
    assert resp.status_code == 400
    check(served, resp)


def test_a_plain_text_error_body_is_scrubbed_before_it_is_cut(served: Served, upstream: FakeUpstream) -> None:
    body = b"y" * 290 + CANARY_KEY.encode() + b" was refused"
    upstream.enqueue(Reply(status=500, raw_body=body, raw_content_type="text/plain"))
    resp = served.call("/v1/chat/completions", chat("gpt-4o-mini"))
    assert resp.status_code == 502
    check(served, resp)


def test_the_audit_reason_keeps_a_code_and_no_card_number(served: Served, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(status=400, error_message="Card 4539 1488 0343 6467 was declined for key {key:.12}"))
    resp = served.call("/v1/chat/completions", chat("gpt-4o-mini"))
    row = check(served, resp)
    assert "4539" not in row["reason"] and "[CREDIT_CARD]" in row["reason"]
    assert row["reason"].startswith("upstream_bad_request: ") and len(row["reason"]) <= 500
