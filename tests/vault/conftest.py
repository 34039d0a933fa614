"""Helpers for vault tests: a gateway on a config of the test's own, and an upstream taking any key."""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluicegate.app import Gateway
from sluicegate.config.loader import load_config
from sluicegate.settings import Settings
from sluicegate.store.db import create_engine
from sluicegate.store.keys import KeyStore
from sluicegate.testing import FakeUpstream, serve_in_thread
from tests.conftest import RunningGateway

CHAT = "/v1/chat/completions"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def provider_config(upstream_url: str, api_key: str, *, rotation: str = "round_robin", vault: str = "") -> str:
    """A config with one provider `p` whose `api_key` is `api_key` (a reference or a YAML list)."""
    return textwrap.dedent(f"""\
        providers:
          - name: p
            type: openai_compatible
            base_url: {upstream_url}/v1
            api_key: {api_key}
            key_rotation: {rotation}
            timeouts: {{connect_s: 2, read_s: 5, total_s: 30}}
        models:
          - name: gpt-4o-mini
            provider: p
        consumers:
          - name: alice
            models: ["*"]
        """) + textwrap.dedent(vault)


@contextlib.contextmanager
def gateway_on(tmp: Path, config: str) -> Iterator[RunningGateway]:
    """Start a gateway on `config` with a key for `alice`; stop it on exit."""
    config_path = tmp / "sluicegate.yaml"
    config_path.write_text(config)
    data_dir = tmp / "data"
    settings = Settings(data_dir=data_dir)
    engine = create_engine(settings.db_url())
    keys = {"alice": KeyStore(engine).create("alice")[0]}
    gateway = Gateway(load_config(config_path), settings=settings, config_path=config_path, engine=engine)
    with serve_in_thread(gateway) as url:
        yield RunningGateway(url, gateway, keys, config_path, data_dir)


@pytest.fixture(scope="module")
def any_key_upstream_app() -> Iterator[tuple[FakeUpstream, str]]:
    app = FakeUpstream()
    with serve_in_thread(app) as url:
        yield app, url


@pytest.fixture
def any_key_upstream(any_key_upstream_app: tuple[FakeUpstream, str]) -> tuple[FakeUpstream, str]:
    """A fake upstream that takes any bearer (tests read which one it got), reset for this test."""
    app, url = any_key_upstream_app
    app.reset()
    app.required_key = None
    return app, url


def bearer(upstream: FakeUpstream) -> str:
    """The key the upstream's last request carried."""
    return upstream.requests[-1].headers["authorization"].removeprefix("Bearer ")
