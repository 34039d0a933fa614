"""Three `sluicegate serve` processes, called in turn as a load balancer would, sharing what the
docs say instances share (docs/scale-out.md): one PostgreSQL database (`SLUICEGATE_DATABASE_URL`),
one Redis (`limits.backend: redis`), one config file and the audit chain's key; each has its own
data folder.

- a key made with `sluicegate keys create` works on all three at once;
- a revoked key is refused by all three within a second (measured, polling every 50 ms);
- a budget with room for exactly 100 calls lets 100 of 500 concurrent calls through, whichever
  instance takes them, and the audit in PostgreSQL holds all 500 in one intact chain;
- an edit of the shared config file is served by all three within a few seconds;
- an instance killed with SIGKILL mid-stream (`audit.durability: before_response`) loses no event
  of a call it answered, and blocks no reservation: what it held is free again within the
  reservation lease and one round of the reaper, and the other two spend the budget to its last
  micro-unit.

PostgreSQL runs once for the module (a database per test, `tests/scale/conftest.py`), from the
machine's binaries; Redis is the session's. The tests are skipped where either is not installed.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from sluicegate.store.keys import KeyStore
from sluicegate.testing import FakeUpstream
from tests.conftest import assert_openai_error
from tests.limits.test_limits_e2e import CALL_COST, COMPLETION, fixed
from tests.redis_server import RedisServer
from tests.scale.cluster import (
    CHAT,
    LEASE_S,
    POLL_S,
    Database,
    body,
    chain_intact,
    cli,
    cluster,
    in_parallel,
    rows,
    time_until,
    write_config,
)

# -- the tests ------------------------------------------------------------------------------------


def test_a_key_made_with_the_cli_works_on_all_three_at_once(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str, redis_server: RedisServer, database: Database
) -> None:
    fixed(upstream)
    config = tmp_path / "sluicegate.yaml"
    write_config(config, upstream_url, redis_server)
    with cluster(tmp_path, config) as c:
        made = cli("keys", "create", "--consumer", "alice", "--config", str(config), tmp=tmp_path)
        created = time.monotonic()
        key = made.stdout.decode().strip()
        assert key.startswith("sg-")
        # The three first calls go out together, a moment after the command returned.
        results = in_parallel(c.instances, lambda gw: time_until(gw.url, key, 200, created, 1.0))
        print(f"\nnew key, first 200 per instance: {[round(d, 3) if d else d for d, _ in results]} s")
        for delay, codes in results:
            assert delay is not None and delay < 1.0, codes
            assert codes[0] == 200, codes  # usable on its first call (README: `keys create`)
        [record] = KeyStore(database.engine).list("alice")
        # Each instance audited the call it took, under the key's id, in the one database.
        deadline = time.monotonic() + 5
        while len(events := rows(database.engine, "key_id = :k", k=record.id)) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert {e["instance"] for e in events if e["status"] == 200} == c.names()


def test_a_revoked_key_is_refused_by_all_three_within_a_second(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str, redis_server: RedisServer, database: Database
) -> None:
    fixed(upstream)
    config = tmp_path / "sluicegate.yaml"
    write_config(config, upstream_url, redis_server)
    with cluster(tmp_path, config) as c:
        store = KeyStore(database.engine)
        key, record = store.create("alice")
        ready = in_parallel(c.instances, lambda gw: time_until(gw.url, key, 200, time.monotonic(), 1.0))
        assert all(delay is not None for delay, _ in ready), ready
        assert store.revoke(record.id)  # committed when it returns
        revoked = time.monotonic()
        results = in_parallel(c.instances, lambda gw: time_until(gw.url, key, 401, revoked, 3.0))
        print(f"\nrevocation, first 401 per instance: {[round(d, 3) if d else d for d, _ in results]} s")
        for delay, codes in results:
            assert delay is not None and delay < 1.0, f"not refused within 1 s: {codes}"
            assert set(codes[:-1]) <= {200}, codes
        for gw in c.instances:  # and refused for good, as revoked
            with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}, timeout=5) as client:
                for _ in range(3):
                    assert_openai_error(client.post(CHAT, json=body()), 401, "api_key_revoked")


async def _spread(urls: list[str], key: str, n: int) -> list[httpx.Response]:
    """`n` calls at once, round-robin over `urls`."""
    clients = [
        httpx.AsyncClient(
            base_url=url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
            limits=httpx.Limits(max_connections=n),
        )
        for url in urls
    ]
    payload = body("budgeted", max_tokens=COMPLETION)
    try:
        return await asyncio.gather(*(clients[i % len(clients)].post(CHAT, json=payload) for i in range(n)))
    finally:
        for client in clients:
            await client.aclose()


def test_a_budget_with_room_for_100_lets_exactly_100_of_500_through_three_instances(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str, redis_server: RedisServer, database: Database
) -> None:
    # Fixed usage (7 in, 100 out), input free and max_tokens 100: the worst case reserved is the
    # call's real cost, CALL_COST, so room for 100 calls is room for exactly 100.
    fixed(upstream, delay_s=0.01)
    config = tmp_path / "sluicegate.yaml"
    write_config(
        config,
        upstream_url,
        redis_server,
        f"""\
        budgets:
          - {{name: exact, scope: consumer, match: [alice], amount: {100 * CALL_COST / 1e6}, window: month}}
        """,
    )
    with cluster(tmp_path, config) as c:
        key, _ = KeyStore(database.engine).create("alice")
        started = time.monotonic()
        responses = asyncio.run(_spread([gw.url for gw in c.instances], key, 500))
        print(f"\n500 calls over 3 instances: {time.monotonic() - started:.2f} s")
        names = c.names()
    # Stopped (SIGTERM drains each writer): the trail is complete now.
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert len(ok) == 100
    for resp in refused:
        assert_openai_error(resp, 429, "budget_exceeded")
    events = rows(database.engine, "model_requested = 'budgeted'")
    assert len(events) == 500
    assert sum(e["status"] == 200 for e in events) == 100
    assert all(e["outcome"] == "budget_exceeded" for e in events if e["status"] != 200)
    assert sum(e["cost_micro_usd"] or 0 for e in events) == 100 * CALL_COST
    assert {e["request_id"] for e in events if e["status"] == 200} == {r.headers["x-request-id"] for r in ok}
    assert {e["instance"] for e in events} == names
    assert chain_intact(database.engine) == len(rows(database.engine))


def test_an_edit_of_the_shared_config_is_served_by_all_three_within_seconds(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str, redis_server: RedisServer, database: Database
) -> None:
    fixed(upstream)
    config = tmp_path / "sluicegate.yaml"
    write_config(config, upstream_url, redis_server)
    with cluster(tmp_path, config) as c:
        key, _ = KeyStore(database.engine).create("bob")
        for gw in c.instances:
            with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}, timeout=5) as client:
                assert_openai_error(client.post(CHAT, json=body("team-model")), 403, "model_not_allowed")
        text = config.read_text()
        assert text.count("models: [gpt-4o-mini]\n") == 1
        config.write_text(text.replace("models: [gpt-4o-mini]\n", "models: [gpt-4o-mini, team-model]\n"))
        edited = time.monotonic()
        results = in_parallel(c.instances, lambda gw: time_until(gw.url, key, 200, edited, 5.0, model="team-model"))
        print(f"\nconfig edit, first 200 per instance: {[round(d, 3) if d else d for d, _ in results]} s")
        for delay, codes in results:
            assert delay is not None and delay < 3.0, codes  # watched every second, then reloaded
            assert set(codes[:-1]) <= {403}, codes
        for gw in c.instances:  # served from now on
            with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}, timeout=5) as client:
                assert all(client.post(CHAT, json=body("team-model")).status_code == 200 for _ in range(5))


@dataclass
class Stream:
    """Clients calling one instance in a loop until it goes away."""

    url: str
    key: str
    #: request ids of the calls answered whole with a 200 (a stream: through `data: [DONE]`)
    answered: list[str] = field(default_factory=list)
    other: list[tuple[int, bytes]] = field(default_factory=list)

    def client(self, stream: bool) -> None:
        payload = body("budgeted", max_tokens=COMPLETION, stream=stream)
        with httpx.Client(headers={"Authorization": f"Bearer {self.key}"}, timeout=30) as client:
            while True:
                try:
                    with client.stream("POST", self.url + CHAT, json=payload) as resp:
                        data = resp.read()  # the whole response, or an error
                except httpx.HTTPError:
                    return  # the instance is gone
                if resp.status_code == 200 and (not stream or data.rstrip().endswith(b"data: [DONE]")):
                    self.answered.append(resp.headers["x-request-id"])
                else:
                    self.other.append((resp.status_code, data))


def test_an_instance_killed_mid_stream_loses_no_answered_event_and_blocks_no_reservation(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str, redis_server: RedisServer, database: Database
) -> None:
    room = 40  # calls
    slots = 4  # concurrent calls of alice, on all instances together
    fixed(upstream, delay_s=0.1)  # most of a call is spent upstream, holding its reservation
    config = tmp_path / "sluicegate.yaml"
    write_config(
        config,
        upstream_url,
        redis_server,
        f"""\
        budget_wait_s: 5
        budgets:
          - {{name: room, scope: consumer, match: [alice], amount: {room * CALL_COST / 1e6}, window: month}}
        rate_limits:
          - {{name: slots, scope: consumer, match: [alice], concurrent: {slots}}}
        """,
        audit="durability: before_response\n",
    )
    with cluster(tmp_path, config) as c:
        a, *others = c.instances
        key, _ = KeyStore(database.engine).create("alice")
        # A stream of calls on A, as many at once as alice has slots, half of them streamed.
        on_a = Stream(a.url, key)
        threads = [threading.Thread(target=on_a.client, args=(i % 2 == 1,)) for i in range(slots)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 15
        while len(on_a.answered) < 16 and time.monotonic() < deadline:
            time.sleep(0.005)
        a.proc.kill()  # SIGKILL: no shutdown, no settlement, no flush
        killed = time.monotonic()
        a.proc.wait()
        for t in threads:
            t.join(30)
        assert len(on_a.answered) >= 16 and not on_a.other, on_a.other[:3]

        # The other two spend what is left: slots A held are refused until they are reaped, calls
        # needing budget A held wait for its reservations to be settled (reaped at their estimate).
        after: list[tuple[str, float]] = []
        slot_refusals: list[float] = []
        ends: list[float] = []
        unexpected: list[tuple[int, str]] = []

        def drain(i: int) -> None:
            with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
                n = i
                while time.monotonic() < killed + 15:
                    resp = client.post(others[n % len(others)].url + CHAT, json=body("budgeted", max_tokens=COMPLETION))
                    n += 1
                    now = time.monotonic() - killed
                    code = resp.json().get("error", {}).get("code") if resp.status_code != 200 else None
                    if resp.status_code == 200:
                        after.append((resp.headers["x-request-id"], now))
                    elif code == "rate_limit_exceeded":
                        slot_refusals.append(now)
                        time.sleep(POLL_S)
                    elif code == "budget_exceeded":
                        assert_openai_error(resp, 429, "budget_exceeded")
                        ends.append(now)
                        return
                    else:
                        unexpected.append((resp.status_code, resp.text))
                        return

        in_parallel(list(range(slots)), drain)
        assert not unexpected, unexpected[:3]
        assert len(ends) == slots, "the budget was not spent within 15 s of the kill"
        blocked_s = max(slot_refusals, default=0.0)
        spent_s = max(ends)
        print(
            f"\nkill: {len(on_a.answered)} answered by A; after it {len(after)} answered by B and C, "
            f"first at {min((t for _, t in after), default=-1):.2f} s; {len(slot_refusals)} slot refusals, "
            f"the last at {blocked_s:.2f} s; budget spent at {spent_s:.2f} s"
        )
        # A's slots and budget are free within its lease (renewed every lease/3 until the kill) and
        # one round of the others' reapers (as often): lease + lease/3, and a margin for the calls.
        assert blocked_s < LEASE_S * 4 / 3 + 0.5
        # Nothing waited for budget_wait_s (5 s): what A held was settled, the rest spent at once.
        assert spent_s < LEASE_S * 4 / 3 + 2.0
        # The live counters in Redis, as the caller sees them (`GET /v1/spend`) on one of the others.
        with httpx.Client(base_url=others[0].url, headers={"Authorization": f"Bearer {key}"}, timeout=5) as client:
            spend = client.get("/v1/spend")
        assert spend.status_code == 200, spend.text
        levels = {limit["name"]: limit for limit in spend.json()["limits"]}
    # Nothing held, every micro-unit of the budget spent: by calls answered, or reaped at estimate.
    assert (levels["room"]["used"], levels["room"]["reserved"], levels["room"]["remaining"]) == (room * CALL_COST, 0, 0)
    assert (levels["slots"]["used"], levels["slots"]["reserved"]) == (0, 0)

    events = {e["request_id"]: e for e in rows(database.engine)}
    missing = [rid for rid in on_a.answered if rid not in events]
    assert not missing, f"{len(missing)} of {len(on_a.answered)} calls A answered have no audit event"
    assert all(events[rid]["status"] == 200 for rid in on_a.answered)
    assert all(rid in events and events[rid]["status"] == 200 for rid, _ in after)
    paid = [e for e in events.values() if e["model_requested"] == "budgeted" and e["status"] == 200]
    reaped = [e for e in events.values() if e["outcome"] == "reservation_reaped"]
    assert all(e["cost_micro_usd"] == CALL_COST for e in paid + reaped)
    # A's calls in flight at the kill: reaped, by B or C, none of them also answered.
    assert 1 <= len(reaped) <= slots
    assert {e["instance"] for e in reaped} <= c.names() - {f"{socket.gethostname()}:{a.proc.pid}"}
    assert not {e["request_id"] for e in reaped} & {e["request_id"] for e in paid}
    # The trail accounts for the budget, less what A settled in Redis and died before committing
    # (a call whose answer never reached its client): at most one per call it had in flight.
    unrecorded = room - len(paid) - len(reaped)
    print(f"paid {len(paid)}, reaped {len(reaped)}, settled without an event {unrecorded}")
    assert 0 <= unrecorded <= slots - len(reaped)
    chain_intact(database.engine)
