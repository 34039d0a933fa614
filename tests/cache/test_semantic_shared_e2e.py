"""The semantic cache shared by two gateway instances: entries in Redis, vectors in PostgreSQL
with pgvector (the `pgserver` build). A question answered through one instance is a semantic hit,
reworded, through the other."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import openai
import psycopg
import pytest

from sluicegate.testing import FakeUpstream, Reply
from tests.cache.test_pgvector import BINDIR
from tests.conftest import RunningGateway, run_gateway
from tests.postgres_server import Postgres
from tests.redis_server import RedisServer

pytest.importorskip("onnxruntime", reason="the semantic extra is not installed")


@pytest.fixture(scope="module")
def pgvector_url() -> Iterator[str]:
    root = Path(tempfile.mkdtemp(prefix="sluicegate-semantic-"))
    try:
        server = Postgres(root, BINDIR)
        server.start()
        try:
            yield f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def vectors(url: str) -> list[tuple[object, ...]]:
    """The rows of the shared vector table (none before it exists)."""
    with psycopg.connect(url) as conn:
        if conn.execute("SELECT to_regclass('sluicegate_semantic_cache')").fetchone() == (None,):
            return []
        return conn.execute("SELECT partition, key, signature FROM sluicegate_semantic_cache").fetchall()


def settled(gw: RunningGateway) -> None:
    deadline = time.monotonic() + 30
    while gw.app.services.cache.pending and time.monotonic() < deadline:
        time.sleep(0.01)


def test_two_instances_share_semantic_entries(
    upstream: FakeUpstream, upstream_url: str, tmp_path: Path, redis_server: RedisServer, pgvector_url: str
) -> None:
    os.environ["SG_SEMANTIC_KEY"] = "a-shared-semantic-cache-key-for-tests-0123456789"
    os.environ["SG_PGVECTOR_URL"] = pgvector_url
    extra = f"""\
cache:
  enabled: true
  backend: redis
  redis: {{url: "{redis_server.url}", key: "env://SG_SEMANTIC_KEY", prefix: "sg-semantic:"}}
  default: {{semantic: true, scope: global}}
  semantic: {{index: pgvector, pgvector_url: "env://SG_PGVECTOR_URL"}}
"""
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    with ExitStack() as stack:
        one: RunningGateway = stack.enter_context(run_gateway(tmp_path / "one", upstream_url, extra))
        two: RunningGateway = stack.enter_context(run_gateway(tmp_path / "two", upstream_url, extra))
        settled(one)
        settled(two)
        upstream.enqueue(Reply(content="Restart the router, then call IT."))
        first = openai.OpenAI(base_url=one.url + "/v1", api_key=one.keys["alice"], max_retries=0)
        first.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "How do I fix my home wifi connection?"}]
        )
        settled(one)
        # The first instance's background write reached PostgreSQL.
        deadline = time.monotonic() + 10
        while not vectors(pgvector_url) and time.monotonic() < deadline:
            time.sleep(0.05)
        second = openai.OpenAI(base_url=two.url + "/v1", api_key=two.keys["bob"], max_retries=0)
        resp = second.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "How can I fix my home wifi connection?"}],
        )
        assert resp.headers["x-cache"] == "hit"
        assert resp.parse().choices[0].message.content == "Restart the router, then call IT."
        assert two.last_audit()["cache"] == "semantic_hit"
        # PostgreSQL holds vectors and digests, never the question.
        rows = vectors(pgvector_url)
        assert len(rows) == 1
        assert all("wifi" not in " ".join(map(str, row)) for row in rows)
