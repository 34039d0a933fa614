"""Content-aware routing and pins, compiled from config: what a call's input holds decides where
it may go.

Conditions read what the input guards found (`call.guards.records`): the guard engine is the
only scanner, so a route "by PII" sees exactly the PII the guards see, in every field they read,
decoded views included. A `when` rule of a model picks another target list when its condition
holds; a pin narrows every target list a call may use (fallbacks and retries included) to some
providers or regions, for some consumers, groups or kinds of data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sluicegate.config.rules import NameMatcher
from sluicegate.limits.prices import count_images

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.config.snapshot import Consumer, Route
    from sluicegate.guardrails.engine import GuardRecord
    from sluicegate.providers.base import Provider
    from sluicegate.routing.config import Condition, PinConfig

#: the action of a guard record saying the guard could not run and let the call through: it counts
#: as a finding, so routing by content fails closed
_UNREAD = "error_allowed"


@dataclass(frozen=True, slots=True)
class Match:
    """A compiled `Condition`: every part set must hold."""

    found: frozenset[str]
    labels: NameMatcher | None
    images: bool | None

    def holds(self, call: Call) -> bool:
        if self.found or self.labels is not None:
            state = call.guards
            if state is None or not self._found_in(state.records):
                return False
        if self.images is not None:
            body = call.body
            has = body is not None and count_images(body) > 0
            if has is not self.images:
                return False
        return True

    def _found_in(self, records: Sequence[GuardRecord]) -> bool:
        found, labels = self.found, self.labels
        guard_hit = not found
        label_hit = labels is None
        for record in records:
            if record.direction != "input":
                continue
            if not guard_hit and record.guard in found:
                guard_hit = True
            if not label_hit and labels is not None:
                # A guard that could not read the text may have missed any label: it matches.
                label_hit = record.action == _UNREAD or _label_matches(labels, record.label)
            if guard_hit and label_hit:
                return True
        return False


def _label_matches(labels: NameMatcher, label: str) -> bool:
    # Labels match without regard to case; a finding in a decoded view (`EMAIL:base64`) is an
    # `EMAIL` all the same.
    label = label.lower()
    return labels(label) or (":" in label and labels(label.partition(":")[0]))


def compile_match(condition: Condition) -> Match | None:
    """The compiled condition; None when it sets nothing (it always holds)."""
    if condition.is_empty():
        return None
    labels = NameMatcher([label.lower() for label in condition.labels]) if condition.labels else None
    return Match(frozenset(condition.found), labels, condition.images)


@dataclass(frozen=True, slots=True, eq=False)
class Choice:
    """A model's `when` rule, compiled: its condition and the route of its targets."""

    #: the rule's id, as refusals and the audit name it (`models.smart.when.private-data`)
    rule: str
    match: Match
    route: Route


@dataclass(frozen=True, slots=True, eq=False)
class Pin:
    """A compiled pin: whom and what data it covers, and which providers it allows."""

    rule: str
    consumers: NameMatcher | None
    groups: frozenset[str]
    #: None: every call of the consumers it covers
    match: Match | None
    providers: NameMatcher | None
    regions: NameMatcher | None
    #: what it allows, for messages: `regions eu-*` / `providers on-prem`
    allowed: str

    def covers(self, consumer: Consumer) -> bool:
        """Whether the pin applies to this consumer (its name or one of its groups)."""
        if self.consumers is None and not self.groups:
            return True
        if self.consumers is not None and self.consumers(consumer.name):
            return True
        return any(g in self.groups for g in consumer.groups)

    def allows(self, provider: Provider) -> bool:
        """Whether calls under this pin may go to `provider`."""
        if self.providers is not None and self.providers(provider.name):
            return True
        region = provider.config.region
        return self.regions is not None and region is not None and self.regions(region)


def compile_pin(config: PinConfig) -> Pin:
    allowed = [f"regions {', '.join(config.regions)}"] if config.regions else []
    allowed += [f"providers {', '.join(config.providers)}"] if config.providers else []
    return Pin(
        rule=f"routing.pins.{config.name}",
        consumers=NameMatcher(list(config.consumers)) if config.consumers else None,
        groups=frozenset(config.groups),
        match=compile_match(config),
        providers=NameMatcher(list(config.providers)) if config.providers else None,
        regions=NameMatcher(list(config.regions)) if config.regions else None,
        allowed=" or ".join(allowed),
    )


class Pins:
    """The pins of one snapshot, and per consumer those that cover it (found once)."""

    __slots__ = ("_by_consumer", "pins")

    def __init__(self, pins: Sequence[Pin]) -> None:
        self.pins = tuple(pins)
        self._by_consumer: dict[tuple[str, tuple[str, ...]], tuple[Pin, ...]] = {}

    def covering(self, consumer: Consumer) -> tuple[Pin, ...]:
        key = (consumer.name, consumer.groups)
        found = self._by_consumer.get(key)
        if found is None:
            if len(self._by_consumer) > 10_000:
                self._by_consumer.clear()
            found = self._by_consumer[key] = tuple(p for p in self.pins if p.covers(consumer))
        return found

    def active(self, call: Call) -> tuple[Pin, ...]:
        """The pins that hold for this call: they cover its consumer, and its data if they say."""
        consumer = call.consumer
        if consumer is None:
            return ()
        covering = self.covering(consumer)
        if not covering:
            return covering
        return tuple(p for p in covering if p.match is None or p.match.holds(call))

    def guard_names(self, consumer: Consumer) -> list[str]:
        """Guards the pins covering this consumer read (they must run on its calls)."""
        return [name for p in self.covering(consumer) if p.match is not None for name in sorted(p.match.found)]
