"""Guard kind `words`: whole words and phrases on normalised text."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sluicegate.guardrails.words import WordsGuard
from tests.guardrails import labels, make, matched


def test_whole_words_match_and_labels_are_indexes() -> None:
    guard = make("words", words=["darn", "Heck"])
    assert isinstance(guard, WordsGuard)
    assert labels(guard, "Oh HECK, darn it.") == ["words[1]", "words[0]"]


def test_words_inside_other_words_pass() -> None:
    guard = make("words", words=["ass", "hell"])
    assert labels(guard, "A classic assessment: hello, shell, Hellenic.") == []


def test_phrases_match_across_any_whitespace() -> None:
    guard = make("words", words=["top secret", "top"])
    assert matched(guard, "a TOP\n  secret file, and the top shelf") == ["top\n  secret", "top"]
    assert labels(guard, "a top secret file") == ["words[0]"]


def test_longer_entries_win_over_their_prefixes() -> None:
    guard = make("words", words=["bad", "bad word", "badger"])
    assert matched(guard, "badger, bad word, bad") == ["badger", "bad word", "bad"]


def test_symbols_at_the_edges_still_need_a_word_boundary() -> None:
    guard = make("words", words=["c++", ".env"])
    assert labels(guard, "I like c++ and my .env file") == ["words[0]", "words[1]"]
    assert labels(guard, "abc++ and x.envy") == []


def test_evasion_by_confusables_and_zero_width_is_normalised() -> None:
    guard = make("words", words=["password"])
    # Cyrillic a and o (U+0430, U+043E), a zero-width joiner, a full-width P (U+FF30)
    assert labels(guard, "\uff30\u0430ss\u200dw\u043erd") == ["words[0]"]


def test_entries_are_normalised_too() -> None:
    # full-width CAF and an E with acute
    guard = make("words", words=["\uff23\uff21\uff26\u00c9"])
    assert labels(guard, "a café") == ["words[0]"]


def test_reach_is_the_longest_entry() -> None:
    assert make("words", words=["a", "abcdef"]).reach == 6
    assert make("words", words=["ab cd"]).reach == 4 + 8


@pytest.mark.parametrize("words", [[], ["  "], ["x" * 300]], ids=["empty", "blank", "too-long"])
def test_bad_settings_fail_at_load(words: list[str]) -> None:
    with pytest.raises(ValidationError):
        make("words", words=words)
