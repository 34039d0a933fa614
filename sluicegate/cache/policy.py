"""Which policy applies to a call: the first `cache.rules` entry that names it, over the default.

Compiled once per config; the policy of a (consumer, model) pair is kept, so a call pays one dict
lookup."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sluicegate.config.rules import NameMatcher

if TYPE_CHECKING:
    from sluicegate.cache.config import CacheConfig, CacheRule, Scope
    from sluicegate.config.snapshot import Consumer


@dataclass(frozen=True, slots=True)
class Policy:
    """What the cache does for one call (every field settled)."""

    enabled: bool
    ttl_s: float
    scope: Scope
    cacheable: str
    max_entry_bytes: int
    charge: str
    semantic: bool
    #: the id of the rule it came from (`cache.rules[2]`, or `cache.default`)
    rule: str
    #: the group a `group` scope shares within (the rule's group the consumer is in, else its first)
    group: str | None = None


class Policies:
    """The compiled `cache:` rules of one config."""

    def __init__(self, config: CacheConfig) -> None:
        self.config = config
        default = config.default
        self._rules = [
            (
                NameMatcher(rule.consumers) if rule.consumers is not None else None,
                NameMatcher(rule.groups) if rule.groups is not None else None,
                NameMatcher(rule.models) if rule.models is not None else None,
                rule,
                f"cache.rules[{i}]",
            )
            for i, rule in enumerate(config.rules)
        ]
        self._default = self._settle(None, "cache.default", None)
        assert default.enabled is not None
        self._memo: dict[tuple[str, tuple[str, ...], str], Policy] = {}

    def _settle(self, rule: CacheRule | None, rule_id: str, group: str | None) -> Policy:
        base = self.config.default
        values = {}
        for name in ("enabled", "ttl_s", "scope", "cacheable", "max_entry_bytes", "charge", "semantic"):
            value = getattr(rule, name) if rule is not None else None
            values[name] = value if value is not None else getattr(base, name)
        return Policy(**values, rule=rule_id, group=group)

    def for_call(self, consumer: Consumer, model: str) -> Policy:
        key = (consumer.name, consumer.groups, model)
        found = self._memo.get(key)
        if found is None:
            if len(self._memo) > 10_000:
                self._memo.clear()
            found = self._memo[key] = self._match(consumer, model)
        return found

    def _match(self, consumer: Consumer, model: str) -> Policy:
        for consumers, groups, models, rule, rule_id in self._rules:
            if consumers is not None and not consumers(consumer.name):
                continue
            matched = None
            if groups is not None:
                matched = next((g for g in consumer.groups if groups(g)), None)
                if matched is None:
                    continue
            if models is not None and not models(model):
                continue
            group = matched or (consumer.groups[0] if consumer.groups else None)
            return self._settle(rule, rule_id, group)
        if consumer.groups:
            return self._settle(None, "cache.default", consumer.groups[0])
        return self._default
