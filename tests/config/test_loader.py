"""Config validation: every error reported with its path (and line), nothing half-applied."""

from __future__ import annotations

import textwrap

import pytest

from sluicegate.config.loader import ConfigInvalid, load_config, parse_config

GOOD = """\
providers:
  - name: openai
    type: openai
    api_key: env://SOME_KEY_FOR_TESTS
  - name: local
    type: ollama
models:
  - name: gpt-4o
    provider: openai
  - name: llama
    provider: local
    model: llama3.2
  - name: "claude-*"
    provider: local
consumers:
  - name: a
    models: [gpt-4o]
  - name: b
    models: ["*"]
  - name: c
    models: [claude-3-haiku, llama]
"""


def messages(text: str) -> list[str]:
    _, issues = parse_config(textwrap.dedent(text))
    return [str(i) for i in issues if not i.warning]


def test_good_config_compiles() -> None:
    snapshot, issues = parse_config(GOOD)
    assert snapshot is not None
    assert [str(i) for i in issues] == [
        "providers[0].api_key (line 4): warning: environment variable SOME_KEY_FOR_TESTS is not set"
    ]
    assert snapshot.route_for("gpt-4o").provider.base_url == "https://api.openai.com/v1"  # type: ignore[union-attr]
    assert snapshot.route_for("claude-3-opus").provider.name == "local"  # type: ignore[union-attr]
    assert snapshot.route_for("nope") is None
    assert snapshot.providers["local"].base_url == "http://127.0.0.1:11434/v1"
    assert snapshot.consumers["a"].may_use("gpt-4o") and not snapshot.consumers["a"].may_use("llama")
    assert snapshot.consumers["b"].may_use("anything")


def test_unknown_model_in_a_consumer_names_its_path_and_line() -> None:
    bad = GOOD.replace("models: [claude-3-haiku, llama]", "models: [gtp-4o]")
    assert messages(bad) == ["consumers[2].models[0] (line 21): unknown model 'gtp-4o'"]


def test_every_error_is_reported_at_once() -> None:
    bad = """\
    providers:
      - name: openai
        type: opneai
        api_key: sk-live-literal-key
      - name: openai
        type: openai
        api_key: sk-live-literal-key
      - name: x
        type: openai_compatible
    models:
      - name: m
        provider: nowhere
      - name: m
        provider: openai
    consumers:
      - name: a
        models: [zzz]
    """
    got = messages(bad)
    assert "providers[0].type (line 3): unknown provider type 'opneai' (known: " in got[0]
    assert "providers[1].api_key (line 7): must be a secret reference (env://, file://" in got[2]
    assert got[2].endswith("never the key itself")
    del got[2]
    assert got[1:] == [
        "providers[1].name (line 5): duplicate provider name 'openai'",
        "providers[2].base_url (line 8): provider type 'openai_compatible' needs a base_url",
        "models[0].provider (line 12): unknown provider 'nowhere'",
        "models[1].name (line 13): duplicate model name 'm'",
        "consumers[0].models[0] (line 17): unknown model 'zzz'",
    ]


def test_literal_key_never_appears_in_the_error() -> None:
    bad = GOOD.replace("env://SOME_KEY_FOR_TESTS", "sk-proj-abcdef123456")
    assert not any("sk-proj" in m for m in messages(bad))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("providers: {}\n", "providers (line 1): Input should be a valid list"),
        ("providers:\n  - name: a\n    type: openai\n    colour: red\n", "providers[0].colour (line 4): unknown key"),
        ("models:\n  - provider: a\n", "models[0].name (line 2): required key is missing"),
        ("server:\n  max_body_bytes: -1\n", "server.max_body_bytes (line 2): Input should be greater than 0"),
        ("providers: [\n", "<root> (line 2): not valid YAML: expected the node content, but found '<stream end>'"),
        ("- a\n- b\n", "<root>: the config must be a mapping at its top level"),
        (
            "providers:\n  - name: p\n    type: openai_compatible\n    base_url: ftp://x\n",
            "providers[0].base_url (line 4): not an http(s) URL: 'ftp://x'",
        ),
    ],
)
def test_field_errors(text: str, expected: str) -> None:
    got = messages(text)
    assert got and got[0].startswith(expected), got


def test_load_config_raises_with_every_issue(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "c.yaml"  # type: ignore[operator]
    path.write_text("models:\n  - name: a\n    provider: b\n")
    with pytest.raises(ConfigInvalid) as info:
        load_config(path)
    assert [str(i) for i in info.value.issues] == ["models[0].provider (line 3): unknown provider 'b'"]
    with pytest.raises(ConfigInvalid, match="cannot read the file"):
        load_config(tmp_path / "missing.yaml")  # type: ignore[operator]


def test_empty_file_is_a_valid_empty_config() -> None:
    snapshot, issues = parse_config("")
    assert snapshot is not None and not issues and not snapshot.routes
