"""Key lifecycle at the door: wrong prefix, truncated, another consumer's key, revoked, expired."""

from __future__ import annotations

import time

import httpx
import pytest

from sluicegate.store.keys import KeyStore, hash_key
from tests.conftest import RunningGateway, assert_openai_error

CHAT = "/v1/chat/completions"


def post(gw: RunningGateway, key: str, model: str = "gpt-4o-mini") -> httpx.Response:
    with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}) as c:
        return c.post(CHAT, json={"model": model, "messages": [{"role": "user", "content": "x"}]})


@pytest.mark.parametrize(
    "mangle",
    [
        lambda k: "sk-" + k[3:],  # wrong prefix
        lambda k: k[:-1],  # truncated
        lambda k: k + "x",  # extended
        lambda k: k.upper(),  # case changed
        lambda k: hash_key(k),  # the stored hash itself is not a key
    ],
    ids=["wrong-prefix", "truncated", "extended", "case", "the-hash"],
)
def test_near_misses_are_refused(gateway: RunningGateway, mangle: object) -> None:
    key = gateway.keys["alice"]
    resp = post(gateway, mangle(key))  # type: ignore[operator]
    assert_openai_error(resp, 401, "invalid_api_key")
    event = gateway.last_audit()
    assert event["consumer"] is None and event["key_id"] is None


def test_another_consumers_key_acts_as_that_consumer(gateway: RunningGateway) -> None:
    # bob's key may not use what alice may
    assert post(gateway, gateway.keys["alice"], "team-model").status_code == 200
    assert_openai_error(post(gateway, gateway.keys["bob"], "team-model"), 403, "model_not_allowed")
    assert gateway.last_audit()["consumer"] == "bob"


def test_many_keys_per_consumer_each_named_by_its_id(gateway: RunningGateway) -> None:
    store = KeyStore(gateway.app.engine)
    first, r1 = store.create("alice", name="laptop")
    second, r2 = store.create("alice", name="ci")
    gateway.app.keys.reload()
    assert post(gateway, first).status_code == 200
    assert gateway.last_audit()["key_id"] == r1.id
    assert post(gateway, second).status_code == 200
    assert gateway.last_audit()["key_id"] == r2.id
    assert first.startswith("sg-") and r1.prefix == first[:7]


def test_revocation_and_expiry(gateway: RunningGateway) -> None:
    store = KeyStore(gateway.app.engine)
    key, record = store.create("alice")
    expired, _ = store.create("alice", expires_at=time.time() - 1)
    gateway.app.keys.reload()
    assert post(gateway, key).status_code == 200
    store.revoke(record.id)
    gateway.app.keys.reload()
    assert_openai_error(post(gateway, key), 401, "api_key_revoked")
    assert_openai_error(post(gateway, expired), 401, "api_key_expired")
