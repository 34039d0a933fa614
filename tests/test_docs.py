"""Docs are tested: the example config is valid, every provider type and CLI command is documented."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from sluicegate.cli import main
from sluicegate.config.loader import parse_config
from sluicegate.config.model import AuditConfig, ServerConfig, Timeouts
from sluicegate.providers import provider_types

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_example_config_is_valid() -> None:
    snapshot, issues = parse_config((ROOT / "examples" / "sluicegate.yaml").read_text())
    assert snapshot is not None, [str(i) for i in issues]
    assert all(i.warning for i in issues)


def test_readme_yaml_blocks_are_valid_configs() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", README, re.S)
    assert blocks
    for block in blocks:
        snapshot, issues = parse_config(block)
        assert snapshot is not None, (block, [str(i) for i in issues])


def test_every_provider_type_is_documented() -> None:
    for name in provider_types():
        assert f"`{name}`" in README, name


def test_every_setting_is_documented() -> None:
    from sluicegate.limits.config import (
        AlertsConfig,
        BudgetConfig,
        LimitsConfig,
        PriceConfig,
        RateLimitConfig,
        RedisLimitsConfig,
    )

    example = (ROOT / "examples" / "sluicegate.yaml").read_text()
    for model in (
        ServerConfig,
        AuditConfig,
        Timeouts,
        LimitsConfig,
        BudgetConfig,
        RateLimitConfig,
        RedisLimitsConfig,
        AlertsConfig,
        PriceConfig,
    ):
        for field in model.model_fields:
            assert field in example and f"`{field}`" in README, field


def test_every_tracing_and_logging_setting_is_documented() -> None:
    from sluicegate.observability.config import LoggingConfig, TracingConfig

    example = (ROOT / "examples" / "sluicegate.yaml").read_text()
    for model, page in ((TracingConfig, "tracing.md"), (LoggingConfig, "logging.md")):
        doc = (ROOT / "docs" / page).read_text()
        assert f"docs/{page}" in README, page
        for field in model.model_fields:
            assert f"`{field}`" in doc and f"{field}:" in example, (model.__name__, field)
        blocks = re.findall(r"```yaml\n(.*?)```", doc, re.S)
        assert blocks, page
        for block in blocks:
            snapshot, issues = parse_config(block)
            assert snapshot is not None, (block, [str(i) for i in issues])


def test_every_audit_sink_kind_and_setting_is_documented() -> None:
    from sluicegate.audit.sink_config import JsonlSinkConfig, OtlpSinkConfig, WebhookSinkConfig
    from sluicegate.audit.sinks import SINK_KINDS

    example = (ROOT / "examples" / "sluicegate.yaml").read_text()
    sinks_doc = (ROOT / "docs" / "audit.md").read_text().partition("\n## Sinks\n")[2].partition("\n## ")[0]
    assert set(SINK_KINDS) == {"jsonl", "webhook", "otlp"}
    for kind in SINK_KINDS:
        assert f"`{kind}`" in sinks_doc and f"type: {kind}" in example, kind
    for model in (JsonlSinkConfig, WebhookSinkConfig, OtlpSinkConfig):
        for field in model.model_fields:
            assert f"`{field}`" in sinks_doc or field == "type", (model.__name__, field)
            assert f"{field}:" in example, (model.__name__, field)
    for block in re.findall(r"```yaml\n(.*?)```", sinks_doc, re.S):
        snapshot, issues = parse_config(block)
        assert snapshot is not None, (block, [str(i) for i in issues])


def test_every_metrics_and_admin_setting_is_documented() -> None:
    from sluicegate.admin.config import AdminConfig
    from sluicegate.observability.config import MetricsConfig

    example = (ROOT / "examples" / "sluicegate.yaml").read_text()
    doc = (ROOT / "docs" / "metrics.md").read_text()
    assert "docs/metrics.md" in README and "docs/grafana/sluicegate-dashboard.json" in README
    for model in (MetricsConfig, AdminConfig):
        for field in model.model_fields:
            assert f"`{field}`" in doc and f"`{field}`" in README and f"{field}:" in example, (model.__name__, field)
    # The page's config blocks are valid (its Prometheus scrape config is not a gateway config).
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", doc, re.S) if "scrape_configs" not in b]
    assert blocks
    for block in blocks:
        snapshot, issues = parse_config(block)
        assert snapshot is not None, (block, [str(i) for i in issues])


def test_every_guard_kind_and_guard_setting_is_documented() -> None:
    from sluicegate.config.model import GuardConfig
    from sluicegate.guardrails.base import guard_kinds

    for kind in guard_kinds():
        assert f"`{kind}`" in README, kind
    for name in GuardConfig.model_fields:
        assert f"`{name}`" in README, name


def test_every_cli_command_is_documented() -> None:
    runner = CliRunner()
    for group, commands in {"": main.commands}.items():
        for name, command in commands.items():
            assert f"sluicegate {name}" in README, name
            sub = getattr(command, "commands", {})
            for subname in sub:
                assert f"sluicegate {name} {subname}" in README, f"{group} {name} {subname}"
    assert runner.invoke(main, ["--help"]).exit_code == 0


def test_every_cache_setting_is_documented() -> None:
    from sluicegate.cache.config import CacheConfig, CacheRule, RedisCacheConfig, SemanticConfig

    example = (ROOT / "examples" / "sluicegate.yaml").read_text()
    doc = (ROOT / "docs" / "cache.md").read_text()
    assert "docs/cache.md" in README
    for model in (CacheConfig, CacheRule, RedisCacheConfig, SemanticConfig):
        for field in model.model_fields:
            assert f"`{field}`" in doc and f"{field}:" in example, (model.__name__, field)
    blocks = re.findall(r"```yaml\n(.*?)```", doc, re.S)
    assert blocks
    for block in blocks:
        snapshot, issues = parse_config(block)
        assert snapshot is not None, (block, [str(i) for i in issues])


def test_every_routing_setting_is_documented() -> None:
    from sluicegate.routing.config import (
        BreakerConfig,
        PinConfig,
        RetryConfig,
        RouteRule,
        RoutingSettings,
        TargetConfig,
    )

    example = (ROOT / "examples" / "sluicegate.yaml").read_text()
    doc = (ROOT / "docs" / "routing.md").read_text()
    assert "docs/routing.md" in README
    for model in (TargetConfig, RetryConfig, BreakerConfig, RoutingSettings, RouteRule, PinConfig):
        for field in model.model_fields:
            assert f"`{field}`" in doc and f"{field}:" in example, (model.__name__, field)
    for field in ("targets", "strategy", "fallback_on_status", "retry", "breaker", "when", "timeout_s", "region"):
        assert f"`{field}`" in doc and f"{field}:" in example, field
    blocks = re.findall(r"```yaml\n(.*?)```", doc, re.S)
    assert blocks
    for block in blocks:
        snapshot, issues = parse_config(block)
        assert snapshot is not None, (block, [str(i) for i in issues])
