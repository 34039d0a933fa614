"""Guard kind `length`: limits across the texts of a request; findings cover what lies past them."""

from __future__ import annotations

import asyncio
import base64

import pytest
from pydantic import ValidationError

from sluicegate.guardrails.base import Finding
from sluicegate.guardrails.engine import CallGuards, GuardSet, scan_texts
from sluicegate.tokens import count_tokens
from tests.guardrails import make, scan


def test_within_every_limit_passes() -> None:
    guard = make("length", max_chars=30, max_words=4, max_tokens=10, max_messages=2)
    assert scan(guard, "hello there", "general kenobi") == []
    assert guard.reach is None


def test_max_chars_counts_across_texts_and_covers_the_rest() -> None:
    guard = make("length", max_chars=8)
    assert scan(guard, "abcde", "fghij", "", "klm") == [
        Finding(1, 3, 5, "max_chars"),
        Finding(3, 0, 3, "max_chars"),
    ]


def test_max_words_starts_after_the_last_allowed_word() -> None:
    guard = make("length", max_words=3)
    text = "one two  three four five"
    assert scan(guard, text) == [Finding(0, text.index("three") + 5, len(text), "max_words")]
    assert scan(guard, "one two", "three") == []


def test_max_tokens_uses_the_gateway_token_counter() -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 4
    limit = count_tokens([text]) - 1
    (finding,) = scan(make("length", max_tokens=limit), text)
    assert finding.label == "max_tokens"
    assert finding.index == 0
    assert 0 < finding.start < finding.end == len(text)
    assert scan(make("length", max_tokens=limit + 1), text) == []


def test_max_tokens_offset_never_splits_a_character() -> None:
    text = "日本語のテキスト" * 8
    (finding,) = scan(make("length", max_tokens=3), text)
    assert 0 < finding.start < len(text)


def test_max_messages_counts_message_parts() -> None:
    guard = make("length", max_messages=2)
    assert scan(guard, "a", "b") == []
    assert [f.index for f in scan(guard, "a", "b", "c", "d")] == [2, 3]
    assert {f.label for f in scan(guard, "a", "b", "c")} == {"max_messages"}


def test_each_exceeded_limit_is_reported() -> None:
    guard = make("length", max_chars=3, max_words=1)
    assert sorted({f.label for f in scan(guard, "ab cd")}) == ["max_chars", "max_words"]


@pytest.mark.parametrize(
    "settings", [{}, {"max_chars": 0}, {"max_words": -1}, {"max_pages": 3}], ids=["none", "zero", "negative", "unknown"]
)
def test_bad_settings_fail_at_load(settings: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        make("length", **settings)


def test_a_length_guard_beside_a_pattern_guard_reads_a_base64_run_as_sent() -> None:
    # A pattern guard decodes the run first; the length guard must not reuse its pass (it has no
    # patterns) nor count the decoded text again.
    pii = make("pii", entities=["EMAIL"])
    length = make("length", max_chars=10_000)
    text = base64.b64encode(b"mail jane.roe@corp-mail.example.org now").decode()
    state = CallGuards(GuardSet((pii, length), (), 0))
    scan = asyncio.run(scan_texts(state, [pii, length], [text], "input", block=False))
    assert [(g.kind, f.label) for g, f in scan.hits] == [("pii", "EMAIL:base64")]
    assert length.decodings == frozenset()
