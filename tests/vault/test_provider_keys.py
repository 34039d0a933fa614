"""Several keys per provider, through the running gateway: `round_robin` and `on_429`."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluicegate.testing import FakeUpstream, Reply
from tests.conftest import assert_openai_error
from tests.vault.conftest import BODY, CHAT, bearer, gateway_on, provider_config

KEYS = ["sk-pk-canary-one-111", "sk-pk-canary-two-222", "sk-pk-canary-three-333"]
REFS = "[env://TEST_PK_1, env://TEST_PK_2, env://TEST_PK_3]"


@pytest.fixture(autouse=True)
def provider_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for i, key in enumerate(KEYS, 1):
        monkeypatch.setenv(f"TEST_PK_{i}", key)


def test_round_robin_spreads_calls_over_every_key(tmp_path: Path, any_key_upstream: tuple[FakeUpstream, str]) -> None:
    upstream, url = any_key_upstream
    used: list[str] = []
    with gateway_on(tmp_path, provider_config(url, REFS)) as gw, gw.client() as c:
        for _ in range(6):
            assert c.post(CHAT, json=BODY).status_code == 200
            used.append(bearer(upstream))
    assert used == KEYS + KEYS


def test_on_429_stays_on_one_key_until_it_is_rate_limited(
    tmp_path: Path, any_key_upstream: tuple[FakeUpstream, str]
) -> None:
    upstream, url = any_key_upstream
    used: list[tuple[str, int]] = []
    with gateway_on(tmp_path, provider_config(url, REFS, rotation="on_429")) as gw, gw.client() as c:
        for reply in [Reply(), Reply(), Reply(status=429), Reply(), Reply(), Reply(status=429), Reply(status=429)]:
            upstream.enqueue(reply)
            resp = c.post(CHAT, json=BODY)
            used.append((bearer(upstream), resp.status_code))
        upstream.enqueue(Reply())
        assert c.post(CHAT, json=BODY).status_code == 200
        used.append((bearer(upstream), 200))
    one, two, three = KEYS
    assert used == [(one, 200), (one, 200), (one, 429), (two, 200), (two, 200), (two, 429), (three, 429), (one, 200)]


def test_a_missing_key_in_the_list_fails_that_call_closed(
    tmp_path: Path, any_key_upstream: tuple[FakeUpstream, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream, url = any_key_upstream
    monkeypatch.delenv("TEST_PK_2")
    with gateway_on(tmp_path, provider_config(url, REFS)) as gw, gw.client() as c:
        statuses = [c.post(CHAT, json=BODY) for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 503, 200]
    error = assert_openai_error(statuses[1], 503, "credential_unavailable")
    assert "env://TEST_PK_2" in error["message"]
    assert [r.headers["authorization"] for r in upstream.requests] == [f"Bearer {KEYS[0]}", f"Bearer {KEYS[2]}"]
    assert not any(k in r.text for r in statuses for k in KEYS)
