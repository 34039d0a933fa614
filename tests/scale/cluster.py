"""Gateway instances as a load balancer sees them, for the scale tests: started together on one
config file, one PostgreSQL database (`SLUICEGATE_DATABASE_URL`), one Redis and one audit chain
key; each with its own data folder and log."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import sqlalchemy as sa

from sluicegate.audit.chain import ChainKey, verify
from sluicegate.store.db import create_engine
from tests.conftest import BASE_CONFIG, GatewayProcess, gateway_process
from tests.limits.test_limits_e2e import LIMITS_MODELS
from tests.redis_server import RedisServer

T = TypeVar("T")

CHAT = "/v1/chat/completions"
#: the audit chain's key, one for every instance (each data folder would otherwise make its own)
CHAIN_KEY_ENV = "SLUICEGATE_TEST_CHAIN_KEY"
CHAIN_KEY = "the audit chain key that the three instances share"
#: how often an instance is called while a test times it
POLL_S = 0.05
#: `limits.reservation_lease_s` of these tests (its floor is 1 s)
LEASE_S = 1.5


@dataclass
class Database:
    """An empty PostgreSQL database: the instances migrate it as they start (together)."""

    url: str
    _engine: sa.Engine | None = None

    @property
    def made(self) -> bool:
        """Whether the test made its own engine."""
        return self._engine is not None

    @property
    def engine(self) -> sa.Engine:
        """The test's own engine on it (made on first use; migrating is then a no-op)."""
        if self._engine is None:
            self._engine = create_engine(self.url)
        return self._engine


# -- the instances --------------------------------------------------------------------------------


def write_config(path: Path, upstream_url: str, redis: RedisServer, limits: str = "", audit: str = "") -> None:
    """The shared config: the base config and the priced models of the limits tests, the audit chain
    on the shared key, and limits in Redis under a prefix of this test's own."""
    text = BASE_CONFIG.format(upstream=upstream_url, read_s=10).replace("models:\n", "models:\n" + LIMITS_MODELS, 1)
    text += f"audit:\n  chain: {{key: env://{CHAIN_KEY_ENV}}}\n" + textwrap.indent(textwrap.dedent(audit), "  ")
    text += (
        "limits:\n"
        "  backend: redis\n"
        f'  redis: {{url: "{redis.url}", key_prefix: "{uuid.uuid4().hex}", timeout_s: 2, instances: 3}}\n'
        f"  reservation_lease_s: {LEASE_S}\n"
    ) + textwrap.indent(textwrap.dedent(limits), "  ")
    path.write_text(text)


@dataclass
class Cluster:
    """The running instances and the config file they all read."""

    instances: list[GatewayProcess]
    config: Path

    def names(self) -> set[str]:
        """How each instance names itself in the audit (`host:pid`: one process each, no supervisor)."""
        return {f"{socket.gethostname()}:{gw.proc.pid}" for gw in self.instances}


def in_parallel(items: list[T], work: Callable[[T], Any]) -> list[Any]:
    """`work(item)` for every item at once, one thread each; their results in order."""
    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(work, items))


@contextlib.contextmanager
def cluster(tmp: Path, config: Path, n: int = 3) -> Iterator[Cluster]:
    """`n` instances on `config`, started together (they migrate the fresh database together),
    each with its own data folder and log; stopped together (SIGTERM) on exit."""
    managers = []
    for i in range(n):
        (tmp / f"gw{i}").mkdir()
        managers.append(
            gateway_process(tmp / f"gw{i}", "--config", str(config), "--workers", "1", log=tmp / f"gw{i}.log")
        )
    started: list[tuple[contextlib.AbstractContextManager[GatewayProcess], GatewayProcess]] = []
    failure: BaseException | None = None
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(m.__enter__) for m in managers]
        for manager, future in zip(managers, futures, strict=True):
            try:
                started.append((manager, future.result()))
            except BaseException as exc:
                failure = failure or exc
    try:
        if failure is not None:
            raise failure
        yield Cluster([gw for _, gw in started], config)
    finally:
        if started:
            in_parallel(started, lambda pair: pair[0].__exit__(None, None, None))


def body(model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def time_until(
    url: str, key: str, status: int, start: float, limit_s: float, model: str = "gpt-4o-mini"
) -> tuple[float | None, list[int]]:
    """Call `url` every POLL_S from `start` until a call answers `status`: the seconds from `start`
    to that answer (None: not within `limit_s`), and the statuses seen in order."""
    codes: list[int] = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=5) as client:
        tick = 0
        while True:
            resp = client.post(CHAT, json=body(model))
            elapsed = time.monotonic() - start
            codes.append(resp.status_code)
            if resp.status_code == status:
                return elapsed, codes
            if elapsed > limit_s:
                return None, codes
            tick += 1
            time.sleep(max(0.0, start + tick * POLL_S - time.monotonic()))


def cli(*args: str, tmp: Path) -> subprocess.CompletedProcess[bytes]:
    """`sluicegate ARGS` in a child process, on the test's database (`SLUICEGATE_DATABASE_URL`)."""
    env = {**os.environ, "SLUICEGATE_DATA_DIR": str(tmp / "cli")}
    done = subprocess.run(
        [sys.executable, "-m", "sluicegate.cli", *args], env=env, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    return done


def rows(engine: sa.Engine, where: str = "TRUE", **params: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        result = conn.execute(sa.text(f"SELECT * FROM audit_events WHERE {where} ORDER BY seq"), params)
        return [dict(r._mapping) for r in result]


def chain_intact(engine: sa.Engine) -> int:
    """Verify the one audit chain the instances extended together; return its length."""
    report = verify(engine, ChainKey.from_secret(CHAIN_KEY))
    assert report.intact, report.problems
    return int(report.events)
