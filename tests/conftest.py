"""Shared fixtures: the fake upstream and the gateway, both real HTTP servers on loopback.

The gateway runs in a thread of the test process (uvicorn, as in production), so tests can
reach into it to wait for the audit writer; clients talk to it only over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluicegate.app import Gateway
from sluicegate.audit.reader import latest_events
from sluicegate.config.loader import load_config
from sluicegate.edge.server import server_config
from sluicegate.settings import Settings
from sluicegate.store.db import create_engine
from sluicegate.store.keys import KeyStore
from sluicegate.testing import FakeUpstream, serve_in_thread
from tests.postgres_server import Postgres, running_postgres
from tests.redis_server import RedisServer

#: the provider key the gateway holds; tests assert it never reaches a client, a log or the audit
CANARY_KEY = "sk-canary-5f1d2c9e8b7a6f4e3d2c1b0a9f8e7d6c"
os.environ["TEST_UPSTREAM_KEY"] = CANARY_KEY

BASE_CONFIG = """\
providers:
  - name: mock
    type: openai_compatible
    base_url: {upstream}/v1
    api_key: env://TEST_UPSTREAM_KEY
    timeouts: {{connect_s: 2, read_s: {read_s}, total_s: 30}}
models:
  - name: gpt-4o-mini
    provider: mock
    input_cost_per_mtok: 0.15
    output_cost_per_mtok: 0.6
  - name: team-model
    provider: mock
    model: gpt-4o
  - name: text-embedding-3-small
    provider: mock
  - name: open-*
    provider: mock
consumers:
  - name: alice
    models: ["*"]
  - name: bob
    models: [gpt-4o-mini]
"""


@pytest.fixture(scope="session")
def upstream_app() -> FakeUpstream:
    return FakeUpstream(required_key=CANARY_KEY)


@pytest.fixture(scope="session")
def upstream_url(upstream_app: FakeUpstream) -> Iterator[str]:
    with serve_in_thread(upstream_app) as url:
        yield url


@pytest.fixture
def upstream(upstream_app: FakeUpstream, upstream_url: str) -> FakeUpstream:
    """The fake upstream, with its script and records cleared for this test."""
    upstream_app.reset()
    return upstream_app


@dataclass
class RunningGateway:
    """A gateway serving on loopback, with one key per consumer."""

    url: str
    app: Gateway
    keys: dict[str, str]
    config_path: Path
    data_dir: Path

    def client(self, key: str | None = "alice", **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[key]}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10, **kwargs)

    def audit(self, n: int = 1000) -> list[dict[str, Any]]:
        """Audit events written so far (waits for calls to queue their events, then for the writer
        to drain: a client has its answer a moment before the event of its call is queued)."""
        deadline = time.monotonic() + 2
        while self.app.in_flight and time.monotonic() < deadline:
            time.sleep(0.002)
        assert self.app.audit.wait_idle(10), "audit writer did not drain"
        return latest_events(self.app.engine, n)

    def last_audit(self) -> dict[str, Any]:
        events = self.audit(1)
        assert events, "no audit event"
        return events[-1]

    def reconfigure(self, edit: Callable[[str], str]) -> None:
        """Rewrite the config file with `edit` and reload it (the reload must succeed)."""
        self.config_path.write_text(edit(self.config_path.read_text()))
        assert asyncio.run(self.app.reload()), self.app.last_reload_error


def with_claude(text: str, upstream_url: str, *aliases: str) -> str:
    """A config with an Anthropic provider `claude` on the fake upstream, serving each of
    `aliases` as `claude-sonnet-4-5`."""
    provider = f'  - {{name: claude, type: anthropic, base_url: "{upstream_url}", api_key: env://TEST_UPSTREAM_KEY}}\n'
    models = "".join(f"  - {{name: {alias}, provider: claude, model: claude-sonnet-4-5}}\n" for alias in aliases)
    text = text.replace("models:\n", provider + "models:\n", 1)
    return text.replace("models:\n", "models:\n" + models, 1)


def guarded_alice(text: str) -> str:
    """A config whose consumer alice is in the `guarded` group."""
    return text.replace("  - name: alice\n", "  - name: alice\n    groups: [guarded]\n")


@contextlib.contextmanager
def run_gateway(
    tmp: Path, upstream_url: str, extra: str = "", read_s: float = 5, **gw: Any
) -> Iterator[RunningGateway]:
    """Write a config, create keys, start a gateway on a free port; stop it on exit."""
    config_path = tmp / "sluicegate.yaml"
    config_path.write_text(BASE_CONFIG.format(upstream=upstream_url, read_s=read_s) + textwrap.dedent(extra))
    data_dir = tmp / "data"
    settings = Settings(data_dir=data_dir)
    engine = create_engine(settings.db_url())
    store = KeyStore(engine)
    keys = {name: store.create(name)[0] for name in ("alice", "bob")}
    gateway = Gateway(load_config(config_path), settings=settings, config_path=config_path, engine=engine, **gw)
    # Served as `sluicegate serve` serves it: the edge protocol and its settings.
    config = server_config(gateway, "127.0.0.1", 0, log_level="warning", timeout_graceful_shutdown=1)
    with serve_in_thread(gateway, config=config) as url:
        yield RunningGateway(url, gateway, keys, config_path, data_dir)


@pytest.fixture(scope="module")
def gateway(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """A gateway on the base config, shared by a test module."""
    with run_gateway(tmp_path_factory.mktemp("gw"), upstream_url) as gw:
        yield gw


def assert_openai_error(resp: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is an OpenAI-shaped error with this status (and code); return its `error`."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in resp.text
    assert CANARY_KEY not in resp.text
    if code is not None:
        assert error["code"] == code, error
    assert resp.headers.get("x-request-id", "").startswith("req_")
    return error  # type: ignore[no-any-return]


@dataclass
class GatewayProcess:
    """`sluicegate serve` running as a child process."""

    proc: subprocess.Popen[bytes]
    url: str
    output: bytes = b""
    #: where its output goes while it runs (None: a pipe, read once it stopped)
    log: Path | None = None

    def output_so_far(self) -> bytes:
        """What the process wrote so far (its log file), or all of it once stopped."""
        return self.log.read_bytes() if self.log is not None else self.output

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the process, wait for it, keep its output; return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.output = self.proc.communicate(timeout=20)[0] or b""
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.output = self.proc.communicate()[0] or b""
        if self.log is not None:
            self.output = self.log.read_bytes()
        return self.proc.returncode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float = 5) -> None:
    """Poll until `predicate()` holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


@contextlib.contextmanager
def gateway_process(
    data_dir: Path, *args: str, cwd: Path | None = None, log: Path | None = None
) -> Iterator[GatewayProcess]:
    """Run `sluicegate serve ARGS` on a free port until it is ready; stop it (SIGTERM) on exit.
    With `log`, its output goes to that file, readable while it runs. One worker process unless
    ARGS say `--workers`."""
    port = free_port()
    if "--workers" not in args:
        args = (*args, "--workers", "1")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    env.update(SLUICEGATE_DATA_DIR=str(data_dir), TEST_UPSTREAM_KEY=CANARY_KEY)
    output = log.open("ab") if log is not None else subprocess.PIPE
    proc = subprocess.Popen(
        [sys.executable, "-m", "sluicegate.cli", "serve", "--port", str(port), *args],
        env=env,
        cwd=cwd,
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    if log is not None:
        output.close()  # type: ignore[union-attr]
    running = GatewayProcess(proc, f"http://127.0.0.1:{port}", log=log)
    # One client for every probe: a new one per probe costs a TLS context (tens of ms of CPU).
    probe = httpx.Client(timeout=1)

    def ready() -> bool:
        if proc.poll() is not None:
            out = proc.communicate()[0] or running.output_so_far()
            raise AssertionError(f"the gateway exited: {out.decode()}")
        try:
            return probe.get(running.url + "/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, timeout=20)
        probe.close()
        yield running
    finally:
        probe.close()
        running.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port (one per xdist worker); skipped where none is installed."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A real PostgreSQL server for a test module; skipped where none is installed."""
    with running_postgres() as server:
        yield server
