"""Guard kind `regex`: deny-list patterns, with allow-list patterns that exempt what they overlap.

Patterns compile when the config loads, case-insensitive, and run on normalised text (their own
non-ASCII letters normalised alike, so `café` finds `CAFÉ` and `cafe`). Findings are
labelled `deny[i]` (the pattern's index in `deny`), never with the matched text.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence

from pydantic import Field, field_validator

from sluicegate.config.model import GuardConfig
from sluicegate.guardrails.base import (
    Guard,
    GuardContext,
    GuardSettings,
    check_patterns,
    register_guard_kind,
    settings_as,
)
from sluicegate.guardrails.normalize import fold_char, tables

FLAGS = re.IGNORECASE


class RegexSettings(GuardSettings):
    """Settings of a `regex` guard."""

    #: a match of any of these is a finding (Python `re` syntax, case-insensitive)
    deny: list[str] = Field(min_length=1)
    #: a deny match that overlaps a match of one of these is not a finding
    allow: list[str] = Field(default_factory=list)
    #: the reach declared for patterns with unbounded quantifiers (`*`, `+`, `{n,}`): on streams,
    #: output is held back this many characters, so a longer match may be seen only in pieces
    max_match_chars: int = Field(256, gt=0, le=65536)

    @field_validator("deny", "allow")
    @classmethod
    def _compile(cls, patterns: list[str]) -> list[str]:
        check_patterns(patterns, FLAGS)
        check_patterns([fold_pattern(p, casefold=True) for p in patterns], FLAGS)
        return patterns


class RegexGuard(Guard):
    """Finds matches of deny patterns that no allow pattern overlaps."""

    Settings = RegexSettings

    def __init__(self, config: GuardConfig, settings: GuardSettings, context: GuardContext) -> None:
        super().__init__(config, settings, context)
        self.settings = settings = settings_as(settings, RegexSettings)
        deny = [fold_pattern(p, casefold=True) for p in settings.deny]
        allow = [fold_pattern(p, casefold=True) for p in settings.allow]
        self._deny = [re.compile(p, FLAGS) for p in deny]
        self._allow = [re.compile(p, FLAGS) for p in allow]
        widths = [pattern_width(p) for p in (*deny, *allow)]
        self._reach = max(settings.max_match_chars if w is None else w for w in widths)

    @property
    def reach(self) -> int | None:
        """The widest pattern (deny or allow), `max_match_chars` for unbounded ones."""
        return self._reach

    def scan_text(self, text: str) -> list[tuple[int, int, str]]:
        """Deny matches in `text` that no allow match overlaps, in text order."""
        found: list[tuple[int, int, str]] = []
        for i, pattern in enumerate(self._deny):
            found.extend((m.start(), m.end(), f"deny[{i}]") for m in pattern.finditer(text) if m.end() > m.start())
        if found and self._allow:
            allowed = [(m.start(), m.end()) for p in self._allow for m in p.finditer(text)]
            found = [f for f in found if not any_overlap(allowed, f[0], f[1])]
        found.sort()
        return found


def pattern_width(pattern: str) -> int | None:
    """The longest text `pattern` can match, or None when it is unbounded (or cannot be told)."""
    # The `re` parser is private but stable across CPython versions; anything unexpected from it
    # means "unbounded", which is the safe answer.
    try:
        parser = importlib.import_module("re._parser")
        width = parser.parse(pattern, FLAGS).getwidth()[1]
        maxrepeat = parser.MAXREPEAT
    except Exception:
        return None
    if not isinstance(width, int) or width >= maxrepeat:
        return None
    return width


def fold_pattern(pattern: str, *, casefold: bool) -> str:
    """`pattern` with its non-ASCII literals normalised as the text it runs on (`é` is `e`).

    Outside brackets a character that folds to several (`ﬁ`) or to none (a zero-width space)
    becomes a group; inside brackets only one-for-one folds fit, others are a config error.
    """
    if pattern.isascii():
        return pattern
    data = tables()
    out: list[str] = []
    in_class = escaped = False
    for i, ch in enumerate(pattern):
        if escaped:
            escaped = False
            if ch.isascii():
                out.append(ch)
                continue
            out.pop()  # an escaped non-ASCII character is a literal: fold it as one
        elif ch == "\\":
            escaped = True
        elif ch == "[" and not in_class:
            in_class = True
        elif ch == "]" and in_class and pattern[i - 1] != "[" and pattern[i - 2 : i] != "[^":
            in_class = False
        if ch.isascii():
            out.append(ch)
            continue
        folded = fold_char(ch, casefold, data)
        if len(folded) == 1:
            out.append(re.escape(folded))
        elif in_class:
            raise ValueError(f"{ch!r} (U+{ord(ch):04X}) inside [...] normalises to {len(folded)} characters")
        else:
            out.append(f"(?:{re.escape(folded)})")
    return "".join(out)


def any_overlap(spans: Sequence[tuple[int, int]], start: int, end: int) -> bool:
    """True when [start, end) overlaps one of `spans`."""
    return any(s < end and start < e for s, e in spans)


register_guard_kind("regex", RegexGuard)

__all__ = ["RegexGuard", "RegexSettings", "fold_pattern", "pattern_width"]
