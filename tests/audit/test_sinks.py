"""Audit sinks besides the database: a rotated JSONL file, a webhook, OTLP logs; each with its own
bounded queue, failure policy and drain at close, against real receivers on loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from pydantic import TypeAdapter

from sluicegate.audit.sink_config import AuditSinkConfig
from sluicegate.audit.sinks import AuditSinks
from sluicegate.config.loader import parse_config
from sluicegate.testing import FakeUpstream, serve_in_thread
from sluicegate.testing.wire import read_body
from sluicegate.types import Receive, Scope, Send
from sluicegate.vault import Vault
from tests.conftest import free_port, run_gateway, wait_for

CONFIG: TypeAdapter[AuditSinkConfig] = TypeAdapter(AuditSinkConfig)


def sink(**fields: Any) -> AuditSinkConfig:
    return CONFIG.validate_python(fields)


def events(n: int, start: int = 0, decision: str = "allowed") -> list[dict[str, Any]]:
    """Stored events as the writer offers them (chain fields included)."""
    return [
        {
            "request_id": f"req_{i}",
            "ts": 1_700_000_000.0 + i,
            "endpoint": "chat",
            "consumer": "alice",
            "model_requested": "gpt-4o-mini",
            "model_served": "gpt-4o-mini-2024",
            "decision": decision,
            "outcome": "ok",
            "status": 200,
            "reason": None,
            "chain_seq": i + 1,
            "chain_hash": f"{i:064x}",
        }
        for i in range(start, start + n)
    ]


@contextlib.contextmanager
def running(configs: list[AuditSinkConfig], data_dir: Path, start: bool = True) -> Iterator[AuditSinks]:
    sinks = AuditSinks(configs, Vault(), data_dir)
    if start:
        sinks.start()
    try:
        yield sinks
    finally:
        sinks.close(timeout=5)


def ids(records: list[dict[str, Any]]) -> list[str]:
    return [r["request_id"] for r in records]


# -- jsonl ----------------------------------------------------------------------------------------


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_jsonl_rotates_at_the_size_bound_and_keeps_every_event_in_one_file(tmp_path: Path) -> None:
    line = len(orjson.dumps(events(1)[0])) + 1
    config = sink(type="jsonl", path="audit/events.jsonl", max_bytes=line * 10, backups=3)
    path = tmp_path / "audit" / "events.jsonl"  # relative paths are under the data folder
    with running([config], tmp_path) as sinks:
        for start in range(0, 35, 5):
            sinks.offer(events(5, start))
        wait_for(lambda: sinks.status()[0]["delivered"] == 35)
        files = [path.with_name(f"events.jsonl.{n}") for n in (3, 2, 1)] + [path]
        assert all(f.exists() for f in files) and not path.with_name("events.jsonl.4").exists()
        for f in files:
            assert f.stat().st_size <= line * 10
            assert stat.S_IMODE(f.stat().st_mode) == 0o600
        # oldest file first: every event once, in order, each line whole
        assert [r["request_id"] for f in files for r in read_lines(f)] == ids(events(35))
        # more events: the oldest backup goes, the count of backups stays
        sinks.offer(events(20, 35))
        wait_for(lambda: sinks.status()[0]["delivered"] == 55)
        assert not path.with_name("events.jsonl.4").exists()
        kept = [r["request_id"] for f in files for r in read_lines(f)]
        assert kept == ids(events(len(kept), 55 - len(kept)))
        assert len(kept) > 20  # three full backups and the live file
        assert sinks.status()[0] | {"target": None} == {
            "type": "jsonl",
            "name": "jsonl-0",
            "target": None,
            "queued": 0,
            "delivered": 55,
            "dropped": 0,
            "failures": 0,
            "last_error": None,
        }


def test_a_line_cut_by_a_crash_stays_alone_on_its_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(orjson.dumps(events(1)[0]) + b"\n" + b'{"request_id": "req_cu')  # a write cut short
    with running([sink(type="jsonl", path=str(path))], tmp_path) as sinks:
        sinks.offer(events(3, 1))
        wait_for(lambda: sinks.status()[0]["delivered"] == 3)
    lines = path.read_bytes().splitlines()
    assert lines[1] == b'{"request_id": "req_cu'
    assert [orjson.loads(x)["request_id"] for x in lines[:1] + lines[2:]] == ids(events(4))


def test_jsonl_anchors_go_to_sinks_that_take_them(tmp_path: Path) -> None:
    with_anchors = sink(type="jsonl", path="a.jsonl")
    without = sink(type="jsonl", path="b.jsonl", anchors=False)
    anchor = {"kind": "anchor", "seq": 2, "hash": "ab" * 32, "ts": 1.0, "mac": "cd" * 32}
    with running([with_anchors, without], tmp_path) as sinks:
        sinks.offer(events(2))
        sinks.anchor(anchor)
        wait_for(lambda: [s["delivered"] for s in sinks.status()] == [3, 2])
    assert read_lines(tmp_path / "a.jsonl")[-1] == anchor
    assert ids(read_lines(tmp_path / "b.jsonl")) == ["req_0", "req_1"]


# -- a webhook receiver on loopback ---------------------------------------------------------------


class Receiver:
    """A webhook receiver: answers each POST as scripted (default 204), holds POSTs while `gate`
    is clear, and keeps every request and the events of the POSTs it accepted, in order."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.accepted: list[dict[str, Any]] = []
        self.script: list[tuple[int, dict[str, str]]] = []
        self.default = 204
        self.gate = threading.Event()
        self.gate.set()
        self.holding = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        assert body is not None
        self.holding += 1
        await asyncio.to_thread(self.gate.wait)
        self.holding -= 1
        status, extra = self.script.pop(0) if self.script else (self.default, {})
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        payload = orjson.loads(body)
        self.requests.append({"headers": headers, "events": payload["events"], "status": status})
        if 200 <= status < 300:
            self.accepted.extend(payload["events"])
        raw = [(k.encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    hook = Receiver()
    with serve_in_thread(hook) as url:  # type: ignore[arg-type]
        try:
            yield hook, url + "/audit"
        finally:
            hook.gate.set()


def webhook(url: str, **fields: Any) -> AuditSinkConfig:
    return sink(type="webhook", url=url, **({"flush_interval_s": 0.05, "backoff_s": 0.01} | fields))


def test_webhook_posts_batches(tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
    hook, url = receiver
    with running([webhook(url, batch_size=10)], tmp_path) as sinks:
        sinks.offer(events(25))
        wait_for(lambda: len(hook.accepted) == 25)
    assert [len(r["events"]) for r in hook.requests] == [10, 10, 5]  # ceil(25 / 10) POSTs
    assert ids(hook.accepted) == ids(events(25))
    assert hook.accepted[0]["chain_hash"] == events(1)[0]["chain_hash"]
    assert hook.requests[0]["headers"]["content-type"] == "application/json"


def test_webhook_honours_retry_after_and_delivers_each_event_once_in_order(
    tmp_path: Path, receiver: tuple[Receiver, str]
) -> None:
    hook, url = receiver
    hook.script = [(503, {"Retry-After": "1"}), (429, {"Retry-After": "0"})]
    # without Retry-After, the backoff (a minute) would outlast the test: only its 1 s can pass
    config = webhook(url, batch_size=4, backoff_s=60, max_backoff_s=60, max_retries=3)
    with running([config], tmp_path) as sinks:
        sinks.offer(events(10))
        wait_for(lambda: len(hook.accepted) == 10, timeout=10)
        status = sinks.status()[0]
    assert ids(hook.accepted) == ids(events(10))
    assert [r["status"] for r in hook.requests] == [503, 429, 204, 204, 204]
    assert status["delivered"] == 10 and status["failures"] == 2 and status["dropped"] == 0
    assert status["last_error"] == "HTTP 429"


def test_webhook_drops_a_batch_after_its_retries(
    tmp_path: Path, receiver: tuple[Receiver, str], caplog: pytest.LogCaptureFixture
) -> None:
    hook, url = receiver
    hook.default = 500
    with (
        caplog.at_level(logging.WARNING, "sluicegate.audit.sinks"),
        running([webhook(url, max_retries=2, on_failure="drop")], tmp_path) as sinks,
    ):
        sinks.offer(events(3))
        wait_for(lambda: sinks.status()[0]["dropped"] == 3)
        assert len(hook.requests) == 3  # the first try and two retries
        assert sinks.status()[0]["failures"] == 3 and sinks.status()[0]["delivered"] == 0
        hook.default = 204
        sinks.offer(events(2, 3))  # the next batch goes through: nothing is stuck
        wait_for(lambda: ids(hook.accepted) == ["req_3", "req_4"])
    assert any("3 events dropped" in r.getMessage() for r in caplog.records)


def test_webhook_keep_retries_until_the_receiver_recovers(tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
    hook, url = receiver
    hook.default = 500
    with running([webhook(url, max_retries=1, on_failure="keep")], tmp_path) as sinks:
        sinks.offer(events(3))
        wait_for(lambda: len(hook.requests) >= 5)  # well past max_retries
        assert sinks.status()[0]["dropped"] == 0
        hook.default = 204
        wait_for(lambda: ids(hook.accepted) == ids(events(3)))


def test_secret_headers_arrive_resolved_and_are_never_shown(
    tmp_path: Path, receiver: tuple[Receiver, str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook, url = receiver
    monkeypatch.setenv("AUDIT_HOOK_TOKEN", "hook-token-7d1e")
    authed = url.replace("http://", "http://auditor:url-pass-93b2@")
    config = webhook(authed, headers={"X-Hook-Token": "Bearer env://AUDIT_HOOK_TOKEN", "X-Team": "platform"})
    hook.script = [(500, {})]  # one failure, so that the sink logs and records an error
    with caplog.at_level(logging.DEBUG), running([config], tmp_path) as sinks:
        sinks.offer(events(1))
        wait_for(lambda: len(hook.accepted) == 1)
        status = sinks.status()
    headers = hook.requests[-1]["headers"]
    assert headers["x-hook-token"] == "Bearer hook-token-7d1e" and headers["x-team"] == "platform"
    assert base64.b64decode(headers["authorization"].removeprefix("Basic ")) == b"auditor:url-pass-93b2"
    shown = orjson.dumps(status).decode() + caplog.text
    assert status[0]["failures"] == 1 and "HTTP 500" in caplog.text
    for secret in ("hook-token-7d1e", "url-pass-93b2", "auditor", "platform", "/audit"):
        assert secret not in shown, secret


def test_a_url_held_in_a_secret_reference(
    tmp_path: Path, receiver: tuple[Receiver, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    hook, url = receiver
    monkeypatch.setenv("AUDIT_HOOK_URL", url)
    with running([webhook("env://AUDIT_HOOK_URL")], tmp_path) as sinks:
        sinks.offer(events(2))
        wait_for(lambda: len(hook.accepted) == 2)
        assert sinks.status()[0]["target"] == "env://AUDIT_HOOK_URL"


# -- the queue: bounded, its policy, and a writer that never waits --------------------------------


@pytest.mark.parametrize("on_full", ["drop_newest", "drop_oldest"])
def test_a_full_queue_drops_by_policy_and_offer_never_waits(
    tmp_path: Path, receiver: tuple[Receiver, str], caplog: pytest.LogCaptureFixture, on_full: str
) -> None:
    hook, url = receiver
    hook.gate.clear()  # the receiver holds every POST: delivery hangs
    config = webhook(url, batch_size=1, queue_size=5, on_full=on_full, flush_interval_s=0, timeout_s=60)
    with caplog.at_level(logging.WARNING, "sluicegate.audit.sinks"), running([config], tmp_path) as sinks:
        sinks.offer(events(1))
        wait_for(lambda: hook.holding == 1)  # the first event is in flight, held
        # 20 offers while the delivery hangs: each returns at once (a blocked one would hang here)
        done = threading.Event()
        offering = threading.Thread(target=lambda: [sinks.offer(events(1, i)) for i in range(1, 21)] and done.set())
        offering.start()
        assert done.wait(5), "offer waited for a hanging sink"
        status = sinks.status()[0]
        assert status["queued"] == 6 and status["dropped"] == 15
        hook.gate.set()
        wait_for(lambda: len(hook.accepted) == 6)
    kept = range(1, 6) if on_full == "drop_newest" else range(16, 21)
    assert ids(hook.accepted) == ["req_0", *[f"req_{i}" for i in kept]]
    assert sum("queue full" in r.getMessage() for r in caplog.records) == 1  # rate-limited


def test_close_gives_up_at_its_deadline_and_counts_what_was_left(
    tmp_path: Path, receiver: tuple[Receiver, str]
) -> None:
    hook, url = receiver
    hook.default = 503
    sinks = AuditSinks([webhook(url, on_failure="keep", batch_size=2)], Vault(), tmp_path)
    sinks.start()
    sinks.offer(events(5))
    wait_for(lambda: len(hook.requests) >= 2)
    sinks.close(timeout=0.5)
    status = sinks.status()[0]
    assert status["dropped"] == 5 and status["queued"] == 0 and status["delivered"] == 0


# -- config reload --------------------------------------------------------------------------------


def test_reload_keeps_an_unchanged_sinks_queue_and_drains_a_removed_one(
    tmp_path: Path, receiver: tuple[Receiver, str]
) -> None:
    hook, url = receiver
    hook.gate.clear()
    kept = webhook(url, batch_size=1, flush_interval_s=0, timeout_s=60)
    removed = sink(type="jsonl", path="old.jsonl")
    with running([kept, removed], tmp_path) as sinks:
        sinks.offer(events(4))
        wait_for(lambda: hook.holding == 1)
        before = sinks._sinks[0]
        assert before.pending() == 4
        sinks.configure(
            [webhook(url, batch_size=1, flush_interval_s=0, timeout_s=60), sink(type="jsonl", path="new.jsonl")]
        )
        assert sinks._sinks[0] is before and before.pending() == 4  # same sink, same queue
        assert [s["name"] for s in sinks.status()] == ["webhook-0", "jsonl-1"]
        sinks.offer(events(1, 4))
        hook.gate.set()
        wait_for(lambda: len(hook.accepted) == 5)
        wait_for(lambda: (tmp_path / "new.jsonl").exists() and len(read_lines(tmp_path / "new.jsonl")) == 1)
    assert ids(hook.accepted) == ids(events(5))
    assert ids(read_lines(tmp_path / "old.jsonl")) == ids(events(4))  # the removed sink delivered first


# -- otlp -----------------------------------------------------------------------------------------


def attributes(record: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in record.attributes:
        out[kv.key] = getattr(kv.value, kv.value.WhichOneof("value"))
    return out


def body(record: Any) -> dict[str, Any]:
    return {
        kv.key: getattr(kv.value, kv.value.WhichOneof("value")) if kv.value.WhichOneof("value") else None
        for kv in record.body.kvlist_value.values
    }


async def test_otlp_events_arrive_as_log_records_and_close_drains(tmp_path: Path) -> None:
    from oteltap import OtelTapHttpProtobufReceiver, OtelTapHttpProtobufReceiverSettings

    port = free_port()
    received: list[Any] = []
    async with OtelTapHttpProtobufReceiver(OtelTapHttpProtobufReceiverSettings(http_port=port)) as tap:

        async def collect() -> None:
            async for record in tap.stream_logs():
                received.append(record)

        collecting = asyncio.create_task(collect())
        await asyncio.sleep(0.05)
        # A long export interval: only `close` can have sent these in time.
        config = sink(type="otlp", endpoint=f"http://127.0.0.1:{port}", flush_interval_s=60, batch_size=100)
        sinks = AuditSinks([config], Vault(), tmp_path)
        sinks.start()
        sinks.offer(events(2) + events(1, 2, decision="denied") + events(1, 3, decision="error"))
        sinks.anchor({"kind": "anchor", "seq": 4, "hash": "ab" * 32, "ts": 1_700_000_010.0, "mac": "cd" * 32})
        await asyncio.to_thread(sinks.close, 10)
        for _ in range(200):
            if len(received) >= 5:
                break
            await asyncio.sleep(0.02)
        collecting.cancel()
    assert sinks.status()[0]["delivered"] == 5
    by_id = {attributes(r).get("sluicegate.request_id"): r for r in received}
    first = by_id["req_0"]
    assert attributes(first) == {
        "event.name": "sluicegate.audit",
        "sluicegate.request_id": "req_0",
        "sluicegate.consumer": "alice",
        "sluicegate.model": "gpt-4o-mini-2024",
        "sluicegate.decision": "allowed",
        "sluicegate.outcome": "ok",
        "sluicegate.chain_seq": 1,
    }
    assert first.event_name == "sluicegate.audit"
    assert body(first)["chain_hash"] == events(1)[0]["chain_hash"] and body(first)["reason"] is None
    assert first.time_unix_nano == int(1_700_000_000.0 * 1e9)
    assert [by_id[f"req_{i}"].severity_text for i in range(4)] == ["INFO", "INFO", "WARN", "ERROR"]
    anchor = by_id[None]
    assert anchor.event_name == "sluicegate.audit.anchor" and body(anchor)["seq"] == 4


def test_otlp_config_is_refused_without_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk._logs", None)
    snapshot, issues = parse_config("audit:\n  sinks:\n    - {type: otlp}\n")
    assert snapshot is None
    [issue] = issues
    assert issue.path == ("audit", "sinks", 0, "otlp") and "pip install 'sluicegate[otel]'" in issue.message


# -- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "where", "expected"),
    [
        ("{type: syslog}", (), "'jsonl', 'webhook', 'otlp'"),
        # pydantic names the kind in the path: `audit.sinks[0].webhook.url`
        ("{type: webhook, url: ftp://example.com/x}", ("webhook", "url"), "not an http(s) URL"),
        (
            "{type: webhook, url: 'https://h.example.com', headers: {Authorization: Bearer abc}}",
            ("headers", "Authorization"),
            "secret reference",
        ),
        ("{type: webhook, url: 'https://h.example.com', batch_size: 50, queue_size: 10}", ("webhook",), "batch_size"),
        ("{type: jsonl, backups: 0}", ("jsonl", "backups"), "greater than or equal to 1"),
        ("{type: jsonl, on_full: block}", ("jsonl", "on_full"), "drop_newest"),
        ("{type: otlp, endpoint: 'http://u:p@collector:4318'}", ("otlp", "endpoint"), "headers"),
    ],
    ids=[
        "unknown-type",
        "not-http",
        "literal-credential",
        "batch-over-queue",
        "no-backups",
        "bad-policy",
        "otlp-userinfo",
    ],
)
def test_sink_config_errors(entry: str, where: tuple[str, ...], expected: str) -> None:
    snapshot, issues = parse_config(f"audit:\n  sinks:\n    - {entry}\n")
    errors = [i for i in issues if not i.warning]
    assert snapshot is None and errors
    assert any(i.path[: 3 + len(where)] == ("audit", "sinks", 0, *where) and expected in i.message for i in errors), [
        str(i) for i in errors
    ]


def test_sink_config_defaults_and_the_otlp_path() -> None:
    snapshot, issues = parse_config(
        "audit:\n  sinks:\n    - {type: jsonl}\n    - {type: otlp, endpoint: 'http://collector:4318'}\n"
    )
    assert snapshot is not None, [str(i) for i in issues]
    jsonl, otlp = snapshot.audit.sinks
    assert jsonl.type == "jsonl" and jsonl.on_full == "drop_newest" and jsonl.anchors
    assert otlp.type == "otlp" and otlp.endpoint == "http://collector:4318/v1/logs"


# -- through the gateway --------------------------------------------------------------------------


def test_the_gateway_copies_stored_events_to_its_sinks(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    extra = "audit:\n  flush_interval_s: 0\n  sinks:\n    - {type: jsonl, path: sink.jsonl}\n"
    with run_gateway(tmp_path, upstream_url, extra) as gw, gw.client() as c:
        ids_sent = [
            c.post(
                "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
            ).headers["x-request-id"]
            for _ in range(3)
        ]
        gw.audit()
        path = gw.data_dir / "sink.jsonl"
        wait_for(lambda: path.exists() and len(read_lines(path)) >= 3)
        lines = read_lines(path)
        assert [line["request_id"] for line in lines if line.get("endpoint") == "chat"] == ids_sent
        stored = {e["request_id"]: e for e in gw.audit()}
        for line in lines:
            assert line["chain_hash"] == stored[line["request_id"]]["chain_hash"]
        [shown] = httpx.get(gw.url + "/readyz").json()["audit"]["sinks"]
        assert shown["name"] == "jsonl-0" and shown["delivered"] == len(lines) and shown["dropped"] == 0
        gw.reconfigure(lambda text: text.replace("sink.jsonl", "other.jsonl"))
        assert [s["target"] for s in gw.app.audit_sinks.status()] == [str(gw.data_dir / "other.jsonl")]
    assert os.stat(path).st_mode & 0o077 == 0


def test_close_delivers_what_waits_for_a_batch_to_fill(tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
    hook, url = receiver
    sinks = AuditSinks([webhook(url, batch_size=100, flush_interval_s=60)], Vault(), tmp_path)
    sinks.start()
    sinks.offer(events(3))
    sinks.close(timeout=5)  # the batch would wait a minute to fill: close sends it now
    assert ids(hook.accepted) == ids(events(3))
    assert sinks.status()[0]["delivered"] == 3
