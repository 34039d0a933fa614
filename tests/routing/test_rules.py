"""Routing conditions and pins, compiled from config: what they read of a call and what they allow;
and the config checks that refuse rules and pins that could never work."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from sluicegate.config.loader import parse_config
from sluicegate.guardrails.engine import GuardRecord
from sluicegate.routing.config import Condition, PinConfig
from sluicegate.routing.rules import compile_match, compile_pin


class FakeGuards:
    def __init__(self, *records: GuardRecord) -> None:
        self.records = list(records)


class FakeCall:
    def __init__(self, *records: GuardRecord, body: dict[str, Any] | None = None) -> None:
        self.guards = FakeGuards(*records) if records else None
        self.body = body or {"messages": [{"role": "user", "content": "hi"}]}


def record(guard: str, label: str, action: str = "flag", direction: str = "input") -> GuardRecord:
    return GuardRecord(guard, "pii", action, direction, "messages[0].content", label)


def holds(condition: Condition, call: FakeCall) -> bool:
    match = compile_match(condition)
    assert match is not None
    return match.holds(call)  # type: ignore[arg-type]


def test_found_names_guards_that_found_something_in_the_input() -> None:
    condition = Condition(found=["pii", "secrets"])
    assert holds(condition, FakeCall(record("pii", "EMAIL")))
    assert holds(condition, FakeCall(record("secrets", "aws_key", action="redact")))
    assert not holds(condition, FakeCall(record("other", "EMAIL")))
    # What an output guard found says nothing about the input.
    assert not holds(condition, FakeCall(record("pii", "EMAIL", direction="output")))
    assert not holds(condition, FakeCall())


def test_labels_match_without_case_and_through_decoded_views() -> None:
    condition = Condition(labels=["email", "credit_*"])
    assert holds(condition, FakeCall(record("pii", "EMAIL")))
    assert holds(condition, FakeCall(record("pii", "EMAIL:base64")))
    assert holds(condition, FakeCall(record("pii", "CREDIT_CARD")))
    assert not holds(condition, FakeCall(record("pii", "PHONE")))


def test_every_part_of_a_condition_must_hold() -> None:
    condition = Condition(found=["pii"], labels=["phone"])
    assert not holds(condition, FakeCall(record("pii", "EMAIL")))
    assert holds(condition, FakeCall(record("pii", "EMAIL"), record("pii", "PHONE")))


def test_a_guard_that_could_not_run_counts_as_a_finding() -> None:
    # Routing by content fails closed: an unread text may hold anything.
    unread = record("pii", "is unavailable", action="error_allowed")
    assert holds(Condition(found=["pii"]), FakeCall(unread))
    assert holds(Condition(labels=["email"]), FakeCall(unread))


def test_images_are_found_in_every_dialect() -> None:
    openai_chat = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}
    anthropic = {"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "x"}}]}]}
    responses = {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}
    for body in (openai_chat, anthropic, responses):
        assert holds(Condition(images=True), FakeCall(body=body))
        assert not holds(Condition(images=False), FakeCall(body=body))
    assert holds(Condition(images=False), FakeCall())


def test_an_empty_condition_compiles_to_none() -> None:
    assert compile_match(Condition()) is None


class FakeProvider:
    def __init__(self, name: str, region: str | None) -> None:
        self.name = name

        class Config:
            pass

        self.config = Config()
        self.config.region = region  # type: ignore[attr-defined]


def test_a_pin_allows_its_providers_and_regions() -> None:
    pin = compile_pin(PinConfig(name="eu", regions=["eu-*"], providers=["onprem"]))
    assert pin.rule == "routing.pins.eu"
    assert pin.allows(FakeProvider("azure-eu", "eu-west"))  # type: ignore[arg-type]
    assert pin.allows(FakeProvider("onprem", None))  # type: ignore[arg-type]
    assert not pin.allows(FakeProvider("openai", "us-east"))  # type: ignore[arg-type]
    # A provider without a region is in none.
    assert not pin.allows(FakeProvider("other", None))  # type: ignore[arg-type]


BASE = """\
providers:
  - {name: ext, type: openai, api_key: env://SOME_KEY_FOR_TESTS, region: us-east}
  - {name: home, type: ollama, region: on-prem}
guards:
  - {name: pii, kind: pii, action: flag, applies_to: input}
  - {name: out, kind: pii, applies_to: output}
groups:
  - {name: staff, models: ["*"]}
models:
  - name: m
    provider: ext
"""


def errors(extra_model: str = "", routing: str = "") -> list[str]:
    text = BASE + textwrap.indent(textwrap.dedent(extra_model), "    ") + textwrap.dedent(routing)
    _, issues = parse_config(text)
    return [str(i) for i in issues if not i.warning]


def warnings(routing: str) -> list[str]:
    _, issues = parse_config(BASE + textwrap.dedent(routing))
    return [str(i) for i in issues if i.warning and "SOME_KEY" not in str(i)]


def test_a_good_rule_and_pin_compile() -> None:
    assert (
        errors(
            "when: [{name: p, found: [pii], targets: [{provider: home, model: llama3}]}]\n",
            "routing:\n  pins: [{name: eu, groups: [staff], regions: ['on-*']}]\n",
        )
        == []
    )


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("{name: p, targets: [{provider: home}]}", "a rule needs a condition"),
        ("{name: p, found: [nope], targets: [{provider: home}]}", "unknown guard 'nope'"),
        ("{name: p, found: [out], targets: [{provider: home}]}", "does not read the input"),
        ("{name: p, images: true, targets: [{provider: gone}]}", "unknown provider 'gone'"),
    ],
)
def test_rules_that_cannot_work_are_refused(rule: str, expected: str) -> None:
    (message,) = errors(f"when: [{rule}]\n")
    assert expected in message and "models[0].when[0]" in message


@pytest.mark.parametrize(
    ("pin", "expected"),
    [
        ("{name: p, groups: [staff]}", "names the `providers` or `regions`"),
        ("{name: p, providers: [gone]}", "unknown provider 'gone'"),
        ("{name: p, groups: [nope], providers: [home]}", "unknown group 'nope'"),
        ("{name: p, found: [nope], providers: [home]}", "unknown guard 'nope'"),
    ],
)
def test_pins_that_cannot_work_are_refused(pin: str, expected: str) -> None:
    (message,) = errors(routing=f"routing:\n  pins: [{pin}]\n")
    assert expected in message and "routing.pins[0]" in message


def test_a_region_no_provider_has_is_a_warning() -> None:
    (message,) = warnings("routing:\n  pins: [{name: p, regions: [mars-*]}]\n")
    assert "no provider has a region matching 'mars-*'" in message


def test_a_deadline_header_must_be_a_header_name() -> None:
    (message,) = errors(routing="routing:\n  deadline_headers: ['bad header']\n")
    assert "not a header name" in message
