"""Host names as the egress proxy matches them: patterns by labels (never substrings), the
shipped list of known AI hosts, and the per-destination decision, compiled once per config.

`*.example.com` matches any name under `example.com` (not `example.com` itself); `*` in any other
place matches exactly one label (`bedrock-runtime.*.amazonaws.com`). Names compare lower-cased,
without a trailing dot.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from sluicegate.egress.config import Action, EgressConfig

T = TypeVar("T")

_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
#: a label with a `*` inside it (`*-aiplatform`): the star matches one or more characters
_PARTIAL = re.compile(r"^[a-z0-9_-]*\*[a-z0-9_-]*$")
MAX_NAME = 253


def normalise(host: str) -> str | None:
    """`host` lower-cased, without a trailing dot, when it is a valid name or IP literal; else None."""
    name = host.strip().lower().removesuffix(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if not name or len(name) > MAX_NAME:
        return None
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    if all(_LABEL.match(label) for label in name.split(".")):
        return name
    return None


def host_of_header(value: bytes) -> str | None:
    """The host a `Host` header names, normalised, without its port."""
    text = value.decode("latin-1").strip()
    if text.startswith("["):
        text = text[: text.find("]") + 1]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    return normalise(text)


@dataclass(frozen=True, slots=True)
class Pattern:
    """A parsed host pattern: its labels, and whether a leading `*.` takes any depth."""

    text: str
    labels: tuple[str, ...]
    any_depth: bool

    def matches(self, labels: tuple[str, ...]) -> bool:
        """Whether a name, split into labels, matches."""
        own = self.labels
        if self.any_depth:
            if len(labels) <= len(own):
                return False
            labels = labels[len(labels) - len(own) :]
        elif len(labels) != len(own):
            return False
        return all(_label_matches(p, n) for p, n in zip(own, labels, strict=True))


@functools.lru_cache(maxsize=4096)
def _partial(label: str) -> re.Pattern[str]:
    head, _, tail = label.partition("*")
    return re.compile(f"^{re.escape(head)}[a-z0-9_-]+{re.escape(tail)}$")


def _label_matches(pattern: str, label: str) -> bool:
    if pattern == label or pattern == "*":
        return True
    return "*" in pattern and _partial(pattern).match(label) is not None


def parse_pattern(text: str) -> Pattern:
    """A host pattern, or ValueError saying what is wrong with it."""
    name = text.strip().lower().removesuffix(".")
    any_depth = name.startswith("*.")
    rest = name[2:] if any_depth else name
    if "*" not in rest and normalise(rest) == rest and rest and not (any_depth and "." not in rest):
        return Pattern(name, tuple(rest.split(".")), any_depth)
    labels = tuple(rest.split("."))
    if not rest or len(rest) > MAX_NAME or len(labels) < 2 or any("*" in label for label in labels[-2:]):
        # A wildcard stays under a named domain: `*`, `*.com` or `api.*` would match too much.
        raise ValueError(f"'{text}' is not a host name or pattern (a wildcard needs a domain after it)")
    for label in labels:
        if not (_LABEL.match(label) or label == "*" or _PARTIAL.match(label)):
            raise ValueError(f"'{text}' is not a host name or pattern (label '{label}')")
    return Pattern(name, labels, any_depth)


class HostTable(Generic[T]):
    """Patterns mapped to values; exact names by a dict lookup, wildcards in list order."""

    def __init__(self, entries: Iterable[tuple[str, T]]) -> None:
        self.exact: dict[str, T] = {}
        self.wild: list[tuple[Pattern, T]] = []
        for text, value in entries:
            pattern = parse_pattern(text)
            if pattern.any_depth or "*" in pattern.text:
                self.wild.append((pattern, value))
            else:
                self.exact.setdefault(pattern.text, value)

    def __len__(self) -> int:
        return len(self.exact) + len(self.wild)

    def get(self, host: str) -> T | None:
        """The value of the first pattern that matches a normalised `host`."""
        value = self.exact.get(host)
        if value is not None or not self.wild:
            return value
        labels = tuple(host.split("."))
        for pattern, found in self.wild:
            if pattern.matches(labels):
                return found
        return None


@dataclass(frozen=True, slots=True)
class AIHost:
    """A known AI service's host."""

    service: str
    #: the provider's path prefix before the OpenAI-style path, removed when intercepted
    strip_prefix: str = ""


@dataclass(frozen=True, slots=True)
class AIHostList:
    """The shipped list of known AI hosts and its date."""

    updated: dt.date
    entries: tuple[tuple[str, AIHost], ...]


@functools.lru_cache(maxsize=1)
def shipped_ai_hosts() -> AIHostList:
    """`data/ai_hosts.yaml`, read once per process (when an egress proxy first decides)."""
    import yaml  # only where egress is used: the demo gateway starts without it

    text = resources.files("sluicegate.egress").joinpath("data", "ai_hosts.yaml").read_text("utf-8")
    data = yaml.safe_load(text)
    updated = data["updated"]
    if not isinstance(updated, dt.date):
        raise ValueError("ai_hosts.yaml: 'updated' must be a date")
    entries = tuple((str(e["host"]), AIHost(str(e["service"]), str(e.get("strip_prefix", "")))) for e in data["hosts"])
    return AIHostList(updated, entries)


@dataclass(frozen=True, slots=True)
class Destination:
    """What the proxy does with one host, and why (the rule named in the audit)."""

    action: Action
    rule: str
    #: the AI service, when the host is a known one
    ai: AIHost | None = None


class HostPolicy:
    """The decision per destination host, built once from `egress:` (module docstring)."""

    def __init__(self, config: EgressConfig) -> None:
        lists: list[tuple[str, Action, list[str]]] = [
            ("deny", "deny", config.deny),
            ("block", "block", config.block),
            ("intercept", "intercept", config.intercept),
            ("allow", "allow", config.allow),
        ]
        self.lists = [
            (f"egress.{name}", action, HostTable((p, True) for p in patterns)) for name, action, patterns in lists
        ]
        shipped = shipped_ai_hosts()
        extra = ((p, AIHost("configured")) for p in config.extra_ai_hosts)
        self.ai = HostTable([*extra, *shipped.entries])
        self.ai_action: Action = config.ai_hosts
        self.default: Action = config.default

    def decide(self, host: str) -> Destination:
        """The action for a normalised host name or IP literal."""
        ai = self.ai.get(host)
        for rule, action, table in self.lists:
            if table.get(host) is not None:
                return Destination(action, rule, ai)
        if ai is not None:
            return Destination(self.ai_action, "egress.ai_hosts", ai)
        return Destination(self.default, "egress.default")
