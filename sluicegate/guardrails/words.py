"""Guard kind `words`: a word list matched as whole words (or whole phrases) in normalised text.

The words are normalised like the texts (see `normalize`) and compiled into one
trie-shaped pattern when the config loads, so a long list costs little more than a short one.
Findings are labelled `words[i]` (the entry's index in `words`), never with the matched text.
"""

from __future__ import annotations

import re
from collections.abc import Container, Sequence

from pydantic import Field, field_validator

from sluicegate.config.model import GuardConfig
from sluicegate.guardrails.base import EVERY, Guard, GuardContext, GuardSettings, register_guard_kind, settings_as
from sluicegate.guardrails.matcher import Partial
from sluicegate.guardrails.normalize import normalize

#: the whitespace a phrase's words may have between them in the text
MAX_GAP_CHARS = 8
MAX_WORD_CHARS = 256


class WordsSettings(GuardSettings):
    """Settings of a `words` guard."""

    #: words or phrases; a phrase matches with any run of whitespace between its words
    words: list[str] = Field(min_length=1)

    @field_validator("words")
    @classmethod
    def _not_blank(cls, words: list[str]) -> list[str]:
        for i, word in enumerate(words):
            if not normalize(word).text.split():
                raise ValueError(f"word [{i}] is blank")
            if len(word) > MAX_WORD_CHARS:
                raise ValueError(f"word [{i}] is longer than {MAX_WORD_CHARS} characters")
        return words


class WordsGuard(Guard):
    """Finds the listed words and phrases where they stand as whole words."""

    Settings = WordsSettings

    def __init__(self, config: GuardConfig, settings: GuardSettings, context: GuardContext) -> None:
        super().__init__(config, settings, context)
        self.settings = settings = settings_as(settings, WordsSettings)
        #: normalised phrase (words joined by one space) -> index of its first entry in `words`
        self._index: dict[str, int] = {}
        for i, word in enumerate(settings.words):
            # Confusables are folded by how each case looks (capital eta looks like `h`, small eta like `n`), so a
            # word of another script is entered in each of its common cases.
            for variant in dict.fromkeys((word, word.lower(), word.upper(), word.title())):
                self._index.setdefault(" ".join(normalize(variant).text.split()), i)
        phrases = list(self._index)
        # Whole words by lookaround rather than \b, so entries that start or end with a symbol
        # (`c++`, `.env`) still need a non-word character (or the text's edge) beside them.
        self._pattern = re.compile(rf"(?<!\w)(?:{_trie_pattern(phrases)})(?!\w)", re.IGNORECASE)
        self._reach = max(len(p) + p.count(" ") * (MAX_GAP_CHARS - 1) for p in phrases)
        self._partial: Partial | None = None

    @property
    def reach(self) -> int | None:
        """The longest entry, with the widest whitespace its words may have between them."""
        return self._reach

    def patterns(self) -> Sequence[re.Pattern[str]]:
        """The one pattern of every entry."""
        return (self._pattern,)

    def scan_text(self, text: str) -> list[tuple[int, int, str]]:
        """Whole-word occurrences of the listed words and phrases in `text`."""
        return self.find(text, EVERY)

    def find(self, text: str, candidates: Container[int]) -> list[tuple[int, int, str]]:
        """`scan_text`, when the pattern may match."""
        found: list[tuple[int, int, str]] = []
        if 0 not in candidates:
            return found
        for m in self._pattern.finditer(text):
            key = " ".join(m.group().split())
            index = self._index.get(key)
            if index is None:
                index = self._index.get(key.casefold())
            if index is not None:
                found.append((m.start(), m.end(), f"words[{index}]"))
        return found

    def pending(self, text: str, start: int) -> int | None:
        """Where an entry may still be completing at the end of `text`."""
        if self._partial is None:
            # `(?!\w)` reads one character past a match
            self._partial = Partial(self._pattern, margin=1, cap=self._reach)
        return self._partial.pending(text, start)


def _trie_pattern(phrases: list[str]) -> str:
    """One pattern matching any of `phrases`, shaped as a trie: alternatives share their prefixes."""
    root = _Node()
    for phrase in phrases:
        node = root
        for char in phrase:  # a space stands for the gap between a phrase's words
            node = node.children.setdefault(char, _Node())
        node.is_end = True
    return root.render()


class _Node:
    __slots__ = ("children", "is_end")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.is_end = False

    def render(self) -> str:
        branches = [
            (rf"\s{{1,{MAX_GAP_CHARS}}}" if char == " " else re.escape(char)) + child.render()
            for char, child in self.children.items()
        ]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        # Greedy: a longer entry is tried before stopping at the shorter one that ends here.
        return f"(?:{body})?" if self.is_end else body


register_guard_kind("words", WordsGuard)

__all__ = ["WordsGuard", "WordsSettings"]
