"""Compressed request bodies: decoded (gzip, deflate) with the body limit applied after decoding and
a bounded expansion; any other coding is a 415 in the client's dialect."""

from __future__ import annotations

import gzip
import time
import zlib

import orjson
import pytest

from sluicegate.edge.body import decode
from sluicegate.errors import BadRequest, BodyTooLarge
from sluicegate.testing import FakeUpstream
from tests.conftest import RunningGateway, assert_openai_error

CHAT = "/v1/chat/completions"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "echo: compressed hello"}]}
RAW = orjson.dumps(BODY)


def _raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-15)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize(
    ("coding", "data"),
    [
        ("gzip", gzip.compress(RAW)),
        ("x-gzip", gzip.compress(RAW)),
        ("GZip", gzip.compress(RAW)),
        ("deflate", zlib.compress(RAW)),
        ("deflate", _raw_deflate(RAW)),  # raw deflate, as some clients send it
        ("gzip", gzip.compress(RAW[:20]) + gzip.compress(RAW[20:])),  # two members
        ("deflate, gzip", gzip.compress(zlib.compress(RAW))),  # applied in order, undone from the last
        ("identity", RAW),
        ("identity, gzip", gzip.compress(RAW)),
    ],
    ids=[
        "gzip",
        "x-gzip",
        "case",
        "deflate-zlib",
        "deflate-raw",
        "gzip-members",
        "two-codings",
        "identity",
        "ident-gzip",
    ],
)
def test_compressed_bodies_are_decoded(
    gateway: RunningGateway, upstream: FakeUpstream, coding: str, data: bytes
) -> None:
    with gateway.client() as c:
        resp = c.post(CHAT, content=data, headers={"Content-Encoding": coding, "Content-Type": "application/json"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "compressed hello"
    # The upstream gets plain JSON, never the client's coding.
    sent = upstream.requests[-1]
    assert "content-encoding" not in sent.headers
    assert sent.json()["messages"] == BODY["messages"]


@pytest.mark.parametrize("coding", ["br", "zstd", "compress", "gzip, br"])
def test_codings_not_decoded_get_415_in_the_clients_dialect(
    gateway: RunningGateway, upstream: FakeUpstream, coding: str
) -> None:
    with gateway.client() as c:
        resp = c.post(CHAT, content=RAW, headers={"Content-Encoding": coding, "Content-Type": "application/json"})
        assert_openai_error(resp, 415, "unsupported_content_encoding")
        anthropic = c.post(
            "/v1/messages",
            content=RAW,
            headers={"Content-Encoding": coding, "anthropic-version": "2023-06-01", "Content-Type": "application/json"},
        )
    assert anthropic.status_code == 415
    assert anthropic.json()["type"] == "error" and anthropic.json()["error"]["type"] == "invalid_request_error"
    assert upstream.calls == 0
    assert gateway.last_audit()["status"] == 415


def test_the_body_limit_applies_after_decoding(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    # 5 MiB of text (the limit is 4 MiB) compresses to a few KiB.
    big = orjson.dumps({**BODY, "messages": [{"role": "user", "content": "a" * (5 * 1024 * 1024)}]})
    with gateway.client() as c:
        resp = c.post(CHAT, content=gzip.compress(big), headers={"Content-Encoding": "gzip"})
        assert_openai_error(resp, 413, "request_too_large")
        # 1 MiB is under the limit, but it decodes from about 1 KiB: past the expansion ratio.
        dense = orjson.dumps({**BODY, "messages": [{"role": "user", "content": "a" * (1024 * 1024)}]})
        resp = c.post(CHAT, content=gzip.compress(dense), headers={"Content-Encoding": "gzip"})
        error = assert_openai_error(resp, 413, "request_too_large")
        assert "max_decoded_ratio" in error["message"]
    assert upstream.calls == 0


@pytest.mark.parametrize(
    ("coding", "data"),
    [
        ("gzip", b"not gzip at all"),
        ("gzip", gzip.compress(RAW)[:-12]),  # truncated
        ("gzip", gzip.compress(RAW) + b"trailing"),
        ("deflate", zlib.compress(RAW) + b"x"),
    ],
    ids=["garbage", "truncated", "trailing", "deflate-trailing"],
)
def test_invalid_compressed_bodies_are_400(
    gateway: RunningGateway, upstream: FakeUpstream, coding: str, data: bytes
) -> None:
    with gateway.client() as c:
        resp = c.post(CHAT, content=data, headers={"Content-Encoding": coding})
    assert_openai_error(resp, 400, "invalid_content_encoding")
    assert upstream.calls == 0


def test_a_decompression_bomb_stops_at_the_bound() -> None:
    bomb = gzip.compress(b"\0" * (200 * 1024 * 1024), compresslevel=9)  # 200 MiB in about 200 KiB
    start = time.process_time()
    with pytest.raises(BodyTooLarge):
        decode(bomb, ["gzip"], 4 * 1024 * 1024, 100)
    # Only the bound was inflated, not the 200 MiB.
    assert time.process_time() - start < 0.5
    with pytest.raises(BadRequest):
        decode(b"\x1f\x8b" + b"\0" * 20, ["gzip"], 1024, 100)
