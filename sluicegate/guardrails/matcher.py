"""The patterns of every pattern-based guard: scanned in one pass per text, and matched
partially on streams.

Pattern-based kinds (`regex`, `words`, `pii`, `secrets`) list the regular expressions their scan
runs (`Guard.patterns`). When the config loads, `Matcher` gathers them per text variant (case
folded or not), turns each into a prefilter (`prefilter.py`) and compiles them into one hyperscan
database; databases are cached by their pattern list, so a reload that keeps the patterns does not
compile again. Per text, one hyperscan pass says which patterns may match; a guard then runs only
those with Python's `re` and its validators, so its findings are exactly those of running every
pattern. A pattern without a prefilter, and every pattern when hyperscan is not installed, is
always run (the same findings, slower; logged once).

On a stream, `Partial` tells where the earliest match begins that more text could still complete,
extend or invalidate (the `regex` package's partial matching): text before it can be released.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import regex

from sluicegate.guardrails.decode import RUN_PATTERNS
from sluicegate.guardrails.prefilter import alphabet, non_ascii_byte, prefilter

if TYPE_CHECKING:
    from sluicegate.guardrails.base import Guard

log = logging.getLogger("sluicegate.guardrails")

#: one pattern: (source, flags) as `re.compile` takes them, and whether its prefilter takes both
#: cases of every ASCII letter (see `prefilter`)
Spec = tuple[str, int, bool]


class _ByteMap(dict[int, str]):
    """`str.translate` table: an ASCII character stays, any other becomes its class byte."""

    def __missing__(self, cp: int) -> str:
        char = chr(cp)
        out = char if cp < 0x80 else chr(non_ascii_byte(char))
        if len(self) < 65536:  # bounded: a text cannot grow this map without end
            self[cp] = out
        return out


_BYTES = _ByteMap()


def as_bytes(text: str) -> bytes:
    """The text as hyperscan scans it: ASCII as is, every other character as its class byte."""
    if text.isascii():
        return text.encode("ascii")
    return text.translate(_BYTES).encode("latin-1")


def _hyperscan() -> Any:
    try:
        import hyperscan
    except ImportError:
        return None
    return hyperscan


class PatternSet:
    """Patterns compiled into one hyperscan database; `maybe(text)` is the indexes that may match."""

    def __init__(self, specs: Sequence[Spec]) -> None:
        self.specs = tuple(specs)
        hs = _hyperscan()
        expressions = {i: prefilter(*spec) for i, spec in enumerate(self.specs)}
        compiled = {i: e.encode("latin-1") for i, e in expressions.items() if e is not None}
        self._db: Any = None
        if hs is None:
            if compiled:
                log.warning("hyperscan is not installed: guards run each of their patterns on every text")
            compiled = {}
        elif compiled:
            self._db = self._compile(hs, compiled)
            if self._db is None:
                # One of them does not compile: find which, and compile the others.
                compiled = {i: e for i, e in compiled.items() if self._compile(hs, {i: e}) is not None}
                self._db = self._compile(hs, compiled) if compiled else None
        #: patterns that are always run: no prefilter, or it did not compile
        self.always = frozenset(i for i in range(len(self.specs)) if i not in compiled)
        self.every = frozenset(range(len(self.specs)))
        for i in sorted(self.always):
            if expressions[i] is not None or hs is None:
                log.info("pattern %.80r runs on every text (no prefilter compiled)", self.specs[i][0])
        self._scratch = threading.local()
        self._hyperscan = hs

    @staticmethod
    def _compile(hs: Any, expressions: dict[int, bytes]) -> Any:
        db = hs.Database(mode=hs.HS_MODE_BLOCK)
        flags = hs.HS_FLAG_PREFILTER | hs.HS_FLAG_SINGLEMATCH
        try:
            db.compile(
                expressions=list(expressions.values()),
                ids=list(expressions),
                elements=len(expressions),
                flags=[flags] * len(expressions),
            )
        except hs.error:
            return None
        return db

    def maybe(self, text: str) -> frozenset[int]:
        """The indexes of the patterns that may match in `text` (the others cannot)."""
        if self._db is None:
            return self.always
        # Scratch space is per thread: slow guards scan in worker threads.
        scratch = getattr(self._scratch, "space", None)
        if scratch is None:
            scratch = self._scratch.space = self._hyperscan.Scratch(self._db)
        found: set[int] = set()
        try:
            self._db.scan(as_bytes(text), match_event_handler=_collect, context=found, scratch=scratch)
        except self._hyperscan.error as exc:
            # Never a reason to miss a match: every pattern runs on this text.
            log.warning("hyperscan could not scan a text (%s): every pattern runs on it", exc)
            return self.every
        return self.always | found if self.always else frozenset(found)


def _collect(index: int, start: int, end: int, flags: int, found: set[int]) -> None:
    found.add(index)


@lru_cache(maxsize=32)
def pattern_set(specs: tuple[Spec, ...]) -> PatternSet:
    """The compiled set of `specs`, shared by every snapshot that has the same patterns."""
    return PatternSet(specs)


_NONE: frozenset[int] = frozenset()


class Matcher:
    """The pattern sets of one config snapshot: per text variant (case folded or not), the
    patterns of every pattern-based guard, deduplicated, in one compiled set. The set of the text
    with case kept also holds the shapes of encoded runs (`decode.RUN_PATTERNS`): the same pass
    tells whether a text may have a decoded view at all. An ASCII text is read in one pass for
    both variants (its case folded form is its lower case): a third set holds the text-with-case
    patterns and the case-folded ones taking both cases."""

    def __init__(self, guards: Iterable[Guard]) -> None:
        specs: dict[bool, dict[Spec, int]] = {}
        #: per guard (by id): its variant, and per pattern of the variant the guard's indexes of it
        self._ids: dict[int, tuple[bool, dict[int, tuple[int, ...]]]] = {}
        decodes = False
        for guard in guards:
            if guard.remote:
                continue
            decodes = decodes or bool(guard.decodings)
            patterns = guard.patterns()
            if patterns:
                known = specs.setdefault(guard.casefold, {})
                local: dict[int, tuple[int, ...]] = {}
                for i, p in enumerate(patterns):
                    key = known.setdefault((p.pattern, p.flags, False), len(known))
                    local[key] = (*local.get(key, ()), i)
                self._ids[id(guard)] = (guard.casefold, local)
        self._encoded: tuple[int, ...] = ()
        if decodes:
            known = specs.setdefault(False, {})
            self._encoded = tuple(known.setdefault((p.pattern, p.flags, False), len(known)) for p in RUN_PATTERNS)
        self._sets = {variant: pattern_set(tuple(known)) for variant, known in specs.items()}
        #: patterns with case kept, then the case-folded ones (ids shifted by `_split`), for ASCII texts
        self._both: PatternSet | None = None
        self._split = len(specs.get(False, ()))
        if len(specs) == 2:
            folded = tuple((source, flags, True) for source, flags, _ in specs[True])
            self._both = pattern_set((*specs[False], *folded))

    def variant(self, guard: Guard) -> bool | None:
        """The text variant whose pass serves `guard` (its `casefold`), or None if it has no patterns here."""
        entry = self._ids.get(id(guard))
        return None if entry is None else entry[0]

    def maybe(self, variant: bool, text: str) -> frozenset[int]:
        """One pass over `text` for every pattern of `variant`."""
        patterns = self._sets.get(variant)
        return frozenset() if patterns is None else patterns.maybe(text)

    def maybe_ascii(self, text: str) -> dict[bool, frozenset[int]] | None:
        """For an ASCII text: one pass telling both variants' patterns that may match (that of
        the case-folded one read on its lower case); None when one pass cannot tell both."""
        if self._both is None or not text.isascii():
            return None
        found = self._both.maybe(text)
        split = self._split
        return {
            False: frozenset(i for i in found if i < split),
            True: frozenset(i - split for i in found if i >= split),
        }

    def candidates(self, guard: Guard, maybe: frozenset[int]) -> frozenset[int]:
        """`guard`'s share of a pass's result: the indexes of its patterns that may match."""
        if not maybe:
            return _NONE
        local = self._ids[id(guard)][1]
        return frozenset(i for key in maybe if key in local for i in local[key])

    def may_hold_encoded(self, maybe: frozenset[int]) -> bool:
        """From a pass over the text with case kept: may it hold an encoded run?"""
        return not self._encoded or any(i in maybe for i in self._encoded)


# ------------------------------------------------------------------------------------- streams

_REGEX_FLAGS = (
    (re.IGNORECASE, regex.IGNORECASE),
    (re.MULTILINE, regex.MULTILINE),
    (re.DOTALL, regex.DOTALL),
    (re.VERBOSE, regex.VERBOSE),
    (re.ASCII, regex.ASCII),
)


class Partial:
    """One pattern, for streams: where the earliest match begins that more text could complete,
    extend or invalidate.

    The pattern is wrapped as `(?:P)[\\s\\S]{0,margin}\\Z[\\s\\S]` and searched with
    `partial=True`: a way through P that ends within `margin` characters of the end (a lookahead
    reads that far) or runs into the end is alive; one that ends earlier is decided (found or
    not) and stays so, whatever follows. The wrapper can never match in full, because `regex`
    returns a full match anywhere before a partial one: so the leftmost alive start comes back.
    `cap` bounds how far back a match may begin (the pattern's width, or the declared reach of
    an unbounded one). A pattern the `regex` package does not compile is held back by `cap`.
    Before searching, a cheap test: an alive match holds one of the last `margin + 1` characters,
    so unless one of them is in the pattern's alphabet, nothing is alive.
    """

    def __init__(self, pattern: re.Pattern[str], *, margin: int, cap: int | None) -> None:
        self.margin = margin
        self.cap = cap
        self._alphabet = alphabet(pattern.pattern, pattern.flags)
        flags = 0
        for ours, theirs in _REGEX_FLAGS:
            if pattern.flags & ours:
                flags |= theirs
        # In verbose mode a trailing comment would swallow the closing parenthesis.
        body = pattern.pattern + ("\n" if pattern.flags & re.VERBOSE else "")
        try:
            self._rx: regex.Pattern[str] | None = regex.compile(
                f"(?:{body})[\\s\\S]{{0,{margin}}}\\Z[\\s\\S]", flags | regex.VERSION0
            )
        except (regex.error, ValueError, OverflowError):
            log.info("pattern %.80r is held back by its width on streams (no partial matching)", pattern.pattern)
            self._rx = None

    def pending(self, text: str, start: int, tail: bytes | None = None) -> int | None:
        """The offset (at or after `start`) of the earliest match still alive; None if none is.
        `tail`: the end of the text as hyperscan reads it (`as_bytes`), if known."""
        n = len(text)
        pos = start if self.cap is None else max(start, n - self.cap - self.margin)
        if pos >= n:
            return None
        if self._rx is None:
            return pos
        if self._alphabet is not None:
            if tail is None or len(tail) <= self.margin:
                tail = as_bytes(text[-self.margin - 1 :])
            if self._alphabet.isdisjoint(tail[-self.margin - 1 :]):
                return None
        m = self._rx.search(text, pos, partial=True)
        return None if m is None or m.start() >= n else m.start()


#: how much of a text's end `earliest` turns into bytes once for every pattern's cheap test
_TAIL = 8


def earliest(partials: Iterable[Partial], text: str, start: int) -> int | None:
    """The earliest `pending` of several patterns."""
    if start >= len(text):
        return None
    tail = as_bytes(text[-_TAIL:])
    out: int | None = None
    for partial in partials:
        at = partial.pending(text, start, tail)
        if at is not None and (out is None or at < out):
            out = at
            if at <= start:
                break  # nothing is earlier than the start
    return out


__all__ = ["Matcher", "Partial", "PatternSet", "as_bytes", "earliest", "pattern_set"]
