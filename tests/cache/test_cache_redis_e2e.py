"""The exact cache in Redis, shared by two gateway instances on one key: an answer stored
through one is a hit through the other, in another dialect too, and what Redis holds is
ciphertext. A gateway with another key reads nothing of it."""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from pathlib import Path

import anthropic
import openai
import redis

from sluicegate.testing import FakeUpstream, Reply
from tests.conftest import RunningGateway, run_gateway
from tests.redis_server import RedisServer

SHARED_KEY = "c2hhcmVkLWNhY2hlLWtleS1mb3ItdGVzdHMtMDEyMzQ1Njc4OQ"


def config(redis_url: str, key_env: str, scope: str = "global") -> str:
    return f"""\
cache:
  enabled: true
  backend: redis
  redis: {{url: "{redis_url}", key: "env://{key_env}", prefix: "sg-test-{key_env}:"}}
  default: {{scope: {scope}}}
"""


def wait_hit(client: openai.OpenAI, **kwargs: object) -> str:
    """The cache status of the call, once the other instance's background write landed."""
    deadline = time.monotonic() + 5
    while True:
        status = client.chat.completions.with_raw_response.create(**kwargs).headers["x-cache"]  # type: ignore[call-overload]
        if status == "hit" or time.monotonic() > deadline:
            return str(status)
        time.sleep(0.05)


def test_two_instances_share_encrypted_entries(
    upstream: FakeUpstream, upstream_url: str, tmp_path: Path, redis_server: RedisServer
) -> None:
    os.environ["SG_CACHE_KEY_A"] = SHARED_KEY
    os.environ["SG_CACHE_KEY_OTHER"] = SHARED_KEY[::-1]
    upstream.enqueue(Reply(content="the secret launch date is May 4"), Reply(content="other key's answer"))
    for name in ("one", "two", "other"):
        (tmp_path / name).mkdir()
    with ExitStack() as stack:
        one: RunningGateway = stack.enter_context(
            run_gateway(tmp_path / "one", upstream_url, config(redis_server.url, "SG_CACHE_KEY_A"))
        )
        two: RunningGateway = stack.enter_context(
            run_gateway(tmp_path / "two", upstream_url, config(redis_server.url, "SG_CACHE_KEY_A"))
        )
        messages = [{"role": "user", "content": "When is the launch? (redis)"}]
        first = openai.OpenAI(base_url=one.url + "/v1", api_key=one.keys["alice"], max_retries=0)
        answer = first.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=50)  # type: ignore[arg-type]
        assert answer.choices[0].message.content == "the secret launch date is May 4"
        second = openai.OpenAI(base_url=two.url + "/v1", api_key=two.keys["alice"], max_retries=0)
        assert wait_hit(second, model="gpt-4o-mini", messages=messages, max_tokens=50) == "hit"
        # Through the other instance, in Anthropic's dialect, streamed.
        claude = anthropic.Anthropic(base_url=two.url, api_key=two.keys["alice"], max_retries=0)
        with claude.messages.stream(model="gpt-4o-mini", max_tokens=50, messages=messages) as stream:  # type: ignore[arg-type]
            assert "".join(stream.text_stream) == "the secret launch date is May 4"
        assert len(upstream.requests) == 1
        # Redis holds ciphertext only.
        raw = redis.Redis.from_url(redis_server.url)
        keys = raw.keys("sg-test-SG_CACHE_KEY_A:*")
        assert keys
        for key in keys:
            value = raw.get(key)
            assert value is not None and b"launch" not in value and b"May 4" not in value
        # A gateway with another key shares the Redis but reads nothing (another prefix would hide
        # it anyway: this one uses the same keys space to prove the key, not the prefix, protects).
        other_cfg = config(redis_server.url, "SG_CACHE_KEY_OTHER").replace(
            "sg-test-SG_CACHE_KEY_OTHER:", "sg-test-SG_CACHE_KEY_A:"
        )
        other: RunningGateway = stack.enter_context(run_gateway(tmp_path / "other", upstream_url, other_cfg))
        stranger = openai.OpenAI(base_url=other.url + "/v1", api_key=other.keys["alice"], max_retries=0)
        resp = stranger.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=messages,  # type: ignore[arg-type]
            max_tokens=50,
        )
        assert resp.headers["x-cache"] == "miss"
        assert resp.parse().choices[0].message.content == "other key's answer"


def test_redis_down_makes_misses_not_failures(upstream: FakeUpstream, upstream_url: str, tmp_path: Path) -> None:
    (tmp_path / "redis").mkdir()
    (tmp_path / "gw").mkdir()
    server = RedisServer(tmp_path / "redis")
    server.start()
    os.environ["SG_CACHE_KEY_A"] = SHARED_KEY
    try:
        with run_gateway(tmp_path / "gw", upstream_url, config(server.url, "SG_CACHE_KEY_A", "consumer")) as gw:
            client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys["alice"], max_retries=0)
            messages = [{"role": "user", "content": "still there? (redis down)"}]
            client.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
            assert wait_hit(client, model="gpt-4o-mini", messages=messages) == "hit"
            server.stop()
            for _ in range(3):
                resp = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
                assert resp.status_code == 200
                assert resp.headers["x-cache"] == "miss"
            assert gw.last_audit()["cache"] == "miss"
            # Shown, not judged: the gateway stays ready while its cache store is down.
            with gw.client(None) as plain:
                ready = plain.get("/readyz")
            assert ready.status_code == 200
            cache = ready.json()["cache"]
            assert cache["backend"] == "redis" and cache["errors"] >= 1
    finally:
        server.stop()
