"""A key made a moment ago works on its first call; unknown keys cannot flood the store."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from sluicegate.stages.identity import KeyIndex
from sluicegate.store.db import create_engine
from sluicegate.store.keys import KeyStore, hash_key
from sluicegate.testing import FakeUpstream
from tests.conftest import RunningGateway, assert_openai_error, run_gateway

CHAT = "/v1/chat/completions"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}


@pytest.fixture
def slow_refresh(tmp_path: Path, upstream_url: str) -> Iterator[RunningGateway]:
    # The index refreshes once an hour: only the lookup of a miss can find a new key.
    with run_gateway(tmp_path, upstream_url, key_refresh_s=3600) as gw:
        yield gw


def test_a_new_key_works_on_its_first_call(slow_refresh: RunningGateway, upstream: FakeUpstream) -> None:
    gw = slow_refresh
    store = KeyStore(gw.app.engine)
    for _ in range(3):
        key, record = store.create("bob")
        resp = httpx.post(gw.url + CHAT, json=BODY, headers={"Authorization": f"Bearer {key}"})
        assert resp.status_code == 200, resp.text
        assert gw.last_audit()["key_id"] == record.id
    # A revoked key looked up from the store is refused as revoked.
    key, record = store.create("bob")
    store.revoke(record.id)
    resp = httpx.post(gw.url + CHAT, json=BODY, headers={"x-api-key": key})
    assert_openai_error(resp, 401, "api_key_revoked")


def test_random_keys_cannot_flood_the_store(slow_refresh: RunningGateway, upstream: FakeUpstream) -> None:
    gw = slow_refresh
    before = gw.app.keys.lookups

    async def flood(keys: list[str]) -> list[int]:
        async with httpx.AsyncClient(base_url=gw.url) as c:
            replies = await asyncio.gather(*(c.post(CHAT, json=BODY, headers={"x-api-key": k}) for k in keys))
        return [r.status_code for r in replies]

    # One key sent 200 times at once: one lookup (coalesced, then remembered as a miss).
    same = "sg-" + secrets.token_urlsafe(30)
    assert set(asyncio.run(flood([same] * 200))) == {401}
    assert gw.app.keys.lookups - before == 1
    assert set(asyncio.run(flood([same] * 50))) == {401}
    assert gw.app.keys.lookups - before == 1
    assert upstream.calls == 0


def test_lookups_are_coalesced_bounded_and_fail_closed(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'keys.db'}")
    store = KeyStore(engine)
    key, record = store.create("alice")
    index = KeyIndex(store)

    async def run() -> None:
        found = await asyncio.gather(*(index.find(hash_key(key)) for _ in range(50)))
        assert {r.id for r in found if r is not None} == {record.id}
        assert index.lookups == 1 and hash_key(key) in index.by_hash
        # Many distinct unknown keys at once: never more than the bound go to the store.
        misses = await asyncio.gather(*(index.find(hash_key(f"sg-{i}")) for i in range(2000)))
        assert misses == [None] * 2000
        assert index.lookups <= 1 + 256

    asyncio.run(run())
    # The store failing: an unknown key is refused, nothing raises.
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE api_keys RENAME TO api_keys_away"))
    broken = KeyIndex(store)
    assert asyncio.run(broken.find(hash_key("sg-x"))) is None
    assert broken.lookups == 1
