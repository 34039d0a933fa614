"""Load a YAML config, validate it whole, and report every error with its path and line.

`load_config` either returns a compiled `Snapshot` or raises `ConfigInvalid` listing all the
problems (`consumers[2].models[0]: unknown model 'gtp-4o'`); nothing is half-applied.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from sluicegate.config.model import ConsumerConfig, GatewayConfig, GroupConfig, VaultConfig
from sluicegate.config.rules import RuleError, is_glob, parse_network, parse_time_window
from sluicegate.config.snapshot import Snapshot, build_snapshot
from sluicegate.limits.prices import PriceBook
from sluicegate.providers.base import provider_type, provider_types
from sluicegate.routing.config import Condition
from sluicegate.vault import SECRET_SCHEMES, Vault
from sluicegate.vault.refs import env_name_problem, is_credential_header, looks_like_credential, parse_ref

PathPart = str | int
_NO_VAULT = Vault()


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config, located by its path in the document (and line, when known)."""

    path: tuple[PathPart, ...]
    message: str
    line: int | None = None
    warning: bool = False

    def where(self) -> str:
        """The path in the `consumers[2].models[0]` form."""
        return format_path(self.path)

    def __str__(self) -> str:
        at = f" (line {self.line})" if self.line else ""
        kind = "warning: " if self.warning else ""
        return f"{self.where() or '<root>'}{at}: {kind}{self.message}"


class ConfigInvalid(Exception):
    """A config that cannot be applied; `issues` lists every error found."""

    def __init__(self, source: str, issues: Sequence[ConfigIssue]) -> None:
        self.source = source
        self.issues = list(issues)
        lines = "\n".join(f"  {issue}" for issue in self.issues)
        super().__init__(f"invalid config {source}:\n{lines}")


def format_path(path: Iterable[PathPart]) -> str:
    """('consumers', 2, 'models', 0) -> 'consumers[2].models[0]'."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def load_config(path: str | Path) -> Snapshot:
    """Read, validate and compile a config file; raise `ConfigInvalid` on any error."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigInvalid(source, [ConfigIssue((), f"cannot read the file: {exc.strerror or exc}")]) from None
    snapshot, issues = parse_config(text, source)
    errors = [i for i in issues if not i.warning]
    if snapshot is None or errors:
        raise ConfigInvalid(source, errors)
    return snapshot


def parse_config(text: str, source: str = "<config>") -> tuple[Snapshot | None, list[ConfigIssue]]:
    """Validate a YAML document; return the snapshot (None on errors) and every issue found."""
    import yaml  # here: a gateway built from a config object (demo mode) never parses YAML

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        return None, [ConfigIssue((), f"not valid YAML: {getattr(exc, 'problem', None) or exc}", line)]
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return None, [ConfigIssue((), "the config must be a mapping at its top level")]
    lines = _LineIndex(text)
    try:
        config = GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        return None, [ConfigIssue(i.path, i.message, lines.line_of(i.path)) for i in validation_issues((), exc)]
    issues = [
        ConfigIssue(issue.path, issue.message, lines.line_of(issue.path), issue.warning)
        for issue in check_references(config)
    ]
    if any(not i.warning for i in issues):
        return None, issues
    return build_snapshot(config, source), issues


def validation_issues(at: tuple[PathPart, ...], exc: ValidationError) -> list[ConfigIssue]:
    """A pydantic validation error as config issues under the path `at`."""
    return [ConfigIssue((*at, *err["loc"]), _pydantic_message(err)) for err in exc.errors()]


def _pydantic_message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    return str(err["msg"])


def check_references(config: GatewayConfig) -> list[ConfigIssue]:
    """Every cross-reference and value problem pydantic's field checks cannot see."""
    issues: list[ConfigIssue] = []
    seen: set[str] = set()
    if config.vault.hashicorp is not None:
        token_at: tuple[PathPart, ...] = ("vault", "hashicorp", "token")
        if config.vault.hashicorp.token.startswith("vault://"):
            issues.append(ConfigIssue(token_at, "the Vault token cannot itself live in Vault"))
        else:
            issues.extend(_check_secret_ref(config.vault.hashicorp.token, token_at, config.vault))
    for i, p in enumerate(config.providers):
        at: tuple[PathPart, ...] = ("providers", i)
        if p.name in seen:
            issues.append(ConfigIssue((*at, "name"), f"duplicate provider name '{p.name}'"))
        seen.add(p.name)
        ptype = provider_type(p.type)
        if ptype is None:
            known = ", ".join(sorted(provider_types()))
            issues.append(ConfigIssue((*at, "type"), f"unknown provider type '{p.type}' (known: {known})"))
            continue
        base_url = p.base_url or ptype.preset.base_url
        if not base_url:
            issues.append(ConfigIssue((*at, "base_url"), f"provider type '{p.type}' needs a base_url"))
        elif urlsplit(base_url).scheme not in ("http", "https") or not urlsplit(base_url).hostname:
            issues.append(ConfigIssue((*at, "base_url"), f"not an http(s) URL: '{base_url}'"))
        options_model = getattr(ptype.factory, "Options", None)
        if options_model is not None:
            try:
                options_model.model_validate(p.options)
            except ValidationError as exc:
                issues.extend(validation_issues((*at, "options"), exc))
        elif p.options:
            issues.append(ConfigIssue((*at, "options"), f"provider type '{p.type}' takes no options"))
        if p.api_key is None or p.api_key == []:
            if ptype.preset.needs_key:
                issues.append(ConfigIssue((*at, "api_key"), f"provider type '{p.type}' needs an api_key reference"))
        elif isinstance(p.api_key, str):
            issues.extend(_check_secret_ref(p.api_key, (*at, "api_key"), config.vault))
        else:
            for j, ref in enumerate(p.api_key):
                issues.extend(_check_secret_ref(ref, (*at, "api_key", j), config.vault))
        for name, value in p.headers.items():
            issues.extend(_check_header(name, value, (*at, "headers", name), config.vault))
    # The trace exporter's headers follow the providers' rule: a credential only as a reference.
    for name, value in config.observability.tracing.headers.items():
        issues.extend(_check_header(name, value, ("observability", "tracing", "headers", name), config.vault))
    # And the audit sinks': a webhook URL may itself be a reference (a URL that holds a token).
    for i, sink in enumerate(config.audit.sinks):
        sink_headers: dict[str, str] = getattr(sink, "headers", {})
        for name, value in sink_headers.items():
            issues.extend(_check_header(name, value, ("audit", "sinks", i, "headers", name), config.vault))
        url: str | None = getattr(sink, "url", None)
        if url is not None and parse_ref(url) is not None:
            issues.extend(_check_secret_ref(url, ("audit", "sinks", i, "url"), config.vault))
        elif url is not None and urlsplit(url).password:
            message = "the URL holds a password: keep the URL in a secret reference (env://AUDIT_HOOK_URL)"
            issues.append(ConfigIssue(("audit", "sinks", i, "url"), message, warning=True))
    names: set[str] = set()
    for i, m in enumerate(config.models):
        if m.name in names:
            issues.append(ConfigIssue(("models", i, "name"), f"duplicate model name '{m.name}'"))
        names.add(m.name)
        if (m.provider is None) == (m.targets is None):
            issues.append(ConfigIssue(("models", i), "a model names either a `provider` or its `targets`"))
        elif m.provider is not None and m.provider not in seen:
            issues.append(ConfigIssue(("models", i, "provider"), f"unknown provider '{m.provider}'"))
        for t, target in enumerate(m.targets or ()):
            if target.provider not in seen:
                message = f"unknown provider '{target.provider}'"
                issues.append(ConfigIssue(("models", i, "targets", t, "provider"), message))
    exact = {m.name for m in config.models if not is_glob(m.name)}
    globs = [m.name for m in config.models if is_glob(m.name)]
    issues.extend(_check_guards(config))
    group_names = {g.name for g in config.groups}
    sections: tuple[tuple[str, Sequence[GroupConfig | ConsumerConfig]], ...] = (
        ("groups", config.groups),
        ("consumers", config.consumers),
    )
    for kind, items in sections:
        declared: set[str] = set()
        for i, c in enumerate(items):
            at = (kind, i)
            if c.name in declared:
                issues.append(ConfigIssue((*at, "name"), f"duplicate {kind[:-1]} name '{c.name}'"))
            declared.add(c.name)
            for j, name in enumerate(c.models):
                if not (is_glob(name) or name in exact or any(_glob_match(g, name) for g in globs)):
                    issues.append(ConfigIssue((*at, "models", j), f"unknown model '{name}'"))
            for j, name in enumerate(c.providers):
                if not is_glob(name) and name not in seen:
                    issues.append(ConfigIssue((*at, "providers", j), f"unknown provider '{name}'"))
            for j, window in enumerate(c.time_windows or ()):
                try:
                    parse_time_window(window)
                except RuleError as exc:
                    issues.append(ConfigIssue((*at, "time_windows", j), str(exc)))
            for j, network in enumerate(c.source_ips or ()):
                try:
                    parse_network(network)
                except RuleError as exc:
                    issues.append(ConfigIssue((*at, "source_ips", j), str(exc)))
            for j, group in enumerate(c.groups if isinstance(c, ConsumerConfig) else ()):
                if group not in group_names:
                    issues.append(ConfigIssue((*at, "groups", j), f"unknown group '{group}'"))
    if config.jwt_issuers:
        # Imported here: auth.jwt imports this module, and PyJWT only when issuers are configured.
        from sluicegate.auth.jwt import check_jwt_issuers

        issues.extend(check_jwt_issuers(config))
    issues.extend(_check_limits(config, seen, group_names))
    issues.extend(_check_routing(config, seen, group_names))
    consumer_names = {c.name for c in config.consumers}
    for network, name in config.egress.network_consumers.items():
        if name not in consumer_names:
            issues.append(ConfigIssue(("egress", "network_consumers", network), f"unknown consumer '{name}'"))
    return issues


def _check_routing(config: GatewayConfig, providers: set[str], groups: set[str]) -> list[ConfigIssue]:
    """Content-aware rules and pins: the providers, guards, groups and consumers they name."""
    issues: list[ConfigIssue] = []
    readers = {g.name for g in config.guards if g.applies_to in ("input", "both")}
    every = {g.name for g in config.guards}

    def check_condition(at: tuple[PathPart, ...], condition: Condition) -> None:
        for j, name in enumerate(condition.found):
            if name not in every:
                issues.append(ConfigIssue((*at, "found", j), f"unknown guard '{name}'"))
            elif name not in readers:
                message = f"guard '{name}' does not read the input (`applies_to: output`): it can find nothing here"
                issues.append(ConfigIssue((*at, "found", j), message))

    for i, m in enumerate(config.models):
        names: set[str] = set()
        for r, rule in enumerate(m.when):
            at: tuple[PathPart, ...] = ("models", i, "when", r)
            if rule.name in names:
                issues.append(ConfigIssue((*at, "name"), f"duplicate rule name '{rule.name}'"))
            names.add(rule.name)
            if rule.is_empty():
                message = "a rule needs a condition: `found`, `labels` or `images`"
                issues.append(ConfigIssue(at, message))
            check_condition(at, rule)
            for t, target in enumerate(rule.targets):
                if target.provider not in providers:
                    message = f"unknown provider '{target.provider}'"
                    issues.append(ConfigIssue((*at, "targets", t, "provider"), message))
    consumers = {c.name for c in config.consumers}
    regions = {p.region for p in config.providers if p.region is not None}
    pins: set[str] = set()
    for i, pin in enumerate(config.routing.pins):
        at = ("routing", "pins", i)
        if pin.name in pins:
            issues.append(ConfigIssue((*at, "name"), f"duplicate pin name '{pin.name}'"))
        pins.add(pin.name)
        if not pin.providers and not pin.regions:
            issues.append(ConfigIssue(at, "a pin names the `providers` or `regions` it allows"))
        check_condition(at, pin)
        for j, name in enumerate(pin.providers):
            if not is_glob(name) and name not in providers:
                issues.append(ConfigIssue((*at, "providers", j), f"unknown provider '{name}'"))
        for j, name in enumerate(pin.groups):
            if name not in groups:
                issues.append(ConfigIssue((*at, "groups", j), f"unknown group '{name}'"))
        for j, name in enumerate(pin.consumers):
            if not is_glob(name) and name not in consumers:
                # Consumers of JWTs and of the API may not be in the file: a warning only.
                message = f"no consumer '{name}' in the config (one made later, by JWT or the API, matches)"
                issues.append(ConfigIssue((*at, "consumers", j), message, warning=True))
        for j, pattern in enumerate(pin.regions):
            if not any(_glob_match(pattern, region) for region in regions):
                message = f"no provider has a region matching '{pattern}': the pin allows none by it"
                issues.append(ConfigIssue((*at, "regions", j), message, warning=True))
    for j, header in enumerate(config.routing.deadline_headers):
        if not header or any(c not in _TOKEN_CHARS for c in header):
            issues.append(ConfigIssue(("routing", "deadline_headers", j), f"not a header name: '{header}'"))
    return issues


#: the characters of an HTTP header name (RFC 9110 `token`)
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _check_limits(config: GatewayConfig, providers: set[str], groups: set[str]) -> list[ConfigIssue]:
    """Budgets and rate limits that name what does not exist, and budgets nothing can price."""
    issues: list[ConfigIssue] = []
    limits = config.limits
    known = {
        "consumer": {c.name for c in config.consumers},
        "group": groups,
        "model": {m.name for m in config.models},
        "provider": providers,
    }
    rules = [("budgets", i, b.scope, b.match) for i, b in enumerate(limits.budgets)]
    rules += [("rate_limits", i, r.scope, r.match) for i, r in enumerate(limits.rate_limits)]
    for section, i, scope, match in rules:
        names = known.get(scope)
        if names is None:
            continue
        for j, name in enumerate(match):
            # A typo would leave the spend it was meant to bound unbounded: an error. Consumers made
            # from a JWT's groups (`jwt:...`) are not in the config.
            if not is_glob(name) and name not in names and not name.startswith("jwt:"):
                issues.append(ConfigIssue(("limits", section, i, "match", j), f"unknown {scope} '{name}'"))
    if limits.redis is not None and "://" in limits.redis.url:
        url = limits.redis.url
        if not url.startswith(("redis://", "rediss://", "unix://")):
            issues.extend(_check_secret_ref(url, ("limits", "redis", "url"), config.vault))
        elif urlsplit(url).password:
            issues.append(
                ConfigIssue(
                    ("limits", "redis", "url"),
                    "the Redis URL holds a password: keep it in a secret reference (env://REDIS_URL)",
                    warning=True,
                )
            )
    if limits.budgets:
        book = PriceBook(config)
        for i, m in enumerate(config.models):
            # A model of several targets is priced per target (each its upstream model).
            upstreams = [t.model or m.model or m.name for t in m.targets] if m.targets else [m.model or m.name]
            if not is_glob(m.name) and any(book.price_for(m, upstream) is None for upstream in upstreams):
                issues.append(
                    ConfigIssue(
                        ("models", i),
                        f"model '{m.name}' has no price (set `price:`): budgets count its calls as free",
                        warning=True,
                    )
                )
    return issues


def _check_guards(config: GatewayConfig) -> list[ConfigIssue]:
    """Guard kinds, settings (validated by each kind) and every reference to a guard by name."""
    from sluicegate.guardrails.base import GuardContext, guard_kind, guard_kind_names

    issues: list[ConfigIssue] = []
    names: set[str] = set()
    context = GuardContext(http=lambda: None, vault=_NO_VAULT, complete=_no_complete)
    for i, g in enumerate(config.guards):
        at: tuple[PathPart, ...] = ("guards", i)
        if g.name in names:
            issues.append(ConfigIssue((*at, "name"), f"duplicate guard name '{g.name}'"))
        names.add(g.name)
        kind = guard_kind(g.kind)
        if kind is None:
            issues.append(
                ConfigIssue((*at, "kind"), f"unknown guard kind '{g.kind}' (known: {', '.join(guard_kind_names())})")
            )
            continue
        try:
            settings = kind.cls.Settings.model_validate(g.settings)
            kind.cls(g, settings, context)
        except ValidationError as exc:
            issues.extend(validation_issues((*at, "settings"), exc))
        except (ValueError, TypeError) as exc:
            issues.append(ConfigIssue((*at, "settings"), str(exc)))
    refs: list[tuple[tuple[PathPart, ...], list[str]]] = [
        (("models", i, "guards"), m.guards) for i, m in enumerate(config.models)
    ]
    refs += [(("groups", i, "guards"), g.guards) for i, g in enumerate(config.groups)]
    refs += [(("consumers", i, "guards"), c.guards) for i, c in enumerate(config.consumers)]
    for at, guard_names in refs:
        for j, name in enumerate(guard_names):
            if name not in names:
                issues.append(ConfigIssue((*at, j), f"unknown guard '{name}'"))
    return issues


async def _no_complete(model: str, messages: list[dict[str, object]], max_tokens: int) -> str:
    raise RuntimeError("no model calls while a config is checked")


def _glob_match(pattern: str, name: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern)


def _check_secret_ref(ref: str, at: tuple[PathPart, ...], vault: VaultConfig | None = None) -> list[ConfigIssue]:
    """A secret reference's problems; no message quotes a value that may be a credential."""
    scheme, sep, rest = ref.partition("://")
    if not sep or scheme not in SECRET_SCHEMES:
        schemes = ", ".join(f"{s}://" for s in SECRET_SCHEMES)
        return [ConfigIssue(at, f"must be a secret reference ({schemes}), never the key itself")]
    if not rest or rest.startswith("#") or rest.endswith("#"):
        return [ConfigIssue(at, "the reference names nothing")]
    # A key pasted where its variable's name (or file, or secret name) belongs: refused unquoted.
    problem = env_name_problem(rest) if scheme == "env" else None
    if problem is None and scheme != "env" and looks_like_credential(rest):
        problem = "the reference holds what looks like a credential itself, not where one is kept"
    if problem is not None:
        return [ConfigIssue(at, f"{problem}; the value is not shown")]
    if scheme == "env" and rest not in os.environ:
        return [ConfigIssue(at, f"environment variable {rest} is not set", warning=True)]
    if vault is not None and scheme == "aws-sm" and vault.aws is None:
        return [ConfigIssue(at, "aws-sm:// references need a `vault.aws` block")]
    if vault is not None and scheme == "vault" and vault.hashicorp is None:
        return [ConfigIssue(at, "vault:// references need a `vault.hashicorp` block")]
    return []


#: an HTTP header name (RFC 9110 token)
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _check_header(name: str, value: str, at: tuple[PathPart, ...], vault: VaultConfig) -> list[ConfigIssue]:
    """A provider header: a credential goes as a secret reference, never as its value (not quoted)."""
    if _HEADER_NAME.fullmatch(name) is None:
        return [ConfigIssue(at, "not a valid HTTP header name")]
    ref = parse_ref(value, allow_prefix=True)
    if ref is not None:
        return _check_secret_ref(ref.ref, at, vault)
    if any(c in value for c in "\r\n\0"):
        return [ConfigIssue(at, f"the value of header '{name}' holds a line break")]
    how = "give it as a secret reference (env://NAME, file:///path, secret://name ..., after a word such as `Bearer `)"
    if is_credential_header(name):
        return [ConfigIssue(at, f"header '{name}' carries a credential: {how}, never the value itself")]
    if looks_like_credential(value):
        return [ConfigIssue(at, f"the value of header '{name}' looks like a credential: {how}; it is not shown")]
    return []


class _LineIndex:
    """Maps a path in the document to its 1-based line, from the YAML node tree."""

    def __init__(self, text: str) -> None:
        import yaml

        try:
            self._root: yaml.Node | None = yaml.compose(text)
        except yaml.YAMLError:
            self._root = None

    def line_of(self, path: tuple[PathPart, ...]) -> int | None:
        import yaml

        node = self._root
        line = None
        for part in path:
            if isinstance(node, yaml.MappingNode):
                for key, value in node.value:
                    if key.value == part:
                        line, node = key.start_mark.line + 1, value
                        break
                else:
                    return line
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return line
        return line
