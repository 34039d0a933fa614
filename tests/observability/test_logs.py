"""Structured logs: JSON lines that parse, the request id on the lines of a call, a level per logger
(from the config, again after a reload), and no line forged by what a client or upstream sends."""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluicegate.observability.config import LoggingConfig
from sluicegate.observability.logs import REQUEST_ID, JsonFormatter, LogSetup, TextFormatter
from sluicegate.store.db import create_engine
from sluicegate.store.keys import KeyStore
from sluicegate.testing import FakeUpstream, Reply
from tests.conftest import BASE_CONFIG, CANARY_KEY, free_port, gateway_process, wait_for

#: a value a client or an upstream chose, made to look like a second log line and to drive a terminal
FORGED = "ok\r\n2026-01-01 00:00:00,000 ERROR sluicegate: forged\x1b[31m red\x85NEL\u2028LS\u2029PS\x0bVT\x9b2J"
#: where a text line of a record begins: its timestamp
RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, logging.StreamHandler[io.StringIO]]]:
    """A logger of its own, writing to a buffer (the root logger and pytest's handlers untouched)."""
    log = logging.getLogger("sluicegate.test_logs")
    handler = logging.StreamHandler(io.StringIO())
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.DEBUG)
    try:
        yield log, handler
    finally:
        log.removeHandler(handler)
        log.propagate = True
        log.setLevel(logging.NOTSET)


def _records(log: logging.Logger) -> None:
    """Log a forged value in a message and in an exception's text, inside a call and outside."""
    token = REQUEST_ID.set("req_abc")
    try:
        log.warning("model %s refused", FORGED)
        try:
            raise ValueError(FORGED)
        except ValueError:
            log.exception("failed on %s", FORGED)
    finally:
        REQUEST_ID.reset(token)
    log.info("outside a call", extra={"attempt": 3, "peer": ("127.0.0.1", 80)})


def _split(text: str) -> list[str]:
    # Every line break a reader may honour: `str.splitlines` splits on NEL, LS, PS, VT and more.
    return text.splitlines()


def test_json_lines_parse_with_request_id_exception_and_extra_fields(logger: Any) -> None:
    log, handler = logger
    handler.setFormatter(JsonFormatter())
    _records(log)
    lines = _split(handler.stream.getvalue())
    assert len(lines) == 3
    warning, error, info = (json.loads(line) for line in lines)
    assert set(warning) == {"ts", "level", "logger", "message", "request_id"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", warning["ts"])
    assert (warning["level"], warning["logger"], warning["request_id"]) == ("WARNING", log.name, "req_abc")
    # The value round-trips exactly: escaped on the line, whole once parsed.
    assert warning["message"] == f"model {FORGED} refused"
    assert error["request_id"] == "req_abc"
    assert error["exc_info"].startswith("Traceback") and FORGED in error["exc_info"]
    assert "request_id" not in info
    assert (info["attempt"], info["peer"]) == (3, ["127.0.0.1", 80])
    raw = handler.stream.getvalue()
    for char in "\r\x1b\x85\u2028\u2029\x0b\x9b":
        assert char not in raw


def test_text_lines_cannot_be_forged(logger: Any) -> None:
    log, handler = logger
    handler.setFormatter(TextFormatter())
    _records(log)
    text = handler.stream.getvalue()
    for char in "\r\x1b\x85\u2028\u2029\x0b\x9b":
        assert char not in text
    lines = _split(text)
    starts = [line for line in lines if RECORD_START.match(line)]
    # One line per record begins like a record; a traceback's lines are indented under its own.
    assert len(starts) == 3
    assert all(RECORD_START.match(line) or line.startswith("    ") for line in lines)
    assert starts[0].endswith(
        r"WARNING sluicegate.test_logs [req_abc]: model ok\r\n2026-01-01 00:00:00,000 ERROR sluicegate: "
        r"forged\x1b[31m red\x85NEL\u2028LS\u2029PS\x0bVT\x9b2J refused"
    )
    assert "[req_abc]: failed on" in starts[1]
    # The exception's own line break stays a line break, under the record, indented.
    assert "    ValueError: ok\\r" in lines
    assert any(line.startswith("    2026-01-01 00:00:00,000 ERROR sluicegate: forged\\x1b[31m") for line in lines)
    assert starts[2].endswith("INFO sluicegate.test_logs: outside a call")


def test_log_setup_levels_per_logger_and_reapplied() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    try:
        setup = LogSetup(out)
        setup.apply(LoggingConfig(format="json", level="warning", levels={"sluicegate.audit": "debug"}))
        assert root.handlers == [setup.handler]
        logging.getLogger("sluicegate.audit.writer").debug("audit detail")
        logging.getLogger("sluicegate.limits").info("hidden")
        logging.getLogger("sluicegate.limits").warning("shown")
        # A reload without that logger puts it back under the root's level.
        setup.apply(LoggingConfig(format="text", level="INFO"))
        logging.getLogger("sluicegate.audit.writer").debug("hidden again")
        logging.getLogger("sluicegate.audit.writer").info("as text")
        lines = out.getvalue().splitlines()
        assert [json.loads(line)["message"] for line in lines[:2]] == ["audit detail", "shown"]
        assert len(lines) == 3 and lines[2].endswith("INFO sluicegate.audit.writer: as text")
        assert logging.getLogger("sluicegate.audit").level == logging.NOTSET
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])


#: a gateway whose calls log: a guard that cannot be reached and lets calls through, tracing that
#: reads the client's `traceparent`; root at WARNING, tracing's logger at DEBUG, usage's at ERROR
SERVED = """\
guards:
  - name: dead-webhook-open
    kind: webhook
    action: block
    applies_to: input
    on_error: allow
    timeout_s: 1
    settings:
      url: http://127.0.0.1:9/never
observability:
  tracing:
    enabled: true
    endpoint: http://127.0.0.1:{dead}/v1/traces
    timeout_s: 0.5
    export_interval_s: 0.05
  logging:
    format: text
    level: WARNING
    levels:
      sluicegate.tracing: DEBUG
      sluicegate.usage: ERROR
"""


def _json_lines(raw: bytes) -> list[dict[str, Any]]:
    """Every line of the process's output, each of which must be a JSON object."""
    lines = raw.decode().splitlines()
    parsed = [json.loads(line) for line in lines]
    assert all(isinstance(p, dict) for p in parsed)
    return parsed


def test_served_json_logs_carry_the_request_id_and_levels_per_logger(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    config = tmp_path / "gw.yaml"
    text = BASE_CONFIG.format(upstream=upstream_url, read_s=5) + SERVED.format(dead=free_port())
    config.write_text(text.replace("  - name: alice\n", "  - name: alice\n    guards: [dead-webhook-open]\n"))
    data = tmp_path / "data"
    key, _ = KeyStore(create_engine(f"sqlite:///{data / 'sluicegate.db'}")).create("alice")
    log = tmp_path / "gateway.log"
    # The flag wins over the config's `format: text`.
    with (
        gateway_process(data, "--config", str(config), "--log-format", "json", log=log) as gw,
        httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as client,
    ):

        def chat(**headers: Any) -> str:
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
            resp = client.post("/v1/chat/completions", json=body, headers=headers)
            assert resp.status_code == 200, resp.text
            return resp.headers["x-request-id"]

        # A traceparent a client forged (NEL and CSI bytes: allowed in a header value, a line end
        # and a terminal command once decoded) is logged by tracing's DEBUG logger.
        first = chat(traceparent=b"00-\x85forged\x9b2J-01")
        upstream.enqueue(Reply(usage_values=("7", "8")))  # usage that is no count: a WARNING of `usage`
        second = chat()
        third = chat()

        def mine(request_id: str) -> list[dict[str, Any]]:
            return [line for line in _json_lines(gw.output_so_far()) if line.get("request_id") == request_id]

        wait_for(lambda: len(mine(third)) >= 1)
        lines = mine(first)
        assert {(line["logger"], line["level"]) for line in lines} == {
            ("sluicegate.tracing", "DEBUG"),
            ("sluicegate.guardrails", "WARNING"),
        }
        traced = next(line for line in lines if line["logger"] == "sluicegate.tracing")
        assert traced["message"] == "ignored a malformed traceparent: 00-\x85forged\x9b2J-01"
        # The usage warning of the second call is below its logger's level (ERROR).
        assert {line["logger"] for line in mine(second)} == {"sluicegate.guardrails"}

        # A reload lowers `usage` to WARNING: its warnings appear, with their call's request id.
        config.write_text(config.read_text().replace("sluicegate.usage: ERROR", "sluicegate.usage: WARNING"))
        gw.proc.send_signal(signal.SIGHUP)

        def usage_logged() -> bool:
            upstream.enqueue(Reply(usage_values=("7", "8")))
            return any(line["logger"] == "sluicegate.usage" for line in mine(chat()))

        wait_for(usage_logged, timeout=10)
    raw = gw.output
    assert b"\xc2\x85" not in raw and b"\xc2\x9b" not in raw
    lines = _json_lines(raw)
    # The export failure (no receiver), logged once, by the exporter's thread: no request id there.
    exports = [line for line in lines if "cannot be exported" in line["message"]]
    assert len(exports) == 1 and "request_id" not in exports[0]
    assert not any(line["level"] == "INFO" and line["logger"].startswith("sluicegate") for line in lines)
    assert CANARY_KEY.encode() not in raw and key.encode() not in raw


def test_serve_text_logs_name_the_request(tmp_path: Path, upstream: FakeUpstream, upstream_url: str) -> None:
    config = tmp_path / "gw.yaml"
    text = BASE_CONFIG.format(upstream=upstream_url, read_s=5) + textwrap.dedent(SERVED.format(dead=free_port()))
    config.write_text(text)
    data = tmp_path / "data"
    key, _ = KeyStore(create_engine(f"sqlite:///{data / 'sluicegate.db'}")).create("alice")
    with (
        gateway_process(data, "--config", str(config), log=tmp_path / "gateway.log") as gw,
        httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as client,
    ):
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        resp = client.post("/v1/chat/completions", json=body, headers={"traceparent": b"bad\x85\x9bvalue"})
        request_id = resp.headers["x-request-id"]
        wait_for(lambda: request_id.encode() in gw.output_so_far())
    lines = gw.output.decode().splitlines()
    mine = [line for line in lines if f"[{request_id}]" in line]
    assert len(mine) == 1
    assert RECORD_START.match(mine[0])
    assert mine[0].endswith(
        rf"DEBUG sluicegate.tracing [{request_id}]: ignored a malformed traceparent: bad\x85\x9bvalue"
    )
