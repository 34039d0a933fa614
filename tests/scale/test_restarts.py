"""Redis, then PostgreSQL, restarted under load: two instances keep doing what docs/scale-out.md
says, call by call.

Two `sluicegate serve` instances share one PostgreSQL database, one Redis and one config file;
clients call both without pause, as a load balancer would send them calls:
- alice on a model under a budget with room for `ROOM` calls, which the load spends first;
- bob on a model with a rate limit only (high enough not to refuse him).

Redis is killed, then started again empty (no persistence). While it is away alice's calls are
refused with 503 `budget_store_unavailable` (budgets fail closed) and bob's go on (rate limits
are counted locally). When it is back, no budget is given back: alice gets no 200, because the
counters were loaded from the audit trail before anything was charged again.

PostgreSQL is then stopped and started again. Every call goes on being answered, `/readyz` says
503 while the audit store fails, and afterwards the trail in PostgreSQL holds one event for every
call that was answered, whatever its status, in one intact chain: nothing spilled was lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from sluicegate.store.keys import KeyStore
from sluicegate.testing import FakeUpstream
from tests.conftest import assert_openai_error
from tests.limits.test_limits_e2e import CALL_COST, COMPLETION, fixed
from tests.postgres_server import Postgres
from tests.redis_server import RedisServer
from tests.scale.cluster import CHAT, Database, body, chain_intact, cluster, rows, write_config

#: alice's budget, in calls; spent before Redis goes away
ROOM = 30
#: clients calling each instance at once
CLIENTS = 2


@dataclass
class Answer:
    at: float
    who: str
    status: int
    code: str | None
    request_id: str


@dataclass
class Load:
    """Clients calling every instance in turn, as alice and bob alternately, until stopped."""

    urls: list[str]
    keys: dict[str, str]
    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, first: int) -> None:
        calls = {"alice": body("budgeted", max_tokens=COMPLETION), "bob": body()}
        with httpx.Client(timeout=30) as client:
            n = first
            while not self.stop.is_set():
                who = "alice" if n % 2 else "bob"
                url = self.urls[(n // 2) % len(self.urls)]
                resp = client.post(url + CHAT, json=calls[who], headers={"Authorization": f"Bearer {self.keys[who]}"})
                code = None
                if resp.status_code != 200:
                    code = assert_openai_error(resp, resp.status_code)["code"]
                self.answers.append(Answer(time.monotonic(), who, resp.status_code, code, resp.headers["x-request-id"]))
                n += 1

    def after(self, t: float) -> list[Answer]:
        return [a for a in list(self.answers) if a.at > t]

    def wait(self, until: Callable[[], bool], what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            assert time.monotonic() < deadline, f"not seen within {timeout} s: {what}"
            time.sleep(0.02)


def ready_statuses(urls: list[str]) -> list[int]:
    with httpx.Client(timeout=5) as client:
        return [client.get(url + "/readyz").status_code for url in urls]


@pytest.mark.timeout(180)
def test_redis_then_postgres_restarted_under_load(
    tmp_path: Path,
    upstream: FakeUpstream,
    upstream_url: str,
    redis_server: RedisServer,
    postgres: Postgres,
    database: Database,
) -> None:
    fixed(upstream)
    config = tmp_path / "sluicegate.yaml"
    write_config(
        config,
        upstream_url,
        redis_server,
        f"""\
        budgets:
          - {{name: room, scope: consumer, match: [alice], amount: {ROOM * CALL_COST / 1e6}, window: month}}
        rate_limits:
          - {{name: rpm, scope: consumer, match: [bob], requests: 100000, window: minute}}
        """,
        audit="durability: before_response\nretry_s: 0.2\n",
    )
    with cluster(tmp_path, config, n=2) as c:
        store = KeyStore(database.engine)
        keys = {who: store.create(who)[0] for who in ("alice", "bob")}
        urls = [gw.url for gw in c.instances]
        load = Load(urls, keys)
        threads = [threading.Thread(target=load.run, args=(i,)) for i in range(CLIENTS * len(urls))]
        for t in threads:
            t.start()
        try:
            # The budget is spent first.
            load.wait(lambda: any(a.code == "budget_exceeded" for a in load.answers), "alice's budget spent")

            # Redis away, then back without its data.
            redis_server.stop()
            redis_down = time.monotonic()
            load.wait(lambda: len(load.after(redis_down)) >= 40, "calls while Redis is away")
            redis_server.start()
            redis_up = time.monotonic()
            load.wait(
                lambda: sum(a.code == "budget_exceeded" for a in load.after(redis_up)) >= 10, "the budget refused again"
            )
            during_redis = [a for a in load.answers if redis_down < a.at < redis_up]

            # PostgreSQL away, then back.
            postgres.stop()
            pg_down = time.monotonic()
            load.wait(lambda: len(load.after(pg_down)) >= 40, "calls while PostgreSQL is away")
            readiness_down = ready_statuses(urls)
            postgres.start()
            pg_up = time.monotonic()
            load.wait(lambda: ready_statuses(urls) == [200, 200], "ready again once PostgreSQL answers")
            load.wait(lambda: len(load.after(time.monotonic() - 0.5)) >= 20, "calls after PostgreSQL is back")
        finally:
            load.stop.set()
            for t in threads:
                t.join(30)
        during_pg = [a for a in load.answers if pg_down < a.at < pg_up]
    # The instances were stopped (SIGTERM): each writer replayed its spill and drained.

    answers = load.answers
    print(f"\n{len(answers)} calls; {len(during_redis)} while Redis was away, {len(during_pg)} while PostgreSQL was")
    # Only what the docs name, in the client's error format (checked as the answers came).
    assert {(a.who, a.status, a.code) for a in answers} <= {
        ("alice", 200, None),
        ("alice", 429, "budget_exceeded"),
        ("alice", 503, "budget_store_unavailable"),
        ("bob", 200, None),
    }
    # Redis away: budgets refuse with 503, the rate-limited consumer goes on.
    assert {a.status for a in during_redis if a.who == "alice"} <= {503, 429}
    assert any(a.code == "budget_store_unavailable" for a in during_redis)
    assert all(a.status == 200 for a in answers if a.who == "bob")
    # Back without its data: the budget was not given back. Alice had exactly ROOM calls, all before.
    paid = [a for a in answers if a.who == "alice" and a.status == 200]
    assert len(paid) == ROOM
    assert max(a.at for a in paid) < redis_down
    # PostgreSQL away: every call still answered; readiness said the store was failing.
    assert during_pg and all(a.status in (200, 429) for a in during_pg)
    assert readiness_down == [503, 503]

    # The trail: one event per answered call, spilled ones replayed, one intact chain.
    events = {e["request_id"]: e for e in rows(database.engine) if e["consumer"] in ("alice", "bob")}
    missing = [a for a in answers if a.request_id not in events]
    assert not missing, f"{len(missing)} answered calls have no audit event, e.g. {missing[:3]}"
    assert all(events[a.request_id]["status"] == a.status for a in answers)
    assert sum(e["cost_micro_usd"] or 0 for e in events.values() if e["consumer"] == "alice") == ROOM * CALL_COST
    assert chain_intact(database.engine) == len(rows(database.engine))
