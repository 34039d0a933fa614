"""Host patterns match by labels, the shipped AI host list is dated and valid, and the `egress:`
config refuses what cannot work."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError

from sluicegate.egress.config import EgressConfig
from sluicegate.egress.hosts import HostPolicy, HostTable, normalise, parse_pattern, shipped_ai_hosts


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("api.openai.com", "api.openai.com", True),
        ("api.openai.com", "api.openai.com.evil.test", False),
        ("api.openai.com", "xapi.openai.com", False),
        ("*.openai.azure.com", "myres.openai.azure.com", True),
        ("*.openai.azure.com", "a.b.openai.azure.com", True),
        ("*.openai.azure.com", "openai.azure.com", False),
        ("*.openai.azure.com", "myres.openai.azure.com.evil.test", False),
        ("*.openai.azure.com", "evilopenai.azure.com", False),
        ("bedrock-runtime.*.amazonaws.com", "bedrock-runtime.us-east-1.amazonaws.com", True),
        ("bedrock-runtime.*.amazonaws.com", "bedrock-runtime.a.b.amazonaws.com", False),
        ("bedrock-runtime.*.amazonaws.com", "bedrock-runtime.amazonaws.com", False),
        ("*-aiplatform.googleapis.com", "europe-west4-aiplatform.googleapis.com", True),
        ("*-aiplatform.googleapis.com", "aiplatform.googleapis.com", False),
    ],
    ids=lambda v: str(v),
)
def test_patterns_match_by_labels(pattern: str, host: str, matches: bool) -> None:
    table = HostTable([(pattern, True)])
    assert (table.get(host) is not None) is matches


@pytest.mark.parametrize("text", ["", "*", "*.com", "exa mple.com", "a..b", "http://x.test", "x.test/path"])
def test_bad_patterns_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_pattern(text)


def test_names_are_normalised() -> None:
    assert normalise("API.OpenAI.com.") == "api.openai.com"
    assert normalise("[::1]") == "::1"
    assert normalise("bad_host name") is None


def test_the_shipped_list_is_dated_and_names_the_providers() -> None:
    shipped = shipped_ai_hosts()
    assert isinstance(shipped.updated, dt.date) and shipped.updated.year >= 2026
    table = HostTable(shipped.entries)
    hosts = ("api.openai.com", "api.anthropic.com", "x.openai.azure.com", "bedrock-runtime.eu-west-1.amazonaws.com")
    for host in hosts:
        assert table.get(host) is not None, host
    assert table.get("example.com") is None


def test_the_lists_come_before_the_ai_hosts_and_the_default() -> None:
    policy = HostPolicy(
        EgressConfig(deny=["*.evil.test"], allow=["evil.test", "*.ok.test"], extra_ai_hosts=["llm.corp.test"])
    )
    assert policy.decide("x.evil.test").action == "deny"
    assert policy.decide("evil.test").action == "allow"
    assert policy.decide("api.anthropic.com").action == "block"
    assert policy.decide("llm.corp.test").rule == "egress.ai_hosts"
    assert policy.decide("unknown.test").action == "allow"


def test_the_config_refuses_what_cannot_work() -> None:
    with pytest.raises(ValidationError, match=r"egress\.ca"):
        EgressConfig(intercept=["api.openai.com"])
    with pytest.raises(ValidationError, match=r"egress\.ca"):
        EgressConfig(ai_hosts="intercept")
    with pytest.raises(ValidationError, match="not an IP network"):
        EgressConfig(source_networks=["10.0.0.0/33"])
    with pytest.raises(ValidationError, match="address:port"):
        EgressConfig(resolve={"api.openai.com": "127.0.0.1"})
    with pytest.raises(ValidationError, match="not a host name"):
        EgressConfig(resolve={"*.openai.com": "127.0.0.1:443"})
    with pytest.raises(ValidationError, match="renew_before_h"):
        EgressConfig.model_validate({"ca": {"cert": "env://C", "key": "env://K", "renew_before_h": 30}})


def test_every_egress_setting_is_documented() -> None:
    import re
    from pathlib import Path

    from sluicegate.config.loader import parse_config
    from sluicegate.egress.config import EgressCAConfig

    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "egress.md").read_text()
    example = (root / "examples" / "sluicegate.yaml").read_text()
    assert "docs/egress.md" in (root / "README.md").read_text()
    for model in (EgressConfig, EgressCAConfig):
        for field in model.model_fields:
            assert f"`{field}`" in doc or f"`ca.{field}`" in doc, field
            assert f"{field}:" in example, field
    blocks = re.findall(r"```yaml\n(.*?)```", doc, re.S)
    assert blocks
    for block in blocks:
        snapshot, issues = parse_config(block)
        assert snapshot is not None, (block, [str(i) for i in issues])


def test_a_network_consumer_must_be_configured() -> None:
    from sluicegate.config.loader import parse_config

    text = "consumers:\n  - {name: bots}\negress:\n  network_consumers: {10.0.0.0/8: bots, 10.1.0.0/16: ghost}\n"
    snapshot, issues = parse_config(text)
    assert snapshot is None
    assert [str(i) for i in issues] == ["egress.network_consumers.10.1.0.0/16 (line 4): unknown consumer 'ghost'"]
