"""The edge protocol in-thread (the same server `sluicegate serve` runs): the connection cap, the
body deadline of a body that outlives its early answer, and its settings following a reload."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from sluicegate.testing import FakeUpstream
from tests.conftest import run_gateway
from tests.edge import raw


def test_connections_past_the_cap_get_503(tmp_path: Path, upstream: FakeUpstream, upstream_url: str) -> None:
    with run_gateway(tmp_path, upstream_url, "server:\n  max_connections: 4\n") as gw:
        idle = [raw.connect(gw.url) for _ in range(4)]
        time.sleep(0.1)
        try:
            with raw.connect(gw.url) as extra:
                extra.sendall(raw.head("GET", "/healthz"))
                resp = raw.read_response(extra)
            assert resp.status == 503 and resp.closed
            assert resp.json()["error"]["code"] == "too_many_connections"  # type: ignore[index]
            idle.pop().close()
            time.sleep(0.1)
            with raw.connect(gw.url) as again:
                again.sendall(raw.head("GET", "/healthz"))
                assert raw.read_response(again, close_wait=0).status == 200
        finally:
            for sock in idle:
                sock.close()


def test_a_body_that_drips_after_an_early_refusal_is_cut_off(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    with run_gateway(tmp_path, upstream_url, "server:\n  body_timeout_s: 0.5\n") as gw, raw.connect(gw.url) as sock:
        # No key: refused before the body is read. The client keeps the connection busy with its body.
        sock.sendall(raw.head("POST", "/v1/chat/completions", {"Content-Length": "100000"}) + b"{")
        resp = raw.read_response(sock, close_wait=0)
        assert resp.status == 401
        start = time.monotonic()
        closed = False
        while time.monotonic() - start < 3:
            try:
                sock.sendall(b" ")
            except OSError:
                closed = True
                break
            time.sleep(0.05)
        assert closed and time.monotonic() - start < 2


def test_limits_follow_a_config_reload(tmp_path: Path, upstream: FakeUpstream, upstream_url: str) -> None:
    with run_gateway(tmp_path, upstream_url) as gw:
        with raw.connect(gw.url) as sock:
            sock.sendall(raw.head("GET", "/healthz", {f"X-H{i}": "1" for i in range(20)}))
            assert raw.read_response(sock, close_wait=0).status == 200
        gw.config_path.write_text(gw.config_path.read_text() + "server:\n  max_headers: 10\n")
        assert asyncio.run(gw.app.reload())
        with raw.connect(gw.url) as sock:
            sock.sendall(raw.head("GET", "/healthz", {f"X-H{i}": "1" for i in range(20)}))
            assert raw.read_response(sock).status == 431
