"""Text normalisation for guards, keeping a map back to the original offsets.

Rules run on the normalised text: NFKC (full-width and compatibility forms), case folding,
format and zero-width characters removed, and common confusables (Cyrillic and Greek look-alikes)
mapped to ASCII. `Normalized.span` maps a match back to the original text, so redaction replaces
exactly what the client sent.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache

#: look-alikes seen in evasion attempts (Cyrillic, Greek, Latin variants), after NFKC and case
#: folding, by the ASCII letter they imitate; escaped so the source shows which is which
_LOOKALIKES = {
    "a": "\u0430\u03b1",
    "b": "\u0432",
    "c": "\u0441\u03f2",
    "d": "\u0501",
    "e": "\u0435\u03b5",
    "g": "\u0261",
    "h": "\u043d",
    "i": "\u0456\u03b9\u0131",
    "j": "\u0458",
    "k": "\u043a\u03ba",
    "l": "\u04cf\u2113",
    "m": "\u043c",
    "o": "\u043e\u03bf",
    "p": "\u0440\u03c1",
    "q": "\u051b",
    "s": "\u0455",
    "t": "\u0442\u03c4",
    "u": "\u03c5",
    "v": "\u03bd",
    "w": "\u051d",
    "x": "\u0445\u03c7",
    "y": "\u0443",
}
CONFUSABLES = {ch: ascii_ for ascii_, chars in _LOOKALIKES.items() for ch in chars}


@dataclass(frozen=True, slots=True)
class Normalized:
    """A normalised text and, for each of its characters, the index of its original character."""

    text: str
    #: None when offsets are unchanged (ASCII text)
    origin: tuple[int, ...] | None
    original: str

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The original [start, end) of the normalised [start, end)."""
        if self.origin is None:
            return (start, end)
        if start >= end:
            return (start, start)
        return (self.origin[start], self.origin[end - 1] + 1)


@lru_cache(maxsize=4096)
def _fold(ch: str, casefold: bool) -> str:
    if unicodedata.category(ch) == "Cf":  # zero-width joiners, soft hyphens, bidi controls ...
        return ""
    out = unicodedata.normalize("NFKC", ch)
    if casefold:
        out = out.casefold()
    return "".join(CONFUSABLES.get(c, c) for c in out if unicodedata.category(c) != "Cf")


def normalize(text: str, *, casefold: bool = True) -> Normalized:
    """Normalise `text` for matching; ASCII text takes a fast path."""
    if text.isascii():
        # Only case folding can change ASCII; offsets are the identity.
        return Normalized(text.lower() if casefold else text, None, text)
    chars: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(text):
        out = _fold(ch, casefold)
        chars.append(out)
        origin.extend([i] * len(out))
    return Normalized("".join(chars), tuple(origin), text)
