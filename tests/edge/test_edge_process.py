"""The edge against a real `sluicegate serve`, over raw sockets: what hostile or broken clients do
to a proxy (slow heads, huge headers, short bodies, leaving early, not reading), and HTTP/1.0."""

from __future__ import annotations

import contextlib
import os
import resource
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from sluicegate.audit.reader import latest_events
from sluicegate.store.db import create_engine
from sluicegate.store.keys import KeyStore
from sluicegate.testing import FakeUpstream, Reply
from tests.conftest import GatewayProcess, gateway_process, wait_for
from tests.edge import raw

CHAT = "/v1/chat/completions"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "echo: hello"}]}
CONFIG = """\
providers:
  - name: mock
    type: openai_compatible
    base_url: {upstream}/v1
    api_key: env://TEST_UPSTREAM_KEY
    timeouts: {{connect_s: 2, read_s: 30, total_s: 60}}
  - name: brief
    type: openai_compatible
    base_url: {upstream}/v1
    api_key: env://TEST_UPSTREAM_KEY
    timeouts: {{connect_s: 2, read_s: 30, total_s: 1}}
models:
  - {{name: gpt-4o-mini, provider: mock}}
  - {{name: brief-model, provider: brief, model: gpt-4o-mini}}
consumers:
  - name: alice
    models: ["*"]
  - name: net
    models: ["*"]
    source_ips: ["10.0.0.0/8"]
server:
  header_timeout_s: 1
  body_timeout_s: 1
  write_timeout_s: 2
  max_headers: 50
"""


class Edge:
    """The running gateway process, its key and its audit trail."""

    def __init__(self, proc: GatewayProcess, key: str, net_key: str, data: Path, config: Path) -> None:
        self.proc = proc
        self.data = data
        self.proc_config = config
        self.url = proc.url
        self.key = key
        self.net_key = net_key
        self.engine = create_engine(f"sqlite:///{data / 'sluicegate.db'}")

    def event(self, request_id: str, timeout: float = 5) -> dict[str, object]:
        """The audit event of one request, once the gateway wrote it."""
        found: list[dict[str, object]] = []

        def written() -> bool:
            found[:] = [e for e in latest_events(self.engine, 200) if e["request_id"] == request_id]
            return bool(found)

        wait_for(written, timeout)
        return found[0]

    def events_after(self, since: float, outcome: str, timeout: float = 5) -> list[dict[str, object]]:
        """The audit events with this outcome of calls that began after `since` (wall time),
        waiting until there is one."""
        found: list[dict[str, object]] = []

        def written() -> bool:
            found[:] = [
                e
                for e in latest_events(self.engine, 200)
                if e["outcome"] == outcome and e["ts"] >= since  # type: ignore[operator]
            ]
            return bool(found)

        wait_for(written, timeout)
        return found


@pytest.fixture(scope="module")
def edge(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    tmp = tmp_path_factory.mktemp("edge")
    config = tmp / "gw.yaml"
    config.write_text(CONFIG.format(upstream=upstream_url))
    data = tmp / "data"
    store = KeyStore(create_engine(f"sqlite:///{data / 'sluicegate.db'}"))
    key, net_key = store.create("alice")[0], store.create("net")[0]
    with gateway_process(data, "--config", str(config)) as proc:
        yield Edge(proc, key, net_key, data, config)


def _healthy(url: str) -> bool:
    return httpx.get(url + "/healthz", timeout=2).status_code == 200


def test_a_slowloris_is_closed_at_the_header_deadline(edge: Edge) -> None:
    socks = [raw.connect(edge.url) for _ in range(300)]
    silent = raw.connect(edge.url)  # connects and never sends a byte
    try:
        for sock in socks:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n")
        start = time.monotonic()
        pending = set(socks)
        with selectors.DefaultSelector() as sel:
            for sock in socks:
                sel.register(sock, selectors.EVENT_READ)
            # Drip one header line on each connection every 0.2 s, as a slowloris does, until answered.
            while pending and time.monotonic() - start < 5:
                for sock in pending:
                    sock.sendall(b"X-Slow: 1\r\n")
                for key, _ in sel.select(timeout=0.2):
                    pending.discard(key.fileobj)  # type: ignore[arg-type]
                    sel.unregister(key.fileobj)
                assert _healthy(edge.url)  # the gateway serves others meanwhile
        took = time.monotonic() - start
        assert not pending, f"{len(pending)} slow connections still open after {took:.1f} s"
        assert took < 2.5  # header_timeout_s is 1
        for sock in socks:
            resp = raw.read_response(sock, timeout=2, close_wait=0)
            assert resp.status == 408 and resp.headers["connection"] == "close"
            assert resp.json()["error"]["code"] == "request_timeout"  # type: ignore[index]
        assert raw.wait_closed(silent, timeout=3) < 3
    finally:
        for sock in [*socks, silent]:
            sock.close()


def test_oversized_headers_are_refused_before_any_key_check(edge: Edge) -> None:
    with raw.connect(edge.url) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nX-Big: ")
        # The start of a 16 MiB header value: the gateway answers long before its end.
        for _ in range(4):
            sock.sendall(b"a" * 65536)
        resp = raw.read_response(sock, timeout=3)
        assert resp.status == 431, resp
        assert resp.json()["error"]["code"] == "request_header_fields_too_large"  # type: ignore[index]
        assert resp.headers["connection"] == "close"
        # The rest is read and dropped for a moment, then the connection is gone.
        start = time.monotonic()
        with contextlib.suppress(OSError):
            for _ in range(256 - 4):
                sock.sendall(b"a" * 65536)
            raw.wait_closed(sock, timeout=5)
        assert time.monotonic() - start < 5
    # Too many header lines, each small.
    with raw.connect(edge.url) as sock:
        sock.sendall(raw.head("GET", "/healthz", {f"X-H{i}": "1" for i in range(60)}))
        assert raw.read_response(sock).status == 431
    assert _healthy(edge.url)


def test_a_body_shorter_than_its_length_times_out(edge: Edge) -> None:
    with raw.connect(edge.url) as sock:
        request = raw.post(CHAT, BODY, edge.key)
        sock.sendall(request[:-10])  # Content-Length promises 10 bytes more
        start = time.monotonic()
        resp = raw.read_response(sock, timeout=5)
        assert time.monotonic() - start < 3
        assert resp.status == 408 and resp.closed
        error = resp.json()["error"]  # type: ignore[index]
        assert error["code"] == "request_timeout" and error["type"] == "invalid_request_error"
        event = edge.event(resp.headers["x-request-id"])
        assert event["status"] == 408 and event["outcome"] == "request_timeout" and event["consumer"] == "alice"
    # An Anthropic client gets the answer in its own shape; no byte of the body at all is the same.
    with raw.connect(edge.url) as sock:
        headers = {"x-api-key": edge.key, "anthropic-version": "2023-06-01", "Content-Length": "40"}
        sock.sendall(raw.head("POST", "/v1/messages", headers))
        resp = raw.read_response(sock, timeout=5)
        assert resp.status == 408
        assert resp.json() == {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": resp.json()["error"]["message"]},
        }  # type: ignore[index]


def test_http10_clients_get_a_close_delimited_stream(edge: Edge, upstream: FakeUpstream) -> None:
    body = {**BODY, "stream": True}
    with raw.connect(edge.url) as sock:
        sock.sendall(raw.post(CHAT, body, edge.key, version="1.0"))
        resp = raw.read_response(sock, timeout=5)
    assert resp.status == 200
    assert "transfer-encoding" not in resp.headers and "content-length" not in resp.headers
    assert resp.headers["connection"] == "close" and resp.closed
    assert resp.headers["content-type"].startswith("text/event-stream")
    # The body is the SSE stream itself, with no chunk framing in it.
    events = [e for e in resp.body.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    assert all(e.startswith(b"data: ") for e in events)
    text = "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in (orjson.loads(e[6:]) for e in events[:-1])
        if c["choices"]
    )
    assert text == "hello"
    # A JSON answer keeps its length.
    with raw.connect(edge.url) as sock:
        sock.sendall(raw.post(CHAT, BODY, edge.key, version="1.0"))
        resp = raw.read_response(sock, timeout=5)
    assert resp.status == 200 and resp.headers["content-length"] == str(len(resp.body))


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_client_leaving_before_the_first_byte_stops_the_call(
    edge: Edge, upstream: FakeUpstream, stream: bool
) -> None:
    upstream.enqueue(Reply(fault="hang"))  # the upstream never answers (its read_s is 30 s)
    since = time.time()
    with raw.connect(edge.url) as sock:
        sock.sendall(raw.post(CHAT, {**BODY, "stream": stream}, edge.key))
        wait_for(lambda: upstream.calls == 1)
    left = time.monotonic()
    [event] = edge.events_after(since, "client_disconnected")
    assert time.monotonic() - left < 3
    assert event["outcome"] == "client_disconnected" and event["status"] == 499
    assert event["consumer"] == "alice" and event["model_requested"] == "gpt-4o-mini" and event["provider"] == "mock"
    assert bool(event["stream"]) is stream


#: an answer far larger than every buffer between the gateway and a client that stopped reading
LONG = " ".join(["word"] * 60_000)


@pytest.mark.parametrize(
    ("model", "bound_s"), [("gpt-4o-mini", 2.0), ("brief-model", 1.0)], ids=["write-deadline", "total-s"]
)
def test_a_stream_whose_client_stops_reading_is_cut_off(
    edge: Edge, upstream: FakeUpstream, model: str, bound_s: float
) -> None:
    upstream.enqueue(Reply(content=LONG))
    since = time.time()
    with raw.connect(edge.url, rcvbuf=4096) as sock:
        sock.sendall(raw.post(CHAT, {**BODY, "model": model, "stream": True}, edge.key))
        assert sock.recv(64).startswith(b"HTTP/1.1 200")
        # The client reads nothing more; the gateway gives up at its bound (the audit says when).
        [event] = edge.events_after(since, "client_stalled", 10)
        assert event["status"] == 499 and event["consumer"] == "alice", event
        # Cut at its bound: the write deadline (2 s), or the provider's total_s (1 s) when shorter.
        latency = event["latency_ms"]
        assert isinstance(latency, float) and latency >= bound_s * 1000
        assert bound_s == 2.0 or latency < 2000
        # The connection was aborted: reading now finds what was buffered, then its end.
        raw.wait_closed(sock, timeout=5)


def test_forwarded_for_from_loopback_is_not_believed(edge: Edge) -> None:
    # `net` may call from 10.0.0.0/8 only; no trusted proxy is configured.
    headers = {"Authorization": f"Bearer {edge.net_key}", "X-Forwarded-For": "10.1.2.3", "Forwarded": "for=10.1.2.3"}
    resp = httpx.post(edge.url + CHAT, json=BODY, headers=headers, timeout=5)
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "source_ip_not_allowed"
    event = edge.event(resp.headers["x-request-id"])
    assert event["client_ip"] == "127.0.0.1"


def test_a_key_works_on_the_first_call_after_keys_create(edge: Edge, tmp_path: Path) -> None:
    config = edge.proc_config
    env = {**os.environ, "SLUICEGATE_DATA_DIR": str(edge.data)}
    for _ in range(2):
        created = subprocess.run(
            [sys.executable, "-m", "sluicegate.cli", "keys", "create", "--consumer", "alice", "--config", str(config)],
            env=env,
            capture_output=True,
            check=True,
        )
        key = created.stdout.decode().strip().splitlines()[-1]
        resp = httpx.post(edge.url + CHAT, json=BODY, headers={"Authorization": f"Bearer {key}"}, timeout=5)
        assert resp.status_code == 200, resp.text


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


IDLE_CLIENTS = 10_000


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the gateway's memory from /proc")
def test_ten_thousand_idle_keep_alive_clients_stay_cheap(edge: Edge) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < IDLE_CLIENTS + 500:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, IDLE_CLIENTS + 500), hard))
    # Scaled down only where the hard limit cannot hold them (this test's process opens one end of each).
    clients = min(IDLE_CLIENTS, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 500)
    pid = edge.proc.proc.pid
    rss_before = _rss_kib(pid)
    request = raw.head("GET", "/healthz")
    socks: list[socket.socket] = []
    try:
        answered = 0
        got: dict[socket.socket, bytes] = {}
        with selectors.DefaultSelector() as sel:
            # In batches, answered before the next: the listen backlog never overflows.
            for batch in range(0, clients, 500):
                for _ in range(min(500, clients - batch)):
                    sock = raw.connect(edge.url)
                    sock.setblocking(False)
                    sock.send(request)
                    sel.register(sock, selectors.EVENT_READ)
                    socks.append(sock)
                deadline = time.monotonic() + 20
                while answered < len(socks) and time.monotonic() < deadline:
                    for key, _ in sel.select(timeout=1):
                        sock = key.fileobj
                        assert isinstance(sock, socket.socket)
                        got[sock] = got.get(sock, b"") + sock.recv(4096)
                        if got[sock].endswith(b"\r\n0\r\n\r\n"):  # the end of the chunked body
                            assert got.pop(sock).startswith(b"HTTP/1.1 200")
                            sel.unregister(sock)
                            answered += 1
        assert answered == clients
        # All of them idle on kept-alive connections now.
        time.sleep(0.5)
        rss = _rss_kib(pid)
        cpu = _cpu_s(pid)
        time.sleep(2)
        idle_cpu = _cpu_s(pid) - cpu
        per_client_kib = (rss - rss_before) / clients
        print(
            f"\n{clients} idle keep-alive clients: +{(rss - rss_before) / 1024:.1f} MiB RSS "
            f"({per_client_kib:.2f} KiB each), {idle_cpu:.2f} s CPU in 2 s idle"
        )
        assert per_client_kib < 16, per_client_kib
        assert idle_cpu < 0.2, idle_cpu
        # The gateway still serves, and none of the idle connections was dropped.
        assert (
            httpx.post(edge.url + CHAT, json=BODY, headers={"Authorization": f"Bearer {edge.key}"}).status_code == 200
        )
        for sock in socks[:: clients // 50 or 1]:
            sock.setblocking(True)
            sock.sendall(request)
            assert raw.read_response(sock, close_wait=0).status == 200
    finally:
        for sock in socks:
            sock.close()
