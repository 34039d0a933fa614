"""Text normalisation for guards, keeping a map back to the original offsets.

Rules run on the normalised text, which is what a model reads with the disguise taken off: Unicode
tag characters decoded to the ASCII they stand for (and flagged), default-ignorable code points
removed, compatibility decomposition (NFKD) with combining marks dropped, decimal digits of every
script as ASCII digits, TR39 confusables folded to their prototype, and case folded where the guard
asks. `Normalized.span` maps a match back to the original text, so redaction replaces exactly what
the client sent. ASCII text is left as it is (case aside); see docs/guardrails-normalisation.md.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources

#: Unicode tag characters (U+E0020..U+E007E) spell ASCII invisibly; models read them
TAG_FIRST, TAG_LAST = 0xE0020, 0xE007E
_TAGS = re.compile("[\U000e0000-\U000e007f]")
#: stretches of text with non-ASCII characters, short ASCII gaps (spaces, punctuation) included
_NON_ASCII_RUNS = re.compile(r"[^\x00-\x7f](?:[\x00-\x7f]{0,8}[^\x00-\x7f])*")
#: categories removed after decomposition: non-spacing and enclosing marks, format characters
_DROPPED = frozenset(("Mn", "Me", "Cf"))
DATA_FILE = "unicode_fold.txt"


@dataclass(frozen=True, slots=True)
class Normalized:
    """A normalised text and, for each of its characters, the index of its original character."""

    text: str
    #: None when offsets are unchanged (ASCII text, or every character folded to one character)
    origin: Sequence[int] | None
    original: str
    #: the original held Unicode tag characters (decoded into `text`); the engine audits it
    tags: bool = False

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The original [start, end) of the normalised [start, end)."""
        if self.origin is None:
            return (start, end)
        if start >= end:
            if start < len(self.origin):
                return (self.origin[start], self.origin[start])
            return (len(self.original), len(self.original))
        return (self.origin[start], self.origin[end - 1] + 1)


@dataclass(frozen=True, slots=True)
class FoldTables:
    """The generated data: default-ignorable code points and the confusables prototypes."""

    ignorable: frozenset[int]
    #: character -> its prototype, case kept (for `secrets` and `pii`)
    cased: dict[str, str]
    #: character -> its prototype, case folded; characters absent fold with `str.casefold`
    folded: dict[str, str]
    #: where the data comes from: `icu`, `unicode`, `unicodedata` versions
    versions: dict[str, str]


@cache
def tables() -> FoldTables:
    """The folding tables, read from the package's data file at first use."""
    text = resources.files("sluicegate.guardrails").joinpath("data", DATA_FILE).read_text("utf-8")
    return parse_tables(text)


def parse_tables(text: str) -> FoldTables:
    """Parse the data file written by `scripts/gen_unicode_tables.py`."""
    ignorable: set[int] = set()
    cased: dict[str, str] = {}
    folded: dict[str, str] = {}
    versions: dict[str, str] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith("# version "):
            key, _, value = line[len("# version ") :].partition("=")
            versions[key.strip()] = value.strip()
            continue
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "ignorable":
            first, _, last = line.partition("..")
            ignorable.update(range(int(first, 16), int(last or first, 16) + 1))
        elif section == "fold":
            key, cased_to, folded_to = line.split(";")
            char = chr(int(key, 16))
            if cased_to != "=":
                cased[char] = "".join(chr(int(cp, 16)) for cp in cased_to.split())
            if folded_to != "=":
                folded[char] = "".join(chr(int(cp, 16)) for cp in folded_to.split())
    return FoldTables(frozenset(ignorable), cased, folded, versions)


def decompose(ch: str, ignorable: frozenset[int]) -> str:
    """The steps before confusables: tag decoding, default-ignorables removed, NFKD without
    combining marks, decimal digits of every script as ASCII digits, Hangul composed again."""
    cp = ord(ch)
    if TAG_FIRST <= cp <= TAG_LAST:
        return chr(cp - 0xE0000)
    if cp in ignorable:
        return ""
    kept = []
    for x in unicodedata.normalize("NFKD", ch):
        category = unicodedata.category(x)
        if category in _DROPPED or ord(x) in ignorable:
            continue
        if category == "Nd":
            kept.append(str(unicodedata.decimal(x)))
        else:
            kept.append(x)
    # NFKD splits Hangul syllables into jamo; composing again keeps Korean text as it was.
    return unicodedata.normalize("NFC", "".join(kept))


def fold_char(ch: str, casefold: bool, data: FoldTables) -> str:
    """One character of the original as the guards read it."""
    if ch.isascii():
        return ch.lower() if casefold else ch
    out = []
    for x in decompose(ch, data.ignorable):
        if x.isascii():
            out.append(x.lower() if casefold else x)
        elif casefold:
            folded = data.folded.get(x)
            out.append(x.casefold() if folded is None else folded)
        else:
            out.append(data.cased.get(x, x))
    return "".join(out)


class _FoldMap(dict[int, str]):
    """`str.translate` table filled on demand: code point -> folded text."""

    __slots__ = ("casefold", "data", "uneven")

    def __init__(self, casefold: bool, data: FoldTables) -> None:
        super().__init__()
        self.casefold = casefold
        self.data = data
        #: characters whose fold is not exactly one character (offsets shift)
        self.uneven: set[str] = set()

    def __missing__(self, cp: int) -> str:
        ch = chr(cp)
        out = fold_char(ch, self.casefold, self.data)
        if len(out) != 1:
            self.uneven.add(ch)
        if len(self) < 65536:  # bounded: a text cannot grow this map without end
            self[cp] = out
        return out


@cache
def _fold_map(casefold: bool) -> _FoldMap:
    return _FoldMap(casefold, tables())


def normalize(text: str, *, casefold: bool = True) -> Normalized:
    """Normalise `text` for matching; ASCII text takes a fast path."""
    if text.isascii():
        # Only case folding can change ASCII; offsets are the identity.
        return Normalized(text.lower() if casefold else text, None, text)
    table = _fold_map(casefold)
    uneven = table.uneven
    if len(text.encode("utf-8")) - len(text) > len(text) // 4:
        return _normalize_whole(text, table)
    pieces: list[str] = []
    origin: list[int] | None = None
    pos = 0
    # Only the runs holding non-ASCII characters go through the table: English text with a few
    # typographic quotes costs little more than ASCII.
    for run in _NON_ASCII_RUNS.finditer(text):
        start, end = run.span()
        head = text[pos:start]
        pieces.append(head.lower() if casefold else head)
        folded = run.group().translate(table)
        pieces.append(folded)
        if origin is None and not uneven.isdisjoint(run.group()):
            origin = list(range(start))
        elif origin is not None:
            origin.extend(range(pos, start))
        if origin is not None:
            for i in range(start, end):
                ch = text[i]
                if ch in uneven:
                    origin.extend([i] * len(table[ord(ch)]))
                else:
                    origin.append(i)
        pos = end
    tail = text[pos:]
    pieces.append(tail.lower() if casefold else tail)
    if origin is not None:
        origin.extend(range(pos, len(text)))
    return Normalized("".join(pieces), origin, text, _TAGS.search(text) is not None)


def _normalize_whole(text: str, table: _FoldMap) -> Normalized:
    # Mostly non-ASCII text (another script): one `translate` over all of it.
    folded = text.translate(table)
    tags = _TAGS.search(text) is not None
    uneven = table.uneven
    if uneven.isdisjoint(text):
        return Normalized(folded, None, text, tags)
    origin: list[int] = []
    for i, ch in enumerate(text):
        if ch in uneven:
            origin.extend([i] * len(table[ord(ch)]))
        else:
            origin.append(i)
    return Normalized(folded, origin, text, tags)


def table_versions() -> dict[str, str]:
    """The ICU, Unicode and Python `unicodedata` versions the folding data was generated with."""
    return dict(tables().versions)


__all__ = ["Normalized", "decompose", "fold_char", "normalize", "parse_tables", "table_versions", "tables"]
