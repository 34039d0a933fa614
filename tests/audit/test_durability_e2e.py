"""Audit durability over HTTP: no upstream value stops the writer, a refused row is set aside, an
unwritable store spills to disk, and `before_response` commits every event before the last byte."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import sqlalchemy as sa

from sluicegate.testing import FakeUpstream, Reply
from tests.conftest import RunningGateway, assert_openai_error, run_gateway, wait_for

CHAT = "/v1/chat/completions"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
FAST = "audit:\n  flush_interval_s: 0.01\n  retry_s: 0.05\n"
#: a long flush interval: an event found in the store right after its response was committed first
DURABLE = "audit:\n  durability: before_response\n  flush_interval_s: 0.3\n  retry_s: 0.05\n"


def stored_ids(gw: RunningGateway) -> set[str]:
    """Request ids in the store now (no waiting for the writer)."""
    with gw.app.engine.connect() as conn:
        return set(conn.execute(sa.text("SELECT request_id FROM audit_events")).scalars())


def spilled_ids(data_dir: Path) -> list[str]:
    return [
        orjson.loads(line)["request_id"]
        for path in sorted(data_dir.glob("audit-spill*.jsonl"))
        for line in path.read_bytes().splitlines()
    ]


def rename_table(gw: RunningGateway, old: str, new: str) -> None:
    with gw.app.engine.begin() as conn:
        conn.execute(sa.text(f"ALTER TABLE {old} RENAME TO {new}"))


def ready(gw: RunningGateway) -> httpx.Response:
    return httpx.get(gw.url + "/readyz")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_usage_past_64_bits_does_not_stop_the_audit(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str, stream: bool
) -> None:
    with run_gateway(tmp_path, upstream_url, FAST + "  on_failure: refuse\n") as gw, gw.client() as c:
        upstream.enqueue(Reply(content="big", prompt_tokens=2**63, completion_tokens=2**62))
        first = c.post(CHAT, json={**BODY, "stream": stream})
        assert first.status_code == 200
        rid = first.headers["x-request-id"]
        wait_for(lambda: rid in stored_ids(gw))
        # the writer goes on: later calls are served (strict mode) and audited, /readyz stays 200
        later = [c.post(CHAT, json=BODY) for _ in range(3)]
        assert [r.status_code for r in later] == [200, 200, 200]
        events = {e["request_id"]: e for e in gw.audit()}
        assert {r.headers["x-request-id"] for r in later} <= set(events)
        # counts that are not counts are not believed: the gateway counts the tokens itself
        assert events[rid]["usage_source"] == "counted"
        assert 0 < events[rid]["prompt_tokens"] < 100
        assert ready(gw).status_code == 200 and gw.app.audit.poisoned == 0


def test_a_row_the_store_refuses_is_set_aside_and_audit_goes_on(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    with run_gateway(tmp_path, upstream_url, FAST + "  on_failure: refuse\n") as gw, gw.client() as c:
        with gw.app.engine.begin() as conn:  # a constraint of the store that refuses one value
            conn.execute(
                sa.text(
                    "CREATE TRIGGER refuse BEFORE INSERT ON audit_events WHEN NEW.model_requested = 'open-poison' "
                    "BEGIN SELECT RAISE(ABORT, 'refused'); END"
                )
            )
        poisoned = c.post(CHAT, json={**BODY, "model": "open-poison"})
        assert poisoned.status_code == 200
        others = [c.post(CHAT, json=BODY) for _ in range(3)]
        assert [r.status_code for r in others] == [200, 200, 200]
        ids = {e["request_id"] for e in gw.audit()}
        assert {r.headers["x-request-id"] for r in others} <= ids
        assert poisoned.headers["x-request-id"] not in ids
        resp = ready(gw)
        assert resp.status_code == 200 and resp.json()["audit"]["poisoned"] == 1
        (line,) = (gw.data_dir / "audit-poison.jsonl").read_bytes().splitlines()
        kept = orjson.loads(line)
        assert kept["event"]["request_id"] == poisoned.headers["x-request-id"]
        assert kept["error"] == "IntegrityError"


def test_events_the_store_cannot_take_are_spilled_then_replayed(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    with run_gateway(tmp_path, upstream_url, FAST) as gw, gw.client() as c:
        assert c.post(CHAT, json=BODY).status_code == 200
        gw.audit()
        rename_table(gw, "audit_events", "audit_events_away")
        ids = [c.post(CHAT, json=BODY).headers["x-request-id"] for _ in range(5)]
        wait_for(lambda: set(ids) <= set(spilled_ids(gw.data_dir)))
        resp = ready(gw)
        assert resp.status_code == 503
        assert resp.json()["audit"]["spilled"] == 5 and resp.json()["audit"]["pending"] == 0
        rename_table(gw, "audit_events_away", "audit_events")
        wait_for(lambda: set(ids) <= stored_ids(gw))
        wait_for(lambda: ready(gw).status_code == 200)
        assert not list(gw.data_dir.glob("audit-spill*"))


@contextlib.contextmanager
def store_locked(gw: RunningGateway) -> Iterator[None]:
    """Another process holds the SQLite write lock: audit writes wait (up to busy_timeout)."""
    conn = sqlite3.connect(gw.data_dir / "sluicegate.db", isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def test_past_the_queue_bound_events_go_to_the_spill_file(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    extra = "audit:\n  flush_interval_s: 0\n  max_queue_events: 1\n"
    with run_gateway(tmp_path, upstream_url, extra) as gw, gw.client() as c:
        with store_locked(gw):
            first = c.post(CHAT, json=BODY).headers["x-request-id"]
            wait_for(lambda: gw.app.audit.pending == 1 and gw.app.audit.queued == 0)  # being written
            second = c.post(CHAT, json=BODY).headers["x-request-id"]  # queued: the queue is full
            third = c.post(CHAT, json=BODY).headers["x-request-id"]  # past the bound: to disk
            wait_for(lambda: spilled_ids(gw.data_dir) == [third])
        wait_for(lambda: {first, second, third} <= stored_ids(gw))


def test_strict_mode_refuses_calls_past_the_queue_bound(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    extra = "audit:\n  flush_interval_s: 0\n  max_queue_events: 1\n  on_failure: refuse\n"
    with run_gateway(tmp_path, upstream_url, extra) as gw, gw.client() as c:
        with store_locked(gw):
            assert c.post(CHAT, json=BODY).status_code == 200
            wait_for(lambda: gw.app.audit.pending == 1 and gw.app.audit.queued == 0)  # being written
            assert c.post(CHAT, json=BODY).status_code == 200
            # the client has its answer just before the event is queued: wait for the queue to be full
            wait_for(lambda: gw.app.audit.pending == 2)
            calls = upstream.calls
            assert_openai_error(c.post(CHAT, json=BODY), 503, "audit_unavailable")
            assert upstream.calls == calls
        wait_for(lambda: gw.app.audit.pending == 0)
        assert c.post(CHAT, json=BODY).status_code == 200
        # The refused call's event went to the spill file (the queue was full); the writer replays
        # it after a write succeeds, a moment after the last call's event is stored.
        wait_for(lambda: len(gw.audit()) == 4, timeout=10)


def _every_answer_path(gw: RunningGateway) -> list[httpx.Response]:
    """One call on each way a response ends: JSON, stream, error, local answer, models list, 401."""
    with gw.client() as c, gw.client(key=None) as anon:
        return [
            c.post(CHAT, json=BODY),
            c.post(CHAT, json={**BODY, "stream": True}),
            c.post(CHAT, json={**BODY, "model": "no-such-model"}),
            c.post("/v1/messages/count_tokens", json=BODY),
            c.get("/v1/models"),
            anon.post(CHAT, json=BODY),
        ]


def test_before_response_commits_every_event_before_the_last_byte(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    with run_gateway(tmp_path, upstream_url, DURABLE) as gw:
        for resp in _every_answer_path(gw):
            # the event is in the store as soon as the client holds the whole response
            assert resp.headers["x-request-id"] in stored_ids(gw), (resp.status_code, resp.text)
        assert [e["status"] for e in gw.audit()] == [200, 200, 404, 200, 200, 401]
        stream_event = gw.audit()[1]
        assert stream_event["stream"] and stream_event["outcome"] == "ok" and stream_event["completion_tokens"]


@pytest.mark.parametrize(
    ("path", "body", "last"),
    [
        (CHAT, {**BODY, "stream": True}, "data: [DONE]"),
        ("/v1/messages", {"model": "gpt-4o-mini", "max_tokens": 32, "stream": True, "messages": BODY["messages"]},
         "event: message_stop"),
        ("/v1/responses", {"model": "gpt-4o-mini", "stream": True, "input": "hi"}, "event: response.completed"),
    ],
    ids=["chat", "messages", "responses"],
)  # fmt: skip
def test_before_response_holds_a_streams_closing_event_until_the_commit(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str, path: str, body: dict[str, object], last: str
) -> None:
    # A client that stops reading at the closing event, as SDKs do, also finds the event stored.
    with run_gateway(tmp_path, upstream_url, DURABLE) as gw, gw.client() as c:
        for _ in range(5):
            with c.stream("POST", path, json=body) as resp:
                assert resp.status_code == 200
                rid = resp.headers["x-request-id"]
                for line in resp.iter_lines():
                    if line.startswith(last):
                        assert rid in stored_ids(gw)
                        break
                else:
                    raise AssertionError(f"no {last!r} in the stream")


def test_before_response_with_the_store_down_spills_before_the_last_byte(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    with run_gateway(tmp_path, upstream_url, DURABLE) as gw:
        rename_table(gw, "audit_events", "audit_events_away")
        for resp in _every_answer_path(gw):
            assert resp.headers["x-request-id"] in spilled_ids(gw.data_dir)
        rename_table(gw, "audit_events_away", "audit_events")
        wait_for(lambda: len(stored_ids(gw)) == 6)


def test_before_response_never_completes_a_response_it_could_not_record(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    with run_gateway(tmp_path, upstream_url, DURABLE) as gw, gw.client() as c:
        rename_table(gw, "audit_events", "audit_events_away")
        (gw.data_dir / "audit-spill.jsonl").mkdir()  # and the spill file cannot be written
        with pytest.raises(httpx.RemoteProtocolError):
            c.post(CHAT, json=BODY)
        with pytest.raises(httpx.RemoteProtocolError), c.stream("POST", CHAT, json={**BODY, "stream": True}) as r:
            r.read()
        resp = ready(gw)
        assert resp.status_code == 503 and "spill file cannot be written" in str(resp.json()["problems"])
        # held in memory meanwhile, and written once the store is back
        (gw.data_dir / "audit-spill.jsonl").rmdir()
        rename_table(gw, "audit_events_away", "audit_events")
        wait_for(lambda: len(stored_ids(gw)) == 2)
        wait_for(lambda: ready(gw).status_code == 200)
