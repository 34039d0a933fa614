"""The audit hash chain through the running gateway: every way of editing the store is reported.

Calls go through the gateway with the official `openai` SDK; the tests then do to the SQLite file
what someone with access to it could do (the append-only triggers dropped first, as such a person
would) and expect `sluicegate audit verify` to name the first broken position.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from sluicegate.audit.chain import Chain, ChainKey, retain, verify
from sluicegate.audit.writer import AuditWriter
from sluicegate.cli import main
from sluicegate.store.db import APPEND_ONLY, create_engine
from sluicegate.testing import FakeUpstream
from tests.audit.test_writer import event
from tests.conftest import RunningGateway, guarded_alice, run_gateway

CALLS = 12


@pytest.fixture
def gw(tmp_path: Path, upstream: FakeUpstream, upstream_url: str) -> Iterator[RunningGateway]:
    with run_gateway(tmp_path, upstream_url, "audit:\n  chain:\n    anchor_interval_s: 0.05\n") as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys["alice"], max_retries=0)
        for i in range(CALLS):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"hi {i}"}])
        gw.audit()
        yield gw


def cli(gw: RunningGateway, *args: str) -> Result:
    env = {"SLUICEGATE_DATA_DIR": str(gw.data_dir)}
    return CliRunner().invoke(main, [*args, "--config", str(gw.config_path)], env=env, catch_exceptions=False)


def report(gw: RunningGateway) -> dict[str, Any]:
    result = cli(gw, "audit", "verify", "--json")
    data: dict[str, Any] = orjson.loads(result.stdout)
    assert result.exit_code == (0 if data["intact"] else 1)
    return data


def first(gw: RunningGateway) -> dict[str, Any]:
    data = report(gw)
    assert not data["intact"], data
    problem: dict[str, Any] = data["problems"][0]
    return problem


def sql(gw: RunningGateway, *statements: str) -> None:
    with gw.app.engine.begin() as conn:
        for statement in statements:
            conn.execute(sa.text(statement))


UNGUARDED = (
    "DROP TRIGGER audit_events_no_update",
    "DROP TRIGGER audit_events_no_delete",
)


def test_an_untouched_trail_verifies(gw: RunningGateway) -> None:
    data = report(gw)
    assert data["intact"] and data["events"] == CALLS and (data["first"], data["last"]) == (1, CALLS)
    result = cli(gw, "audit", "verify")
    assert result.exit_code == 0 and f"{CALLS} events" in result.stdout


def test_the_store_refuses_updates_and_deletes(gw: RunningGateway) -> None:
    for statement in ("UPDATE audit_events SET consumer = 'mallory'", "DELETE FROM audit_events WHERE chain_seq = 3"):
        with pytest.raises(sa.exc.DatabaseError, match=APPEND_ONLY):
            sql(gw, statement)
    assert report(gw)["intact"]


def test_an_edited_event_is_named(gw: RunningGateway) -> None:
    sql(gw, *UNGUARDED, "UPDATE audit_events SET total_tokens = 1 WHERE chain_seq = 5")
    problem = first(gw)
    assert (problem["kind"], problem["position"]) == ("edited", 5)
    result = cli(gw, "audit", "verify")
    assert result.exit_code == 1 and "position 5: edited" in result.stderr


def test_an_edited_field_that_was_null_is_named(gw: RunningGateway) -> None:
    sql(gw, *UNGUARDED, "UPDATE audit_events SET rule = 'x' WHERE chain_seq = 7")
    assert (first(gw)["kind"], first(gw)["position"]) == ("edited", 7)


def test_a_deleted_event_is_named(gw: RunningGateway) -> None:
    sql(gw, *UNGUARDED, "DELETE FROM audit_events WHERE chain_seq = 4")
    problem = first(gw)
    assert (problem["kind"], problem["position"]) == ("deleted", 4)


def test_a_deleted_and_renumbered_event_is_named(gw: RunningGateway) -> None:
    sql(
        gw,
        *UNGUARDED,
        "DELETE FROM audit_events WHERE chain_seq = 4",
        "UPDATE audit_events SET chain_seq = chain_seq - 1 WHERE chain_seq > 4",
        "UPDATE audit_chain SET seq = seq - 1",
    )
    problem = first(gw)
    assert problem["position"] == 4 and problem["kind"] in ("edited", "deleted")


def test_an_inserted_event_is_named(gw: RunningGateway) -> None:
    with gw.app.engine.begin() as conn:
        row = dict(conn.execute(sa.text("SELECT * FROM audit_events WHERE chain_seq = 2")).one()._mapping)
        row.pop("seq")
        row.update(request_id="req_forged", chain_seq=None, chain_hash=None)
        conn.execute(
            sa.text(f"INSERT INTO audit_events ({', '.join(row)}) VALUES ({', '.join(':' + k for k in row)})"), row
        )
    problem = first(gw)
    assert (problem["kind"], problem["request_id"]) == ("inserted", "req_forged")


def test_an_event_put_into_the_middle_of_the_chain_is_named_inserted(gw: RunningGateway) -> None:
    with gw.app.engine.begin() as conn:
        for statement in UNGUARDED:
            conn.execute(sa.text(statement))
        conn.execute(sa.text("DROP INDEX ix_audit_events_chain_seq"))
        conn.execute(sa.text("UPDATE audit_events SET chain_seq = chain_seq + 1 WHERE chain_seq >= 6"))
        row = dict(conn.execute(sa.text("SELECT * FROM audit_events WHERE chain_seq = 5")).one()._mapping)
        row.pop("seq")
        row.update(request_id="req_forged", chain_seq=6, chain_hash="f" * 64, total_tokens=1)
        columns = ", ".join(row)
        conn.execute(sa.text(f"INSERT INTO audit_events ({columns}) VALUES ({', '.join(':' + k for k in row)})"), row)
        conn.execute(sa.text("UPDATE audit_chain SET seq = seq + 1"))
    problem = first(gw)
    assert (problem["kind"], problem["position"], problem["request_id"]) == ("inserted", 6, "req_forged")
    # The events after it still link, one place on: the insertion is the only problem in the chain.
    assert [p["kind"] for p in report(gw)["problems"]] == ["inserted"], report(gw)["problems"]


def test_an_event_forged_at_the_end_of_the_chain_is_named(gw: RunningGateway) -> None:
    with gw.app.engine.begin() as conn:
        row = dict(conn.execute(sa.text(f"SELECT * FROM audit_events WHERE chain_seq = {CALLS}")).one()._mapping)
        row.pop("seq")
        row.update(request_id="req_forged", chain_seq=CALLS + 1, chain_hash="0" * 64)
        conn.execute(
            sa.text(f"INSERT INTO audit_events ({', '.join(row)}) VALUES ({', '.join(':' + k for k in row)})"), row
        )
        conn.execute(sa.text(f"UPDATE audit_chain SET seq = {CALLS + 1}, hash = '{'0' * 64}'"))
    problem = first(gw)
    assert problem["position"] == CALLS + 1 and problem["kind"] in ("edited", "inserted")


def test_a_truncated_trail_is_named(gw: RunningGateway) -> None:
    sql(gw, *UNGUARDED, f"DELETE FROM audit_events WHERE chain_seq > {CALLS - 3}")
    problem = first(gw)
    assert (problem["kind"], problem["position"]) == ("truncated", CALLS - 2)


def test_a_truncation_that_also_rewinds_the_head_is_caught_by_the_anchors(gw: RunningGateway) -> None:
    # The writer anchors the head every 0.05 s: the last anchor names the last position.
    anchors = gw.data_dir / "audit-anchors.jsonl"
    deadline_ok = False
    for _ in range(200):
        lines = anchors.read_bytes().splitlines() if anchors.exists() else []
        if lines and orjson.loads(lines[-1])["seq"] == CALLS:
            deadline_ok = True
            break
        threading.Event().wait(0.02)
    assert deadline_ok, "no anchor of the head was written"
    with gw.app.engine.begin() as conn:
        kept = conn.execute(sa.text(f"SELECT chain_hash FROM audit_events WHERE chain_seq = {CALLS - 3}")).scalar_one()
    sql(
        gw,
        *UNGUARDED,
        f"DELETE FROM audit_events WHERE chain_seq > {CALLS - 3}",
        f"UPDATE audit_chain SET seq = {CALLS - 3}, hash = '{kept}'",
    )
    problem = first(gw)
    assert (problem["kind"], problem["position"]) == ("truncated", CALLS - 2)
    assert "anchor" in problem["detail"]
    # Without the anchor file the same database looks whole: the anchors are what catch it.
    empty = gw.data_dir / "none.jsonl"
    result = cli(gw, "audit", "verify", "--anchors", str(empty))
    assert result.exit_code == 0


def test_a_wrong_key_is_told_apart_from_tampering(gw: RunningGateway, tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    other.write_text("another key that is long enough\n")
    config = gw.config_path.read_text()
    gw.config_path.write_text(config.replace("  chain:\n", f"  chain:\n    key: file://{other}\n"))
    problem = first(gw)
    assert problem["kind"] == "key"


def test_retention_deletes_old_events_as_an_audited_operation(gw: RunningGateway) -> None:
    with gw.app.engine.connect() as conn:
        cutoff = conn.execute(sa.text("SELECT ts FROM audit_events WHERE chain_seq = 6")).scalar_one()
    result = cli(gw, "audit", "retention", "--older-than", _iso(cutoff + 1e-6), "--operator", "ops", "--yes")
    assert result.exit_code == 0, result.output
    with gw.app.engine.connect() as conn:
        left = [r[0] for r in conn.execute(sa.text("SELECT chain_seq FROM audit_events ORDER BY chain_seq"))]
        record = conn.execute(sa.text("SELECT * FROM audit_events WHERE outcome = 'audit_retention'")).one()._mapping
    assert left[0] == 7 and left[-1] == CALLS + 1
    assert record["consumer"] == "ops" and "through chain position 6" in record["reason"]
    data = report(gw)
    assert data["intact"] and data["checkpoint"] == 6 and data["events"] == CALLS - 6 + 1
    # What the checkpoint does not cover stays undeletable, and checkpoints stay as written.
    for statement in (
        "DELETE FROM audit_events WHERE chain_seq = 8",
        "DELETE FROM audit_checkpoints",
        "UPDATE audit_checkpoints SET seq = 9",
    ):
        with pytest.raises(sa.exc.DatabaseError, match=APPEND_ONLY):
            sql(gw, statement)
    # New calls chain on after the retention event.
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys["alice"], max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "after"}])
    gw.audit()
    assert report(gw)["intact"]


def test_a_forged_retention_checkpoint_is_named(gw: RunningGateway) -> None:
    sql(
        gw,
        "INSERT INTO audit_checkpoints (seq, hash, through_ts, deleted, created_at, key_id, mac) "
        f"VALUES (5, '{'1' * 64}', 9e12, 5, 0, 'x', '{'2' * 64}')",
        "DELETE FROM audit_events WHERE chain_seq <= 5",
    )
    kinds = [p["kind"] for p in report(gw)["problems"]]
    assert "checkpoint" in kinds and "deleted" in kinds


def _key(gw: RunningGateway) -> ChainKey:
    return ChainKey.from_secret((gw.data_dir / "audit-chain.key").read_text())


def test_events_hold_hmacs_of_the_request_and_answer_not_their_content(gw: RunningGateway) -> None:
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "my secret plan"}]})
    with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {gw.keys['alice']}"}) as c:
        resp = c.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        streamed = c.post(
            "/v1/chat/completions",
            content=orjson.dumps({**orjson.loads(body), "stream": True}),
            headers={"content-type": "application/json"},
        )
    assert resp.status_code == 200 and streamed.status_code == 200
    events = gw.audit()
    plain, stream = events[-2], events[-1]
    key = _key(gw).content
    assert plain["prompt_hmac"] == hmac.new(key, body, hashlib.sha256).hexdigest()
    assert plain["answer_hmac"] == hmac.new(key, resp.content, hashlib.sha256).hexdigest()
    assert stream["answer_hmac"] == hmac.new(key, streamed.content, hashlib.sha256).hexdigest()
    assert plain["content"] is None and stream["content"] is None
    with gw.app.engine.connect() as conn:
        dump = " ".join(str(v) for row in conn.execute(sa.text("SELECT * FROM audit_events")) for v in row)
    assert "secret plan" not in dump


def test_capture_keeps_the_redacted_request_and_the_answer_within_its_bound(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    extra = (
        "guards:\n  - {name: emails, kind: pii, action: redact, applies_to: input, settings: {entities: [EMAIL]}}\n"
        "groups:\n  - {name: guarded, guards: [emails]}\n"
        "audit:\n  capture:\n    - {consumers: [alice], max_bytes: 400}\n"
    )
    with run_gateway(tmp_path, upstream_url, extra) as gw:
        gw.reconfigure(guarded_alice)
        for name in ("alice", "bob"):
            client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys[name], max_retries=0)
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "write to ann@example.com " + "x" * 600}]
            )
        alice, bob = gw.audit()[-2:]
    assert bob["consumer"] == "bob" and bob["content"] is None and bob["prompt_hmac"]
    content = orjson.loads(alice["content"])
    assert "ann@example.com" not in content["request"] and "gpt-4o-mini" in content["request"]
    assert content["request"].endswith("[cut]") and len(content["request"].encode()) <= 400 + 10
    assert "choices" in content["response"]


def _iso(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


# -- writers sharing one chain -------------------------------------------------------------------


def test_writers_sharing_a_database_make_one_gapless_chain(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    key = ChainKey.from_secret("a test key that is long enough")
    writers = [
        AuditWriter(create_engine(url), flush_interval_s=0.001, batch_size=7, chain=Chain(key)) for _ in range(3)
    ]
    for w in writers:
        w.start()
    for i in range(300):
        writers[i % 3].submit(event(i))
    for w in writers:
        assert w.wait_idle(20)
        w.close()
    result = verify(create_engine(url), key)
    assert result.intact, result.problems
    assert (result.events, result.first, result.last) == (300, 1, 300)


def test_retention_then_verify_without_a_gateway(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    key = ChainKey.from_secret("a test key that is long enough")
    writer = AuditWriter(engine, flush_interval_s=0.001, chain=Chain(key))
    writer.start()
    for i in range(20):
        e = event(i)
        e.ts = 1000.0 + i
        writer.submit(e)
    assert writer.wait_idle(10)
    writer.close()
    done = retain(engine, Chain(key), 1009.5)
    assert (done.through_seq, done.deleted) == (10, 10)
    again = retain(engine, Chain(key), 1009.5)
    assert again.deleted == 0
    result = verify(engine, key)
    assert result.intact, result.problems
    assert result.checkpoint == 10 and result.events == 12


def test_a_rotated_key_verifies_with_the_previous_one_kept(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    def calls(gw: RunningGateway, n: int) -> None:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys["alice"], max_retries=0)
        for i in range(n):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"r {i}"}])
        gw.audit()

    with run_gateway(tmp_path, upstream_url) as gw:
        calls(gw, 3)
    old = f"file://{tmp_path / 'data' / 'audit-chain.key'}"
    new_key = tmp_path / "new.key"
    new_key.write_text("the key after the rotation, long enough\n")
    rotated = f"audit:\n  chain:\n    key: file://{new_key}\n    previous_keys: ['{old}']\n"
    with run_gateway(tmp_path, upstream_url, rotated) as gw:
        calls(gw, 3)
        data = report(gw)
        assert data["intact"], data
        assert (data["events"], data["first"], data["last"]) == (6, 1, 6)
        # Without the previous key the events it wrote cannot be checked: reported, not skipped.
        gw.config_path.write_text(gw.config_path.read_text().replace(f"    previous_keys: ['{old}']\n", ""))
        problem = first(gw)
        assert (problem["kind"], problem["position"]) == ("edited", 1)
        # An edit after the rotation is still found with both keys.
        gw.config_path.write_text(
            gw.config_path.read_text().replace("    key:", f"    previous_keys: ['{old}']\n    key:")
        )
        assert report(gw)["intact"]
        sql(gw, *UNGUARDED, "UPDATE audit_events SET total_tokens = 7 WHERE chain_seq = 5")
        problem = first(gw)
        assert (problem["kind"], problem["position"]) == ("edited", 5)
