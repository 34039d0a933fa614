"""The compiled, immutable form of a config: what the request path reads.

Built once per config load (routes and allow-lists resolved into dicts and compiled globs), then
swapped in whole; a request holds the snapshot it started with until it ends.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from sluicegate.config.model import AuditConfig, GatewayConfig, ModelConfig, ServerConfig
from sluicegate.providers.base import Provider, provider_types


def is_glob(name: str) -> bool:
    """Whether a model name in config is a pattern rather than one name."""
    return any(c in name for c in "*?[")


@dataclass(frozen=True, slots=True)
class Route:
    """Where one public model goes: its provider and the upstream's name for it."""

    name: str
    provider: Provider
    upstream_model: str | None
    config: ModelConfig


@dataclass(frozen=True, slots=True)
class Consumer:
    """A consumer as the request path sees it: a name and a resolved model allow-list."""

    name: str
    allowed: frozenset[str]
    allowed_globs: tuple[re.Pattern[str], ...]
    allow_all: bool = False

    def may_use(self, model: str) -> bool:
        """Whether this consumer's allow-list covers `model`."""
        if self.allow_all or model in self.allowed:
            return True
        return any(p.match(model) for p in self.allowed_globs)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One loaded configuration, compiled for lookups."""

    config: GatewayConfig
    providers: dict[str, Provider]
    routes: dict[str, Route]
    route_globs: tuple[tuple[re.Pattern[str], Route], ...]
    consumers: dict[str, Consumer]
    server: ServerConfig
    audit: AuditConfig
    source: str

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
        """Exact model names this consumer may use, in config order."""
        return [name for name in self.routes if consumer.may_use(name)]


def _compile_glob(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern))


def build_snapshot(config: GatewayConfig, source: str = "") -> Snapshot:
    """Compile a validated config (see `loader.validate`, which checks every cross-reference)."""
    types = provider_types()
    providers: dict[str, Provider] = {}
    for p in config.providers:
        ptype = types[p.type]
        providers[p.name] = ptype.factory(p, ptype.preset)
    routes: dict[str, Route] = {}
    globs: list[tuple[re.Pattern[str], Route]] = []
    for m in config.models:
        route = Route(m.name, providers[m.provider], m.model, m)
        if is_glob(m.name):
            globs.append((_compile_glob(m.name), route))
        else:
            routes[m.name] = route
    consumers: dict[str, Consumer] = {}
    for c in config.consumers:
        exact = frozenset(name for name in c.models if not is_glob(name))
        patterns = tuple(_compile_glob(name) for name in c.models if is_glob(name))
        consumers[c.name] = Consumer(c.name, exact, patterns, allow_all="*" in c.models)
    return Snapshot(
        config=config,
        providers=providers,
        routes=routes,
        route_globs=tuple(globs),
        consumers=consumers,
        server=config.server,
        audit=config.audit,
        source=source,
    )
