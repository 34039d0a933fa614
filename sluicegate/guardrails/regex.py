"""Guard kind `regex`: deny-list patterns, with allow-list patterns that exempt what they overlap.

Patterns compile when the config loads, case-insensitive, and run on normalised text (their own
non-ASCII letters normalised alike, so `café` finds `CAFÉ` and `cafe`). Findings are
labelled `deny[i]` (the pattern's index in `deny`), never with the matched text.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Container, Sequence
from typing import Any

from pydantic import Field, field_validator

from sluicegate.config.model import GuardConfig
from sluicegate.guardrails.base import (
    EVERY,
    Guard,
    GuardContext,
    GuardSettings,
    check_patterns,
    register_guard_kind,
    settings_as,
)
from sluicegate.guardrails.matcher import Partial, earliest
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
        cap = settings.max_match_chars
        widths = [pattern_width(p) for p in (*deny, *allow)]
        self._reach = max(cap if w is None else w for w in widths)
        self._widths = widths
        self._partials: list[Partial] | None = None

    @property
    def reach(self) -> int | None:
        """The widest pattern (deny or allow), `max_match_chars` for unbounded ones."""
        return self._reach

    def patterns(self) -> Sequence[re.Pattern[str]]:
        """The deny patterns, then the allow patterns."""
        return (*self._deny, *self._allow)

    def scan_text(self, text: str) -> list[tuple[int, int, str]]:
        """Deny matches in `text` that no allow match overlaps, in text order."""
        return self.find(text, EVERY)

    def find(self, text: str, candidates: Container[int]) -> list[tuple[int, int, str]]:
        """`scan_text` with only the patterns that may match."""
        found: list[tuple[int, int, str]] = []
        if not candidates:
            return found
        for i, pattern in enumerate(self._deny):
            if i in candidates:
                found.extend((m.start(), m.end(), f"deny[{i}]") for m in pattern.finditer(text) if m.end() > m.start())
        if found and self._allow:
            first = len(self._deny)
            allowed = [
                (m.start(), m.end())
                for j, p in enumerate(self._allow)
                if first + j in candidates
                for m in p.finditer(text)
            ]
            found = [f for f in found if not any_overlap(allowed, f[0], f[1])]
        found.sort()
        return found

    def pending(self, text: str, start: int) -> int | None:
        """The earliest deny or allow match still open at the end of `text`; a match longer than
        `max_match_chars` is not waited for."""
        if self._partials is None:
            # An allow match still growing may yet exempt a deny match: both kinds are followed.
            cap = self.settings.max_match_chars
            self._partials = []
            for pattern, width in zip(self.patterns(), self._widths, strict=True):
                ahead = lookahead_width(pattern.pattern)
                margin = cap if ahead is None else min(cap, ahead)
                self._partials.append(Partial(pattern, margin=margin, cap=cap if width is None else width))
        return earliest(self._partials, text, start)


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


def lookahead_width(pattern: str) -> int | None:
    """How far past a match its lookaheads read (0 without any); None when unbounded or unknown."""
    try:
        parser = importlib.import_module("re._parser")
        constants = importlib.import_module("re._constants")
        tree = parser.parse(pattern, FLAGS)
    except Exception:
        return None
    widest = 0

    def walk(items: Any) -> bool:
        nonlocal widest
        for op, av in items:
            if op in (constants.ASSERT, constants.ASSERT_NOT) and av[0] == 1:
                width = av[1].getwidth()[1]
                if width >= constants.MAXREPEAT:
                    return False
                widest = max(widest, width)
            for child in _children(op, av, constants):
                if not walk(child):
                    return False
        return True

    return widest if walk(tree.data) else None


def _children(op: Any, av: Any, constants: Any) -> list[Any]:
    """The sub-patterns of one node of the `re` parse tree."""
    if op in (constants.SUBPATTERN,):
        return [av[3]]
    if op in (constants.MAX_REPEAT, constants.MIN_REPEAT, constants.POSSESSIVE_REPEAT):
        return [av[2]]
    if op in (constants.ASSERT, constants.ASSERT_NOT):
        return [av[1]]
    if op is constants.BRANCH:
        return list(av[1])
    if op is constants.ATOMIC_GROUP:
        return [av]
    if op is constants.GROUPREF_EXISTS:
        return [av[1]] + ([av[2]] if av[2] is not None else [])
    return []


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

__all__ = ["RegexGuard", "RegexSettings", "fold_pattern", "lookahead_width", "pattern_width"]
