"""Guard kind `length`: limits on characters, words, tokens and message parts per request.

Counts run across every text of the request. Each limit exceeded gives findings labelled with the
limit's name (`max_chars`, ...) that cover everything past the limit: from where it was crossed to
the end of that text, and every later text whole; so `redact` truncates, `block` refuses.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from pydantic import Field, model_validator

from sluicegate.config.model import GuardConfig
from sluicegate.guardrails.base import Finding, Guard, GuardContext, GuardSettings, register_guard_kind, settings_as
from sluicegate.tokens import count_tokens, encoding_for

_WORD = re.compile(r"\S+")


class LengthSettings(GuardSettings):
    """Settings of a `length` guard; at least one limit must be set."""

    max_chars: int | None = Field(None, gt=0)
    #: words are runs of non-whitespace characters
    max_words: int | None = Field(None, gt=0)
    #: tokens as OpenAI's `o200k_base` encoding counts them (an estimate for other models)
    max_tokens: int | None = Field(None, gt=0)
    #: message parts: the framework passes one text per message part (a message with a text and
    #: a tool call is two), so this counts texts, which is at least the number of messages
    max_messages: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _some_limit(self) -> LengthSettings:
        if all(v is None for v in (self.max_chars, self.max_words, self.max_tokens, self.max_messages)):
            raise ValueError("set at least one of max_chars, max_words, max_tokens, max_messages")
        return self


class LengthGuard(Guard):
    """Reports what lies past each configured limit."""

    Settings = LengthSettings

    def __init__(self, config: GuardConfig, settings: GuardSettings, context: GuardContext) -> None:
        super().__init__(config, settings, context)
        self.settings = settings = settings_as(settings, LengthSettings)
        # Limits count what is sent: a decoded view is the same text again, not more of it.
        self.decodings = frozenset()

    def scan(self, texts: Sequence[str]) -> list[Finding]:
        """Findings for each limit the request exceeds, covering what lies past it."""
        s = self.settings
        found: list[Finding] = []
        if s.max_chars is not None:
            found += _past(texts, s.max_chars, "max_chars", len, lambda _text, n: n)
        if s.max_words is not None:
            found += _past(texts, s.max_words, "max_words", _count_words, _word_offset)
        if s.max_tokens is not None:
            found += _past(texts, s.max_tokens, "max_tokens", lambda t: count_tokens([t]), _token_offset)
        if s.max_messages is not None and len(texts) > s.max_messages:
            found += [Finding(i, 0, len(texts[i]), "max_messages") for i in range(s.max_messages, len(texts))]
        return found


def _past(
    texts: Sequence[str],
    limit: int,
    label: str,
    count: Callable[[str], int],
    offset: Callable[[str, int], int],
) -> list[Finding]:
    """Findings from where `limit` units (counted by `count`) are used up to the end of the texts.

    `offset(text, n)` is the character offset in `text` just after its first `n` units.
    """
    used = 0
    for i, text in enumerate(texts):
        n = count(text)
        if used + n > limit:
            first = Finding(i, offset(text, limit - used), len(text), label)
            return [first, *(Finding(j, 0, len(t), label) for j, t in enumerate(texts) if j > i and t)]
        used += n
    return []


def _count_words(text: str) -> int:
    return len(text.split())


def _word_offset(text: str, n: int) -> int:
    if n == 0:
        return 0
    for i, m in enumerate(_WORD.finditer(text), 1):
        if i == n:
            return m.end()
    return len(text)


def _token_offset(text: str, n: int) -> int:
    if n == 0:
        return 0
    enc = encoding_for(None)
    tokens = enc.encode(text, disallowed_special=())
    # A token may end inside a multi-byte character: count only the characters it completes.
    return len(enc.decode_bytes(tokens[:n]).decode("utf-8", errors="ignore"))


register_guard_kind("length", LengthGuard)

__all__ = ["LengthGuard", "LengthSettings"]
