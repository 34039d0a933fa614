"""Removing a call's credentials from upstream text before a client, a log or the audit sees it.

Every upstream text the gateway repeats (error bodies, in-band stream errors, 200 answers that
are error bodies, audit reasons) goes through a `Scrubber` built from the secret values the call
sent upstream. It removes each value whole and every run of 8 or more characters that belongs to
one: a key the upstream cut to a length, a masked echo (`sk-proj-abcd****wxyz`) that keeps 8
characters, a prefix that ends where a message was cut. It scrubs first and cuts to length after,
so a cut can never leave a prefix of a key behind.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: runs of a secret this long or longer are removed wherever they appear
MIN_RUN = 8
#: what stands where a secret (or part of one) was
REDACTED = "[redacted]"
#: the longest message an error keeps once scrubbed (characters)
MAX_MESSAGE_CHARS = 1000


class Scrubber:
    """Removes given secret values, and every run of 8+ of their characters, from text.

    Usage: `scrub = Scrubber([key]); safe = scrub(text, 500)`. The values stay inside this object
    (its repr shows none of them); the pattern is compiled on first use and reused.
    """

    __slots__ = ("_grams", "_pattern", "_short")

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        grams: set[str] = set()
        short: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            if len(secret) < MIN_RUN:
                short.add(secret)
            else:
                grams.update(secret[i : i + MIN_RUN] for i in range(len(secret) - MIN_RUN + 1))
        self._grams = frozenset(grams)
        # Short values (a test key, a PIN) are removed whole; longest first.
        self._short = sorted(short, key=len, reverse=True)
        self._pattern: re.Pattern[str] | None = None

    def __repr__(self) -> str:
        return f"Scrubber({len(self._grams) + len(self._short)} values)"

    def __bool__(self) -> bool:
        return bool(self._grams or self._short)

    def __call__(self, text: str, limit: int | None = MAX_MESSAGE_CHARS) -> str:
        """`text` without the secrets, then cut to `limit` characters (None: not cut)."""
        if self._grams:
            text = self._remove_runs(text)
        for value in self._short:
            if value in text:
                text = text.replace(value, REDACTED)
        if limit is not None and len(text) > limit:
            text = text[: max(limit - 1, 0)] + "…"
        return text

    def _remove_runs(self, text: str) -> str:
        pattern = self._pattern
        if pattern is None:
            # One alternation of every 8-character window: a C-speed search finds where a run
            # starts; most texts hold none and cost that one search.
            alternatives = sorted(self._grams)
            pattern = self._pattern = re.compile("|".join(map(re.escape, alternatives)))
        match = pattern.search(text)
        if match is None:
            return text
        grams = self._grams
        n = len(text)
        out: list[str] = []
        kept = 0
        while match is not None:
            start = match.start()
            end = start + MIN_RUN
            # Extend over every window that overlaps the run and belongs to a secret.
            i = start + 1
            while i < end and i + MIN_RUN <= n:
                if text[i : i + MIN_RUN] in grams:
                    end = i + MIN_RUN
                i += 1
            out.append(text[kept:start])
            out.append(REDACTED)
            kept = end
            match = pattern.search(text, end)
        out.append(text[kept:])
        return "".join(out)


#: a scrubber for calls that sent no secret upstream
NOTHING = Scrubber()
