"""Time windows, source ranges and the rule-related config checks."""

from __future__ import annotations

import datetime as dt

import pytest

from sluicegate.config.loader import parse_config
from sluicegate.config.rules import RuleError, parse_network, parse_time_window

UTC = dt.UTC


def at(y: int, mo: int, d: int, h: int, mi: int = 0) -> dt.datetime:
    return dt.datetime(y, mo, d, h, mi, tzinfo=UTC)


@pytest.mark.parametrize(
    ("window", "when", "inside"),
    [
        # Friday 2026-11-27: Paris is UTC+1 in winter
        ("Mon-Fri 08:00-19:00 Europe/Paris", at(2026, 11, 27, 7, 0), True),
        ("Mon-Fri 08:00-19:00 Europe/Paris", at(2026, 11, 27, 6, 59), False),
        ("Mon-Fri 08:00-19:00 Europe/Paris", at(2026, 11, 27, 18, 0), False),
        ("Mon-Fri 08:00-19:00 Europe/Paris", at(2026, 11, 28, 10, 0), False),  # Saturday
        # summer: UTC+2
        ("Mon-Fri 08:00-19:00 Europe/Paris", at(2026, 7, 1, 6, 30), True),
        ("Mon-Fri 08:00-19:00 Europe/Paris", at(2026, 7, 1, 17, 30), False),
        # overnight: Friday 22:00 to Saturday 06:00 belongs to Friday
        ("Fri 22:00-06:00", at(2026, 11, 28, 3, 0), True),
        ("Fri 22:00-06:00", at(2026, 11, 27, 23, 0), True),
        ("Fri 22:00-06:00", at(2026, 11, 27, 3, 0), False),
        ("Sat,Sun 00:00-24:00", at(2026, 11, 29, 23, 59), True),
        ("daily 09:00-10:00 America/New_York", at(2026, 11, 27, 14, 30), True),
        ("Fri-Mon 10:00-11:00", at(2026, 11, 30, 10, 30), True),
        ("Fri-Mon 10:00-11:00", at(2026, 11, 25, 10, 30), False),
    ],
)
def test_time_windows(window: str, when: dt.datetime, inside: bool) -> None:
    assert parse_time_window(window).contains(when) is inside


@pytest.mark.parametrize(
    "bad",
    [
        "Mon-Fri",
        "Mon-Fri 8-19",
        "Funday 08:00-09:00",
        "Mon 25:00-26:00",
        "Mon 08:00-08:00",
        "Mon 08:00-09:00 Mars/Base",
    ],
)
def test_bad_time_windows(bad: str) -> None:
    with pytest.raises(RuleError):
        parse_time_window(bad)


def test_networks() -> None:
    assert str(parse_network("10.1.2.3/8")) == "10.0.0.0/8"
    assert str(parse_network("::1")) == "::1/128"
    with pytest.raises(RuleError):
        parse_network("10.0.0.300/8")


def test_rule_errors_have_paths() -> None:
    text = """\
providers:
  - {name: p, type: ollama}
models:
  - {name: m, provider: p}
groups:
  - name: g
    models: [nope]
    providers: [q]
    time_windows: ["Mon-Fri 08:00-19:00 Nowhere/Zone"]
consumers:
  - name: c
    groups: [g, h]
    source_ips: [10.0.0.0/8, banana]
    endpoints: [chat]
"""
    _, issues = parse_config(text)
    got = sorted(str(i) for i in issues)
    assert "groups[0].models[0] (line 7): unknown model 'nope'" in got
    assert "groups[0].providers[0] (line 8): unknown provider 'q'" in got
    assert "groups[0].time_windows[0] (line 9): unknown time zone 'Nowhere/Zone'" in got
    assert "consumers[0].groups[1] (line 12): unknown group 'h'" in got
    assert "consumers[0].source_ips[1] (line 13): not an IP address or CIDR range: 'banana'" in got
    _, issues = parse_config(text.replace("[chat]", "[chat, telepathy]"))
    assert str(issues[0]).startswith("consumers[0].endpoints[1] (line 14): Input should be 'chat'")
