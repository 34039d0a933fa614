"""Demo mode: the embedded defaults `sluicegate serve` runs with when no config is given.

SQLite in the data folder, the fake upstream on a loopback port as the `mock` provider (it
answers with no internet and no key), one `demo` consumer whose key is kept in the data folder
so it can be printed at every start. The fake speaks OpenAI's API (`mock-chat`, `mock-embed`) and
Anthropic's (`mock-claude`). With `OPENAI_API_KEY` set, `gpt-*` and `text-embedding-*` also
route to OpenAI; with `ANTHROPIC_API_KEY` set, `claude-*` routes to Anthropic.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import Engine

from sluicegate.config.model import ConsumerConfig, GatewayConfig, ModelConfig, ProviderConfig
from sluicegate.store.keys import KeyStore, hash_key

DEMO_CONSUMER = "demo"


def demo_config(
    mock_base_url: str, with_openai: bool | None = None, with_anthropic: bool | None = None
) -> GatewayConfig:
    """The demo config, routing to the fake upstream at `mock_base_url` (and OpenAI or Anthropic
    when keyed)."""
    if with_openai is None:
        with_openai = bool(os.environ.get("OPENAI_API_KEY"))
    if with_anthropic is None:
        with_anthropic = bool(os.environ.get("ANTHROPIC_API_KEY"))
    providers = [
        ProviderConfig(name="mock", type="openai_compatible", base_url=f"{mock_base_url}/v1"),
        # The same fake speaks Anthropic's Messages API: `mock-claude` shows passthrough for
        # Anthropic clients, and translation for OpenAI ones.
        ProviderConfig(name="mock-anthropic", type="anthropic", base_url=mock_base_url),
    ]
    models = [
        ModelConfig(name="mock-chat", provider="mock", model="gpt-4o-mini"),
        ModelConfig(name="mock-claude", provider="mock-anthropic", model="claude-sonnet-4-5"),
        ModelConfig(name="mock-embed", provider="mock", model="text-embedding-3-small"),
    ]
    if with_openai:
        providers.append(ProviderConfig(name="openai", type="openai", api_key="env://OPENAI_API_KEY"))
        models += [
            ModelConfig(name="gpt-*", provider="openai"),
            ModelConfig(name="text-embedding-*", provider="openai"),
        ]
    if with_anthropic:
        providers.append(ProviderConfig(name="anthropic", type="anthropic", api_key="env://ANTHROPIC_API_KEY"))
        models.append(ModelConfig(name="claude-*", provider="anthropic"))
    return GatewayConfig(
        providers=providers, models=models, consumers=[ConsumerConfig(name=DEMO_CONSUMER, models=["*"])]
    )


def demo_key(engine: Engine, data_dir: Path) -> str:
    """The demo consumer's key: the one kept in the data folder if still valid, else a new one."""
    path = data_dir / "demo-key"
    store = KeyStore(engine)
    if path.exists():
        key = path.read_text(encoding="utf-8").strip()
        digest = hash_key(key)
        if any(r.key_hash == digest and r.revoked_at is None for r in store.list(DEMO_CONSUMER)):
            return key
    key, _ = store.create(DEMO_CONSUMER, name="demo key")
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(key + "\n")
    return key
