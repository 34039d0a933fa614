"""Where a stream's text may be released: the earliest point a match may still be growing from.

`pending` asks a guard where its earliest open match begins, in the form of the text it matches
(and in percent and entity views, where a match may be growing too); `open_run` finds an encoded
run more text could extend. Both answer in offsets of the text as sent: normalised positions are
mapped back through `Normalized.origin`, so invisible characters count for nothing.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sluicegate.guardrails.decode import RUN_PATTERNS, Encoding, views
from sluicegate.guardrails.matcher import Partial, earliest
from sluicegate.guardrails.normalize import Normalized, normalize

if TYPE_CHECKING:
    from sluicegate.guardrails.base import Guard
    from sluicegate.guardrails.engine import TextScan

#: an encoded run (base64, percent escapes) longer than this is not waited for whole
MAX_RUN_CHARS = 16384
_OPEN_RUNS = [Partial(p, margin=1, cap=MAX_RUN_CHARS) for p in RUN_PATTERNS]
_ESCAPES: frozenset[Encoding] = frozenset(("percent", "html"))
#: an escape at the end of the text that more characters would complete or change
_OPEN_ESCAPE = re.compile(r"(?:%[0-9A-Fa-f]?|&(?:#[0-9]{0,7}|#[xX][0-9a-fA-F]{0,6}|[A-Za-z][A-Za-z0-9]{0,31})?)\Z")


def pending(guard: Guard, scan: TextScan, text: str, decided: int) -> int | None:
    """Where `guard`'s earliest match still open begins, at or after `decided` (as sent): in the
    form of the text it matches (remote guards: their reach counted in normalised characters
    too), and in escape views (percent, entities), since a match may be growing inside them."""
    norm = variant(scan, guard, text)
    at = guard.pending(norm.text, index(norm, decided))
    at = None if at is None else position(norm, at)
    escapes = guard.decodings & _ESCAPES
    if guard.remote or not escapes or not scan.decoded.get(guard.decodings, [[]])[0]:
        return at
    # The view of the text up to an escape still being written (`%2`, `&#10`), which would
    # read as itself: what follows it in the view is not known yet. (A base64 run is held
    # whole while open, `open_run`, and final once closed.)
    cased = cased_form(scan, text)
    known = _OPEN_ESCAPE.search(cased.text)
    for view in views(cased.text[: known.start() if known else len(cased.text)], escapes):
        inner = normalize(view.text, casefold=guard.casefold)
        found = guard.pending(inner.text, 0)
        if found is None or found >= len(inner.text):
            continue
        # view -> the text with case kept -> the text as sent
        raw = cased.span(*view.span(*inner.span(found, found + 1)))[0]
        if raw >= decided:
            at = raw if at is None else min(at, raw)
    return at


def cased_form(scan: TextScan, text: str) -> Normalized:
    """The scanned text normalised with case kept (what decoding and windows are counted on)."""
    norms = scan.norms.get(False)
    if norms is None:
        norms = scan.norms[False] = [normalize(text, casefold=False)]
    return norms[0]


def variant(scan: TextScan, guard: Guard, text: str) -> Normalized:
    """The form of the text `guard` matched on; for a remote guard, whose reach is counted in
    normalised characters too, the text normalised with case kept."""
    if guard.remote:
        return cased_form(scan, text)
    return scan.norms[guard.casefold][0]


def index(norm: Normalized, raw: int) -> int:
    """The first normalised character at or after offset `raw` of the text as sent."""
    if norm.origin is None:
        return min(raw, len(norm.text))
    return bisect_left(norm.origin, raw)


def position(norm: Normalized, at: int) -> int:
    """Where the normalised character `at` is in the text as sent (the end past the last)."""
    at = min(max(at, 0), len(norm.text))
    return norm.span(at, at)[0]


def open_run(scan: TextScan, text: str, decided: int, guards: Sequence[Guard]) -> int | None:
    """Where an encoded run that more text could extend begins (as sent), for decoding guards."""
    if not any(g.decodings for g in guards if not g.remote):
        return None
    cased = cased_form(scan, text)
    at = earliest(_OPEN_RUNS, cased.text, index(cased, decided))
    return None if at is None else position(cased, at)


__all__ = ["MAX_RUN_CHARS", "cased_form", "index", "open_run", "pending", "position", "variant"]
