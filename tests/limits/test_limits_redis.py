"""Budgets and rate limits shared by gateway instances through a real Redis server.

Two instances against a budget with room for exactly 100 calls: 100 succeed in all. An instance
killed with SIGKILL while it holds reservations: another instance's reaper settles them, and the
slots they held are free again. Redis down: budgets fail closed (503), rate limits fall back to
each instance's share.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from sluicegate.store.db import create_engine
from sluicegate.store.keys import KeyStore
from sluicegate.testing import FakeUpstream, Reply
from tests.conftest import BASE_CONFIG, RunningGateway, assert_openai_error, gateway_process, run_gateway, wait_for
from tests.limits.test_limits_e2e import CALL_COST, COMPLETION, LIMITS_MODELS, fixed
from tests.redis_server import RedisServer


def redis_limits(redis: RedisServer, prefix: str, body: str, lease_s: float = 15, timeout_s: float = 2) -> str:
    return f"""\
  backend: redis
  redis: {{url: "{redis.url}", key_prefix: "{prefix}", timeout_s: {timeout_s}, instances: 2}}
  reservation_lease_s: {lease_s}
""" + textwrap.indent(textwrap.dedent(body), "  ")


@contextlib.contextmanager
def shared_gateways(tmp: Path, upstream_url: str, limits: str, n: int = 2) -> Iterator[list[RunningGateway]]:
    with contextlib.ExitStack() as stack:
        gateways = []
        for i in range(n):
            (tmp / f"gw{i}").mkdir()
            gw = stack.enter_context(run_gateway(tmp / f"gw{i}", upstream_url))
            gw.reconfigure(
                lambda text: text.replace("models:\n", "models:\n" + LIMITS_MODELS, 1) + "limits:\n" + limits
            )
            gateways.append(gw)
        yield gateways


async def _spread(gateways: list[RunningGateway], n: int) -> list[httpx.Response]:
    clients = [
        httpx.AsyncClient(
            base_url=gw.url,
            headers={"Authorization": f"Bearer {gw.keys['alice']}"},
            timeout=60,
            limits=httpx.Limits(max_connections=n),
        )
        for gw in gateways
    ]
    body = {"model": "budgeted", "messages": [{"role": "user", "content": "hi"}], "max_tokens": COMPLETION}
    try:
        return await asyncio.gather(
            *(clients[i % len(clients)].post("/v1/chat/completions", json=body) for i in range(n))
        )
    finally:
        for client in clients:
            await client.aclose()


def test_two_instances_share_a_budget_with_room_for_exactly_100(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str, redis_server: RedisServer
) -> None:
    fixed(upstream, delay_s=0.01)
    limits = redis_limits(
        redis_server,
        uuid.uuid4().hex,
        f"""\
        budgets:
          - {{name: exact, scope: consumer, match: [alice], amount: {100 * CALL_COST / 1e6}, window: month}}
        """,
        # Exactness, not outage handling: a Redis answer held up by a starved event loop on a busy
        # test machine must not count as Redis down (a 503 for a budget).
        timeout_s=10,
    )
    with shared_gateways(tmp_path, upstream_url, limits) as gateways:
        responses = asyncio.run(_spread(gateways, 500))
        statuses = collections.Counter(
            (r.status_code, r.json()["error"]["code"] if r.status_code != 200 else None) for r in responses
        )
        assert statuses == {(200, None): 100, (429, "budget_exceeded"): 400}, statuses
        events = [e for gw in gateways for e in gw.audit() if e["model_requested"] == "budgeted"]
        assert sum(e["cost_micro_usd"] or 0 for e in events) == 100 * CALL_COST
        for gw in gateways:  # both served some
            assert any(e["status"] == 200 for e in gw.audit())
            assert not gw.app.services.limits.in_flight


def test_rate_limits_hold_across_instances(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str, redis_server: RedisServer
) -> None:
    fixed(upstream)
    limits = redis_limits(
        redis_server,
        uuid.uuid4().hex,
        """\
        rate_limits:
          - {name: rpd, scope: consumer, requests: 10, window: day}
        """,
    )
    with shared_gateways(tmp_path, upstream_url, limits, n=3) as gateways:
        responses = asyncio.run(_spread(gateways, 30))
        assert sum(r.status_code == 200 for r in responses) == 10
        refused = next(r for r in responses if r.status_code == 429)
        assert_openai_error(refused, 429, "rate_limit_exceeded")
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"


def test_a_killed_instance_leaves_no_budget_or_slot_blocked(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str, redis_server: RedisServer
) -> None:
    prefix = uuid.uuid4().hex
    limits = redis_limits(
        redis_server,
        prefix,
        """\
        budget_wait_s: 0
        budgets:
          - {name: monthly, scope: consumer, amount: 1, window: month}
        rate_limits:
          - {name: slots, scope: consumer, concurrent: 2}
        """,
        lease_s=1,
    )
    config = tmp_path / "a.yaml"
    config.write_text(
        BASE_CONFIG.format(upstream=upstream_url, read_s=60).replace("models:\n", "models:\n" + LIMITS_MODELS, 1)
        + "limits:\n"
        + limits
    )
    data = tmp_path / "a"
    key, _ = KeyStore(create_engine(f"sqlite:///{data / 'sluicegate.db'}")).create("alice")
    upstream.default = Reply(content="never", fault="hang")
    held: list[Any] = []

    def call(url: str) -> None:
        with contextlib.suppress(httpx.HTTPError), httpx.Client(timeout=30) as client:
            body = {"model": "budgeted", "messages": [{"role": "user", "content": "hi"}], "max_tokens": COMPLETION}
            held.append(client.post(url, json=body, headers={"Authorization": f"Bearer {key}"}))

    with gateway_process(data, "--config", str(config)) as a:
        threads = [threading.Thread(target=call, args=(a.url + "/v1/chat/completions",)) for _ in range(2)]
        for t in threads:
            t.start()
        wait_for(lambda: upstream.calls >= 2, timeout=10)  # both calls hold their reservations
        (tmp_path / "b").mkdir()
        with run_gateway(tmp_path / "b", upstream_url) as b:
            b.reconfigure(lambda text: text.replace("models:\n", "models:\n" + LIMITS_MODELS, 1) + "limits:\n" + limits)
            fixed(upstream)
            with b.client() as client:
                body = {"model": "budgeted", "messages": [{"role": "user", "content": "hi"}], "max_tokens": COMPLETION}
                refused = client.post("/v1/chat/completions", json=body)
                assert_openai_error(refused, 429, "rate_limit_exceeded")  # both slots are A's
                a.proc.kill()  # SIGKILL: A never settles
                a.proc.wait()
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    resp = client.post("/v1/chat/completions", json=body)
                    if resp.status_code == 200:
                        break
                    time.sleep(0.2)
                assert resp.status_code == 200, resp.text
            reaped = [e for e in b.audit() if e["outcome"] == "reservation_reaped"]
            assert len(reaped) == 2
            assert all(e["consumer"] == "alice" and e["model_requested"] == "budgeted" for e in reaped)
            assert all((e["cost_micro_usd"] or 0) >= CALL_COST for e in reaped)  # settled at the estimate
            assert b.app.services.limits.reaped == 2
        for t in threads:
            t.join()


def test_redis_down_budgets_fail_closed_and_rate_limits_keep_a_local_share(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str, redis_server: RedisServer
) -> None:
    fixed(upstream)
    limits = redis_limits(
        redis_server,
        uuid.uuid4().hex,
        """\
        budgets:
          - {name: monthly, scope: consumer, match: [bob], amount: 1, window: month}
        rate_limits:
          - {name: rpd, scope: consumer, match: [alice], requests: 4, window: day}
        """,
    )
    with shared_gateways(tmp_path, upstream_url, limits, n=1) as [gw]:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        with gw.client() as alice, gw.client("bob") as bob:
            assert alice.post("/v1/chat/completions", json=body).status_code == 200
            assert bob.post("/v1/chat/completions", json=body).status_code == 200
            redis_server.stop()
            try:
                down = bob.post("/v1/chat/completions", json=body)
                error = assert_openai_error(down, 503, "budget_store_unavailable")
                assert redis_server.url not in error["message"]
                # alice's 4 a day, shared by 2 instances: 2 here while Redis is away.
                codes = [alice.post("/v1/chat/completions", json=body).status_code for _ in range(3)]
                assert codes == [200, 200, 429]
                assert gw.app.services.limits.degraded_calls >= 3
            finally:
                redis_server.start()
            wait_for(lambda: bob.post("/v1/chat/completions", json=body).status_code == 200, timeout=10)
        events = gw.audit()
        assert any(e["outcome"] == "budget_store_unavailable" for e in events)


def test_an_absurd_worst_case_is_refused_by_redis_too(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str, redis_server: RedisServer
) -> None:
    fixed(upstream)
    limits = redis_limits(
        redis_server,
        uuid.uuid4().hex,
        """\
        budgets:
          - {name: monthly, scope: consumer, amount: 1000, window: month}
        rate_limits:
          - {name: tpm, scope: consumer, tokens: 1000000, window: minute}
        """,
    )
    with shared_gateways(tmp_path, upstream_url, limits, n=1) as [gw], gw.client() as client:
        body = {"model": "budgeted", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**15, "n": 128}
        resp = client.post("/v1/chat/completions", json=body)
        assert resp.status_code == 429, resp.text
        assert client.post("/v1/chat/completions", json={**body, "max_tokens": 10, "n": 1}).status_code == 200


def test_a_redis_restarted_empty_gives_no_budget_back(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str, redis_server: RedisServer
) -> None:
    """Redis keeps no data across the restart (no persistence): its counters are rebuilt from the
    audit trail before any budget is charged in it again (several instances on one database:
    tests/scale/test_restarts.py)."""
    fixed(upstream)
    limits = redis_limits(
        redis_server,
        uuid.uuid4().hex,
        f"""\
        budgets:
          - {{name: ten, scope: consumer, match: [alice], amount: {10 * CALL_COST / 1e6}, window: month}}
        """,
    )
    body = {"model": "budgeted", "messages": [{"role": "user", "content": "hi"}], "max_tokens": COMPLETION}
    with shared_gateways(tmp_path, upstream_url, limits, n=1) as [gw], gw.client() as client:
        codes = [client.post("/v1/chat/completions", json=body).status_code for _ in range(6)]
        assert codes == [200] * 6
        redis_server.stop()
        assert_openai_error(client.post("/v1/chat/completions", json=body), 503, "budget_store_unavailable")
        redis_server.start()  # empty
        codes = []
        deadline = time.monotonic() + 20
        while codes.count(429) < 3 and time.monotonic() < deadline:
            codes.append(client.post("/v1/chat/completions", json=body).status_code)
        assert set(codes) <= {200, 429, 503}, codes
        assert codes.count(200) == 4, codes  # the 4 calls left of the 10, and none more
        assert gw.app.services.limits.reloaded == 2  # the new Redis at the first call, and after the restart
        events = [e for e in gw.audit() if e["model_requested"] == "budgeted"]
        assert sum(e["cost_micro_usd"] or 0 for e in events) == 10 * CALL_COST
