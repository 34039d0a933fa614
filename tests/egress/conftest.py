"""Egress fixtures: a test CA (made here, never committed), a gateway serving its data plane and
its egress proxy on one event loop in a thread (as `sluicegate serve` does), and a tiny HTTP
server standing in for a non-AI host. Every socket is on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import socket
import ssl
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
import uvloop

from sluicegate.app import Gateway
from sluicegate.config.loader import load_config
from sluicegate.edge.server import server_config
from sluicegate.egress.door import EgressDoor
from sluicegate.settings import Settings
from sluicegate.store.db import create_engine
from sluicegate.store.keys import KeyStore
from sluicegate.testing.ca import make_ca
from tests.conftest import BASE_CONFIG, RunningGateway


@dataclass
class OrgCA:
    """The organisation's CA as the tests hold it: files for the gateway, trust for the clients."""

    cert: Path
    key: Path

    def context(self) -> ssl.SSLContext:
        """A client TLS context that trusts this CA only."""
        return ssl.create_default_context(cafile=str(self.cert))


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> OrgCA:
    """An organisation CA for the tests, with its certificate and key in files."""
    return OrgCA(*make_ca(tmp_path_factory.mktemp("ca")))


@dataclass
class EgressGateway(RunningGateway):
    """A gateway with its egress proxy."""

    proxy: str = ""
    door: EgressDoor | None = None

    def proxy_with(self, who: str) -> str:
        """The proxy URL with a consumer's key as the proxy password."""
        return self.proxy.replace("http://", f"http://{who}:{self.keys[who]}@")


def _bind() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@contextlib.contextmanager
def run_egress_gateway(tmp: Path, config: str) -> Iterator[EgressGateway]:
    """A gateway on `config` (BASE_CONFIG's format fields filled in already) with keys for alice and
    bob, serving the data plane and the egress proxy on one loop in a thread."""
    config_path = tmp / "sluicegate.yaml"
    config_path.write_text(config)
    data_dir = tmp / "data"
    settings = Settings(data_dir=data_dir)
    engine = create_engine(settings.db_url())
    store = KeyStore(engine)
    keys = {name: store.create(name)[0] for name in ("alice", "bob")}
    gateway = Gateway(load_config(config_path), settings=settings, config_path=config_path, engine=engine)
    data_sock, egress_sock = _bind(), _bind()
    server = uvicorn.Server(server_config(gateway, "127.0.0.1", 0, log_level="warning", timeout_graceful_shutdown=1))
    door = EgressDoor(gateway)
    failed: list[BaseException] = []

    async def main() -> None:
        # As `sluicegate serve` does: the proxy takes connections once the gateway has started.
        waiting = asyncio.create_task(door.serve_when_ready(egress_sock))
        try:
            await server.serve(sockets=[data_sock])
        finally:
            waiting.cancel()
            await door.stop()

    def run() -> None:
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(main())
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=run, name="egress gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), failed
        assert time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.005)
    url = f"http://127.0.0.1:{data_sock.getsockname()[1]}"
    proxy = f"http://127.0.0.1:{egress_sock.getsockname()[1]}"
    try:
        yield EgressGateway(url, gateway, keys, config_path, data_dir, proxy=proxy, door=door)
    finally:
        server.should_exit = True
        thread.join(10)
        data_sock.close()
        egress_sock.close()


def egress_config(upstream_url: str, ca: OrgCA, egress: str, extra: str = "") -> str:
    """BASE_CONFIG with an Anthropic provider, a guard on alice, and this `egress:` section body."""
    text = BASE_CONFIG.format(upstream=upstream_url, read_s=5)
    provider = f'  - {{name: claude, type: anthropic, base_url: "{upstream_url}", api_key: env://TEST_UPSTREAM_KEY}}\n'
    text = text.replace("models:\n", provider + "models:\n", 1)
    text = text.replace("models:\n", "models:\n  - {name: claude-sonnet-4-5, provider: claude}\n", 1)
    text = text.replace("  - name: alice\n", "  - name: alice\n    guards: [no-codename]\n")
    text += "guards:\n"
    text += "  - {name: no-codename, kind: words, action: block, applies_to: input, settings: {words: [nightingale]}}\n"
    section = textwrap.indent(textwrap.dedent(egress).strip("\n"), "  ")
    ca_refs = f"  ca: {{cert: 'file://{ca.cert}', key: 'file://{ca.key}'}}\n"
    return text + textwrap.dedent(extra) + "egress:\n  enabled: true\n" + section + "\n" + ca_refs


class _Site(http.server.BaseHTTPRequestHandler):
    """A non-AI site: answers every GET with its path, every POST with its body."""

    def do_GET(self) -> None:
        body = f"site says {self.path}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        body = b"got " + self.rfile.read(length)
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture(scope="session")
def site() -> Iterator[str]:
    """A plain HTTP server on loopback: `address:port`."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Site)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
