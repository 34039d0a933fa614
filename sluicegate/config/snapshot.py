"""The compiled, immutable form of a config: what the request path reads.

Built once per config load (routes and allow-lists resolved into dicts and compiled globs), then
swapped in whole; a request holds the snapshot it started with until it ends.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from sluicegate.config.model import AccessRules, AuditConfig, GatewayConfig, GroupConfig, ModelConfig, ServerConfig
from sluicegate.config.rules import (
    IPNetwork,
    NameMatcher,
    TimeWindow,
    is_glob,
    parse_network,
    parse_time_window,
)
from sluicegate.providers.base import Provider, provider_type
from sluicegate.routing.config import TargetConfig
from sluicegate.routing.rules import Choice, Pins, compile_match, compile_pin


@dataclass(frozen=True, slots=True)
class Route:
    """Where one public model goes: its provider and the upstream's name for it.

    A model with several `targets` has one `Route` per target in `targets` (the router picks one
    per call and falls back to the others); the route itself names its first target by priority and
    weight, which is what the stages before the router see."""

    name: str
    provider: Provider
    upstream_model: str | None
    config: ModelConfig
    targets: tuple[Route, ...] = ()
    weight: float = 1.0
    priority: int = 0
    #: a target's place in its route's `targets`
    index: int = 0
    #: how `targets` are ordered per call (`routing.strategies`)
    strategy: str = "priority"
    #: a target's own time to begin its answer, per attempt (None: the provider's timeouts)
    timeout_s: float | None = None
    #: a target's cap on the output tokens a call may ask for
    max_tokens: int | None = None
    #: the model's content-aware rules, in order (`routing.rules.Choice`)
    rules: tuple[Choice, ...] = ()


@dataclass(frozen=True, slots=True, eq=False)
class Consumer:
    """A consumer as the request path sees it: its rules and its groups' rules, combined.

    Every restriction keeps the id of the rule it came from (`groups.eng.time_windows`), which
    refusals and audit events name.
    """

    name: str
    groups: tuple[str, ...]
    models: NameMatcher
    models_rule: str
    #: None: any provider, any endpoint
    providers: NameMatcher | None = None
    providers_rule: str = ""
    endpoints: frozenset[str] | None = None
    endpoints_rule: str = ""
    time_windows: tuple[TimeWindow, ...] | None = None
    time_windows_rule: str = ""
    source_ips: tuple[IPNetwork, ...] | None = None
    source_ips_rule: str = ""
    max_tokens: int | None = None
    max_tokens_rule: str = ""
    allow_streaming: bool | None = None
    allow_streaming_rule: str = ""
    #: guard names from the consumer and its groups
    guards: tuple[str, ...] = ()

    def may_use(self, model: str) -> bool:
        """Whether this consumer's model allow-list covers `model`."""
        return self.models(model)

    def may_use_provider(self, provider: str) -> bool:
        """Whether this consumer's provider allow-list (if any) covers `provider`."""
        return self.providers is None or self.providers(provider)


def compile_consumer(name: str, own: AccessRules | None, own_rule: str, groups: Sequence[GroupConfig]) -> Consumer:
    """Combine a consumer's rules with its groups' (allow-lists: union; restrictions: first set)."""
    layers: list[tuple[str, AccessRules]] = [(own_rule, own)] if own is not None else []
    layers += [(f"groups.{g.name}", g) for g in groups]
    models = [m for _, rules in layers for m in rules.models]
    providers = [p for _, rules in layers for p in rules.providers]
    endpoints = {e for _, rules in layers for e in rules.endpoints}
    guards = tuple(dict.fromkeys(g for _, rules in layers for g in rules.guards))
    fields: dict[str, object] = {}
    for name_ in ("time_windows", "source_ips", "max_tokens", "allow_streaming"):
        for rule, rules in layers:
            value = getattr(rules, name_)
            if value is not None:
                if name_ == "time_windows":
                    value = tuple(parse_time_window(w) for w in value)
                elif name_ == "source_ips":
                    value = tuple(parse_network(n) for n in value)
                fields[name_] = value
                fields[f"{name_}_rule"] = f"{rule}.{name_}"
                break

    def rule_of(kind: str) -> str:
        return " + ".join(f"{rule}.{kind}" for rule, _ in layers) or f"{own_rule}.{kind}"

    return Consumer(
        name=name,
        groups=tuple(g.name for g in groups),
        models=NameMatcher(models),
        models_rule=rule_of("models"),
        providers=NameMatcher(providers) if providers else None,
        providers_rule=rule_of("providers"),
        endpoints=frozenset(endpoints) if endpoints else None,
        endpoints_rule=rule_of("endpoints"),
        guards=guards,
        **fields,  # type: ignore[arg-type]
    )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One loaded configuration, compiled for lookups."""

    config: GatewayConfig
    providers: dict[str, Provider]
    routes: dict[str, Route]
    route_globs: tuple[tuple[re.Pattern[str], Route], ...]
    consumers: dict[str, Consumer]
    groups: dict[str, GroupConfig]
    server: ServerConfig
    audit: AuditConfig
    source: str
    #: `routing.pins`, compiled (None: there are none)
    pins: Pins | None = None
    _by_groups: dict[tuple[str, tuple[str, ...]], Consumer] = field(default_factory=dict)

    def route_for(self, model: str) -> Route | None:
        """The route of a public model name: exact names first, then globs in config order."""
        route = self.routes.get(model)
        if route is not None:
            return route
        for pattern, glob_route in self.route_globs:
            if pattern.match(model):
                return glob_route
        return None

    def models_for(self, consumer: Consumer) -> list[str]:
        """Exact model names this consumer may use (model and provider rules), in config order."""
        return [
            name
            for name, route in self.routes.items()
            if consumer.may_use(name) and consumer.may_use_provider(route.provider.name)
        ]

    def consumer_for_groups(self, name: str, groups: Sequence[str]) -> Consumer | None:
        """A consumer made of groups' rules alone (a JWT mapped to groups); None if no group is known."""
        known = tuple(dict.fromkeys(g for g in groups if g in self.groups))
        if not known:
            return None
        key = (name, known)
        consumer = self._by_groups.get(key)
        if consumer is None:
            if len(self._by_groups) > 10_000:
                self._by_groups.clear()
            consumer = compile_consumer(name, None, "", [self.groups[g] for g in known])
            self._by_groups[key] = consumer
        return consumer


def _route(m: ModelConfig, providers: dict[str, Provider]) -> Route:
    rules = tuple(
        Choice(f"models.{m.name}.when.{rule.name}", match, _targets(m, rule.targets, rule.strategy, providers))
        for rule in m.when
        if (match := compile_match(rule)) is not None
    )
    if m.targets is None:
        assert m.provider is not None
        return Route(m.name, providers[m.provider], m.model, m, strategy=m.strategy, rules=rules)
    return replace(_targets(m, m.targets, None, providers), rules=rules)


def _targets(
    m: ModelConfig, configs: Sequence[TargetConfig], strategy: str | None, providers: dict[str, Provider]
) -> Route:
    """The route of a list of targets: it names the first by priority and weight."""
    targets = tuple(
        Route(
            m.name,
            providers[t.provider],
            t.model or m.model,
            m,
            weight=t.weight,
            priority=t.priority,
            index=i,
            timeout_s=t.timeout_s,
            max_tokens=t.max_tokens,
        )
        for i, t in enumerate(configs)
    )
    first = min(targets, key=lambda t: (t.priority, -t.weight, t.index))
    return Route(m.name, first.provider, first.upstream_model, m, targets=targets, strategy=strategy or m.strategy)


def _compile_glob(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern))


def build_snapshot(config: GatewayConfig, source: str = "") -> Snapshot:
    """Compile a validated config (see `loader.validate`, which checks every cross-reference)."""
    providers: dict[str, Provider] = {}
    for p in config.providers:
        ptype = provider_type(p.type)
        if ptype is None:
            raise KeyError(p.type)
        providers[p.name] = ptype.factory(p, ptype.preset)
    routes: dict[str, Route] = {}
    globs: list[tuple[re.Pattern[str], Route]] = []
    for m in config.models:
        route = _route(m, providers)
        if is_glob(m.name):
            globs.append((_compile_glob(m.name), route))
        else:
            routes[m.name] = route
    groups = {g.name: g for g in config.groups}
    consumers = {
        c.name: compile_consumer(c.name, c, f"consumers.{c.name}", [groups[g] for g in c.groups if g in groups])
        for c in config.consumers
    }
    return Snapshot(
        config=config,
        providers=providers,
        routes=routes,
        route_globs=tuple(globs),
        consumers=consumers,
        groups=groups,
        server=config.server,
        audit=config.audit,
        source=source,
        pins=Pins([compile_pin(p) for p in config.routing.pins]) if config.routing.pins else None,
    )
