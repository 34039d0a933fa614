"""Guard kind `regex`: deny patterns, allow patterns that exempt overlaps, settings checked at load."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sluicegate.guardrails.regex import RegexGuard, pattern_width
from tests.guardrails import labels, make, matched


def test_deny_matches_case_insensitively_with_index_labels() -> None:
    guard = make("regex", deny=[r"project\s+falcon", r"\bconfidential\b"])
    assert isinstance(guard, RegexGuard)
    assert labels(guard, "The CONFIDENTIAL plan for Project  Falcon") == ["deny[1]", "deny[0]"]
    assert matched(guard, "about project falcon") == ["project falcon"]


def test_clean_text_passes() -> None:
    guard = make("regex", deny=[r"project\s+falcon", r"\bconfidential\b"])
    assert labels(guard, "Falcons are birds; confidentiality is a word.") == []


def test_allow_exempts_overlapping_deny_matches_only() -> None:
    guard = make("regex", deny=[r"[\w.+-]+@[\w-]+\.[\w.]+"], allow=[r"@example\.com\b"])
    assert labels(guard, "write to dev@example.com") == []
    assert matched(guard, "write to dev@example.com or ceo@corp.io") == ["ceo@corp.io"]


def test_matching_runs_on_normalised_text() -> None:
    guard = make("regex", deny=[r"secret"])
    # full-width letters and a zero-width space are normalised away before matching
    assert labels(guard, "\uff53\uff45\uff43\u200bret") == ["deny[0]"]


def test_empty_matches_are_not_findings() -> None:
    guard = make("regex", deny=[r"x*"])
    assert labels(guard, "abc") == []


def test_reach_is_the_widest_pattern_or_max_match_chars() -> None:
    assert make("regex", deny=[r"abc", r"a{2,10}"]).reach == 10
    assert make("regex", deny=[r"abc", r"a+"]).reach == 256
    assert make("regex", deny=[r"abc"], allow=[r"x.*"], max_match_chars=64).reach == 64
    assert pattern_width(r"(?:ab|c){3}") == 6
    assert pattern_width(r"a{3,}") is None


@pytest.mark.parametrize(
    "settings",
    [{"deny": ["("]}, {"deny": ["ok"], "allow": ["[z-a]"]}, {"deny": []}, {"deny": ["a"], "extra": 1}],
    ids=["bad-deny", "bad-allow", "empty-deny", "unknown-key"],
)
def test_bad_settings_fail_at_load(settings: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        make("regex", **settings)
