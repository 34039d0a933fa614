"""Decoded views of a text for guards: HTML entities, percent-encoding and base64, nested.

A model reads `&#112;roject`, `%70roject` and `cHJvamVjdA==` as `project`, so local guards scan
the decoded forms as well as the text. A view is a decoded text with, for each of its characters,
the span of the text it came from: a finding in a view is reported over what the client sent (the
entity, the escape, or the whole base64 run). Escapes are undone until none is left, and base64
runs are decoded again inside what they decode to, up to `MAX_DEPTH` levels in all, within a
budget of decoded characters proportional to the text. Hex, rot13, and other encodings are not
decoded (see docs/guardrails-normalisation.md).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import html
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

Encoding = Literal["base64", "percent", "html"]
ENCODINGS: tuple[Encoding, ...] = get_args(Encoding)
#: decoding levels in all (an entity inside a percent escape inside base64 is three)
MAX_DEPTH = 4
#: the fewest characters of a base64 run worth decoding (12 bytes)
MIN_BASE64_CHARS = 16
#: decoded characters allowed per text: this many per character of the text, plus `BUDGET_FLOOR`
BUDGET_PER_CHAR = 2
BUDGET_FLOOR = 4096

_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});?")
_PERCENT = re.compile(r"(?:%[0-9A-Fa-f]{2})+")
# A run of either base64 alphabet, padded or not, possibly wrapped in lines (MIME, `base64` CLI).
_BASE64 = re.compile(
    r"(?<![A-Za-z0-9+/=_-])"
    r"(?:[A-Za-z0-9+/]{16,}={0,2}(?:\r?\n[A-Za-z0-9+/]{4,}={0,2})*|[A-Za-z0-9_-]{16,}={0,2})"
    r"(?![A-Za-z0-9+/=_-])"
)
#: what an encoded run looks like: a text that none of these matches has no decoded view
RUN_PATTERNS: tuple[re.Pattern[str], ...] = (_ENTITY, _PERCENT, _BASE64)
_BASE64_LINES = re.compile(r"[^\r\n]+")
# What decoded bytes must not hold much of to be text: C0 and C1 controls other than whitespace.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd]")
_PREFIX_CHARS = 64


@dataclass(frozen=True, slots=True)
class View:
    """A decoded form of (part of) a text, and the way back to the text's offsets."""

    text: str
    #: the encodings undone, outermost first: `base64`, `percent+html`
    encoding: str
    #: the whole encoded run in the text
    run: tuple[int, int]
    #: per character of `text`, its [start, end) in the text; None: each character stands for `run`
    starts: Sequence[int] | None = None
    ends: Sequence[int] | None = None

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The text's [start, end) that the view's [start, end) was decoded from."""
        if self.starts is None or self.ends is None or not self.text:
            return self.run
        if start >= end:
            start = min(start, len(self.text) - 1)
            return (self.starts[start], self.starts[start])
        return (self.starts[start], self.ends[end - 1])


def views(text: str, encodings: Iterable[Encoding] = ENCODINGS) -> list[View]:
    """Every decoded view of `text` with `encodings` undone; empty when nothing is encoded."""
    wanted = frozenset(encodings)
    if not wanted or (text.isalnum() and len(text) < MIN_BASE64_CHARS):
        return []
    budget = [BUDGET_FLOOR + BUDGET_PER_CHAR * len(text)]
    return _expand(text, wanted, MAX_DEPTH, budget)


def _expand(text: str, wanted: frozenset[Encoding], depth: int, budget: list[int]) -> list[View]:
    out: list[View] = []
    current: View | None = None
    # Escapes (entities, then percent) are undone in passes until none is left: `%2570` is `%70`
    # after one pass and `p` after two. The last pass's view holds every earlier one's decoding.
    while depth > 0:
        source = text if current is None else current.text
        step = _unescape(source, wanted)
        if step is None or len(step.text) > budget[0]:
            break
        budget[0] -= len(step.text)
        current = step if current is None else compose(current, step)
        depth -= 1
    if current is not None:
        out.append(current)
    if depth <= 0 or "base64" not in wanted:
        return out
    base = text if current is None else current.text
    for run in _base64_runs(base, budget):
        inner = run if current is None else compose(current, run)
        out.append(inner)
        out.extend(compose(inner, v) for v in _expand(run.text, wanted, depth - 1, budget))
    return out


def compose(outer: View, inner: View) -> View:
    """`inner` (a view of `outer.text`) as a view of the text `outer` was decoded from."""
    encoding = f"{outer.encoding}+{inner.encoding}"
    run = outer.span(*inner.run)
    if outer.starts is None or outer.ends is None or inner.starts is None or inner.ends is None:
        return View(inner.text, encoding, run)
    starts, ends = outer.starts, outer.ends
    return View(
        inner.text,
        encoding,
        run,
        [starts[s] for s in inner.starts],
        [ends[e - 1] for e in inner.ends],
    )


def _unescape(text: str, wanted: frozenset[Encoding]) -> View | None:
    """One pass of HTML entities then percent escapes over the whole text; None when neither occurs."""
    view = _html(text) if "html" in wanted and "&" in text else None
    if "percent" in wanted:
        source = text if view is None else view.text
        percent = _percent(source) if "%" in source else None
        if percent is not None:
            view = percent if view is None else compose(view, percent)
    return view


def _html(text: str) -> View | None:
    pieces: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    pos = 0
    for m in _ENTITY.finditer(text):
        decoded = html.unescape(m.group())
        if decoded == m.group():
            continue
        _copy(text, pos, m.start(), pieces, starts, ends)
        pieces.append(decoded)
        starts.extend([m.start()] * len(decoded))
        ends.extend([m.end()] * len(decoded))
        pos = m.end()
    if not pieces:
        return None
    _copy(text, pos, len(text), pieces, starts, ends)
    return View("".join(pieces), "html", (0, len(text)), starts, ends)


def _percent(text: str) -> View | None:
    pieces: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    pos = 0
    for m in _PERCENT.finditer(text):
        _copy(text, pos, m.start(), pieces, starts, ends, plus_is_space=True)
        raw = bytes.fromhex(m.group().replace("%", ""))
        at = m.start()
        i = 0
        while i < len(raw):
            size = _utf8_size(raw[i])
            try:
                char = raw[i : i + size].decode("utf-8")
            except UnicodeDecodeError:
                char, size = m.group()[3 * i : 3 * i + 3], 1  # not UTF-8: the escape stays as written
            pieces.append(char)
            starts.extend([at + 3 * i] * len(char))
            ends.extend([at + 3 * (i + size)] * len(char))
            i += size
        pos = m.end()
    if not pieces:
        return None
    _copy(text, pos, len(text), pieces, starts, ends, plus_is_space=True)
    return View("".join(pieces), "percent", (0, len(text)), starts, ends)


def _utf8_size(lead: int) -> int:
    if lead < 0xC2 or lead > 0xF4:
        return 1
    return 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4


def _copy(
    text: str,
    start: int,
    end: int,
    pieces: list[str],
    starts: list[int],
    ends: list[int],
    *,
    plus_is_space: bool = False,
) -> None:
    """Copy text[start:end] into a view unchanged (`+` read as a space in form-encoded text)."""
    if start >= end:
        return
    chunk = text[start:end]
    pieces.append(chunk.replace("+", " ") if plus_is_space else chunk)
    starts.extend(range(start, end))
    ends.extend(range(start + 1, end + 1))


def _base64_runs(text: str, budget: list[int]) -> list[View]:
    out: list[View] = []
    for m in _BASE64.finditer(text):
        if "\n" in m.group():
            # A wrapped block decodes whole; when it does not, each line may still be a run.
            decoded = _base64_text(m.group(), budget)
            if decoded is not None:
                out.append(View(decoded, "base64", m.span()))
                continue
            for line in _BASE64_LINES.finditer(m.group()):
                if len(line.group()) >= MIN_BASE64_CHARS:
                    decoded = _base64_text(line.group(), budget)
                    if decoded is not None:
                        out.append(View(decoded, "base64", (m.start() + line.start(), m.start() + line.end())))
            continue
        decoded = _base64_text(m.group(), budget)
        if decoded is not None:
            out.append(View(decoded, "base64", m.span()))
    return out


def _base64_text(run: str, budget: list[int]) -> str | None:
    """The UTF-8 text `run` encodes, or None when it is not base64 of text (or over budget)."""
    data = "".join(run.split()).rstrip("=")
    if len(data) % 4 == 1 or len(data) * 3 // 4 > budget[0]:
        return None
    altchars = b"-_" if ("-" in data or "_" in data) else None
    # The head first: binary (an image, a hash, a random key) fails here, cheaply.
    head = _decode(data[:_PREFIX_CHARS], altchars)
    if head is None:
        return None
    try:
        # A head cut inside a multi-byte character is still text: decode it as a stream would.
        if not _looks_like_text(codecs.getincrementaldecoder("utf-8")().decode(head, final=False)):
            return None
    except UnicodeDecodeError:
        return None
    raw = _decode(data, altchars)
    if raw is None:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not _looks_like_text(text):
        return None
    budget[0] -= len(text)
    return text


def base64_text(run: str) -> str | None:
    """The UTF-8 text that the base64 `run` encodes, or None when it does not encode text."""
    return _base64_text(run, [len(run)])


def _decode(data: str, altchars: bytes | None) -> bytes | None:
    padded = data + "=" * (-len(data) % 4)
    try:
        return base64.b64decode(padded, altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        return None


def _looks_like_text(text: str) -> bool:
    return bool(text) and len(_CONTROL.findall(text)) * 20 <= len(text)


__all__ = ["ENCODINGS", "MAX_DEPTH", "RUN_PATTERNS", "Encoding", "View", "base64_text", "compose", "views"]
