"""A Python regular expression turned into a hyperscan prefilter: an expression that matches
wherever the original can (and possibly elsewhere), in a syntax hyperscan compiles.

Hyperscan scans bytes: ASCII characters as themselves, every other character as one byte for its
class among the ones `re` tells apart (`non_ascii_byte`: decimal digit, other word character,
whitespace, other). The pattern is parsed by Python's own `re` parser and rebuilt node by node:
each character class, literal or category becomes the set of bytes it takes (its ASCII members as
`re` itself matches them under the pattern's flags, case folding included, and the non-ASCII
classes it may take); lookarounds, anchors and word boundaries are dropped (they only ever remove
matches), a back reference becomes a copy of its group, atomic groups and possessive or lazy
repeats become plain ones, and long counted repeats are loosened to open ones. Each step can only
widen what matches, so a text the prefilter rejects cannot hold a match of the original. Patterns
that can match the empty string, or hold something this does not know, get no prefilter (the
engine always runs them).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

#: counted repeats above this become open-ended (`{20,512}` -> `{20,}`): cheaper to compile
MAX_COUNT = 64


class Untranslatable(Exception):
    """The pattern holds something the translation does not know; it runs without a prefilter."""


def _parser() -> Any:
    # The `re` parser is private but stable across CPython versions; anything unexpected from it
    # means "no prefilter", which costs speed, never a match.
    return importlib.import_module("re._parser")


def _constants() -> Any:
    return importlib.import_module("re._constants")


# ------------------------------------------------------------------------------------- character sets

#: the byte a non-ASCII character stands as in the text hyperscan scans: by the categories `re`
#: knows (decimal digits, other word characters, whitespace, anything else)
DIGIT, WORD, SPACE, OTHER = 0x80, 0x81, 0x82, 0x83
ALL_NON_ASCII = frozenset((DIGIT, WORD, SPACE, OTHER))
_CATEGORIES = {
    # name: (the code in `re` source, the non-ASCII bytes it takes, the same with re.ASCII)
    "CATEGORY_DIGIT": ("\\d", frozenset((DIGIT,)), frozenset()),
    "CATEGORY_NOT_DIGIT": ("\\D", frozenset((WORD, SPACE, OTHER)), ALL_NON_ASCII),
    "CATEGORY_SPACE": ("\\s", frozenset((SPACE,)), frozenset()),
    "CATEGORY_NOT_SPACE": ("\\S", frozenset((DIGIT, WORD, OTHER)), ALL_NON_ASCII),
    "CATEGORY_WORD": ("\\w", frozenset((DIGIT, WORD)), frozenset()),
    "CATEGORY_NOT_WORD": ("\\W", frozenset((SPACE, OTHER)), ALL_NON_ASCII),
}


def non_ascii_byte(char: str) -> int:
    """The byte a non-ASCII character stands as: `re`'s `\\d` is `isdecimal`, `\\w` is `isalnum`
    or `_`, `\\s` is `isspace`, for every Unicode character."""
    if char.isdecimal():
        return DIGIT
    if char.isalnum():
        return WORD
    return SPACE if char.isspace() else OTHER


def _source(op: str, av: Any) -> str:
    """Python `re` source of one character-matching node, to ask `re` which ASCII it takes."""
    if op == "LITERAL":
        return f"\\U{av:08x}"
    if op == "NOT_LITERAL":
        return f"[^\\U{av:08x}]"
    parts = []
    negate = False
    for item_op, item_av in av:
        if item_op == "NEGATE":
            negate = True
        elif item_op == "LITERAL":
            parts.append(f"\\U{item_av:08x}")
        elif item_op == "RANGE":
            parts.append(f"\\U{item_av[0]:08x}-\\U{item_av[1]:08x}")
        elif item_op == "CATEGORY" and item_av in _CATEGORIES:
            parts.append(_CATEGORIES[item_av][0])
        else:
            raise Untranslatable(f"{item_op} {item_av}")
    return "[" + ("^" if negate else "") + "".join(parts) + "]"


#: the ASCII letters that non-ASCII ones fold onto under IGNORECASE
_FOLDED_ONTO = frozenset("iskISK")


def _non_ascii(op: str, av: Any, flags: int) -> frozenset[int]:
    """The non-ASCII bytes a node may take: exact for categories; every one where it names
    non-ASCII characters or is negated; and with IGNORECASE, `i`, `s` and `k` also take the four
    non-ASCII letters `re` folds onto them (U+0130, U+0131, U+017F, U+212A: word characters), as
    the `re` documentation lists; no other ASCII letter has a non-ASCII case partner."""
    ascii_only = bool(flags & re.ASCII)
    folds = bool(flags & re.IGNORECASE) and not ascii_only
    if op == "NOT_LITERAL":
        return ALL_NON_ASCII
    if op == "LITERAL":
        if av >= 0x80:
            return ALL_NON_ASCII if folds else frozenset((non_ascii_byte(chr(av)),))
        return frozenset((WORD,)) if folds and chr(av) in _FOLDED_ONTO else frozenset()
    out: set[int] = set()
    for item_op, item_av in av:
        if item_op == "NEGATE":
            return ALL_NON_ASCII
        if item_op == "CATEGORY":
            _, unicode_bytes, ascii_bytes = _CATEGORIES[item_av]
            out |= ascii_bytes if ascii_only else unicode_bytes
        elif item_op == "LITERAL":
            if item_av >= 0x80:
                return ALL_NON_ASCII
            if folds and chr(item_av) in _FOLDED_ONTO:
                out.add(WORD)
        elif item_op == "RANGE":
            lo, hi = item_av
            if hi >= 0x80:
                return ALL_NON_ASCII
            if folds and any(chr(c) in _FOLDED_ONTO for c in range(lo, hi + 1)):
                out.add(WORD)
    return frozenset(out)


@lru_cache(maxsize=4096)
def leaf_bytes(op: str, av: Any, flags: int) -> tuple[int, ...]:
    """The bytes one character-matching node (`LITERAL`, `NOT_LITERAL`, `IN`, `ANY`) takes in the
    scanned text: the ASCII characters `re` matches with it under `flags`, and the non-ASCII bytes."""
    if op == "ANY":
        ascii_taken = [b for b in range(0x80) if b != 10 or flags & re.DOTALL]
        return (*ascii_taken, *sorted(ALL_NON_ASCII))
    node = re.compile(_source(op, av), flags & (re.IGNORECASE | re.ASCII))
    ascii_taken = [b for b in range(0x80) if node.match(chr(b))]
    return (*ascii_taken, *sorted(_non_ascii(op, av, flags)))


def _both_cases(taken: Sequence[int]) -> tuple[int, ...]:
    extra = {ord(chr(b).swapcase()) for b in taken if b < 0x80 and chr(b).isalpha()}
    return tuple(sorted(extra.union(taken)))


def _class(taken: Sequence[int]) -> str:
    if not taken:
        raise Untranslatable("a class that matches nothing")
    parts = []
    start = prev = taken[0]
    for b in (*taken[1:], -2):
        if b == prev + 1:
            prev = b
            continue
        parts.append(f"\\x{start:02x}" if start == prev else f"\\x{start:02x}-\\x{prev:02x}")
        start = prev = b
    return "[" + "".join(parts) + "]"


# ------------------------------------------------------------------------------------- the tree


class _Translator:
    def __init__(self, case_closed: bool) -> None:
        self.groups: dict[int, str] = {}
        self.c = _constants()
        self.case_closed = case_closed

    def leaf(self, op: str, av: Any, flags: int) -> str:
        taken = leaf_bytes(op, av, flags)
        if self.case_closed:
            taken = _both_cases(taken)
        return _class(taken)

    def sub(self, items: Iterable[tuple[Any, Any]], flags: int) -> str:
        return "".join(self.node(op, av, flags) for op, av in items)

    def node(self, op: Any, av: Any, flags: int) -> str:
        c = self.c
        if op in (c.LITERAL, c.NOT_LITERAL, c.ANY):
            return self.leaf(str(op), av, flags)
        if op is c.IN:
            items = tuple((str(o), str(a) if o is c.CATEGORY else a) for o, a in av)
            return self.leaf("IN", items, flags)
        if op is c.BRANCH:
            return "(?:" + "|".join(self.sub(alt, flags) for alt in av[1]) + ")"
        if op is c.SUBPATTERN:
            group, add, remove, body = av
            inner = self.sub(body, (flags | add) & ~remove)
            if group is not None:
                self.groups[group] = inner
            return "(?:" + inner + ")"
        if op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
            lo, hi, body = av
            inner = self.sub(body, flags)
            if hi is c.MAXREPEAT or hi > MAX_COUNT:
                # Fewer repetitions and no upper bound: more texts match, never fewer.
                return f"(?:{inner}){{{min(lo, MAX_COUNT)},}}"
            return f"(?:{inner}){{{lo},{hi}}}"
        if op is c.ATOMIC_GROUP:
            return "(?:" + self.sub(av, flags) + ")"
        if op in (c.AT, c.ASSERT, c.ASSERT_NOT):
            return ""  # a condition on the surroundings: without it, a match only gets easier
        if op is c.GROUPREF:
            # The text a group matched, again: a match of the group's pattern (any text if unknown).
            return "(?:" + self.groups.get(av, "[\\x00-\\x83]*") + ")"
        if op is c.GROUPREF_EXISTS:
            _, yes, no = av
            return "(?:" + self.sub(yes, flags) + "|" + (self.sub(no, flags) if no is not None else "") + ")"
        raise Untranslatable(str(op))


@lru_cache(maxsize=1024)
def prefilter(source: str, flags: int, case_closed: bool = False) -> str | None:
    """A hyperscan expression (bytes, see `non_ascii_byte`) matching wherever `source` can match
    under `flags`, or None when there is none (it can match the empty string, or cannot be
    translated). `case_closed`: every ASCII letter the pattern takes, it takes in both cases, so
    it matches an ASCII text wherever the original matches the text in lower case."""
    try:
        tree = _parser().parse(source, flags)
        if tree.getwidth()[0] == 0:
            return None  # matches the empty string: hyperscan would report it everywhere
        return _Translator(case_closed).sub(tree.data, tree.state.flags)
    except (Untranslatable, re.error, RecursionError, AttributeError, TypeError, ValueError):
        return None


@lru_cache(maxsize=1024)
def alphabet(source: str, flags: int) -> frozenset[int] | None:
    """The bytes (see `non_ascii_byte`) a match of `source` can be made of (what lookarounds read
    aside); None when it cannot be told."""
    try:
        tree = _parser().parse(source, flags)
        out: set[int] = set()
        _Alphabet(out).sub(tree.data, tree.state.flags)
    except (Untranslatable, re.error, RecursionError, AttributeError, TypeError, ValueError):
        return None
    return frozenset(out)


class _Alphabet(_Translator):
    """Walks the tree as the translation does, collecting what its character nodes take."""

    def __init__(self, out: set[int]) -> None:
        super().__init__(case_closed=False)
        self.out = out

    def leaf(self, op: str, av: Any, flags: int) -> str:
        self.out.update(leaf_bytes(op, av, flags))
        return ""


__all__ = [
    "DIGIT",
    "MAX_COUNT",
    "OTHER",
    "SPACE",
    "WORD",
    "Untranslatable",
    "alphabet",
    "leaf_bytes",
    "non_ascii_byte",
    "prefilter",
]
