"""What an audit event keeps of a call's content: HMACs always, the content itself where asked.

`AnswerTap` sees every body message the client is sent (`pipeline.FinishingSend`): it feeds the
answer's HMAC and, for a captured call, keeps its first `max_bytes`. `Capture` decides which calls
are captured, from `audit.capture` rules compiled once per config.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from sluicegate.config.model import CaptureRule

#: what a cut capture ends with
CUT_MARK = "…[cut]"


class AnswerTap:
    """The HMAC of a response body as sent, and its first bytes when the call is captured."""

    __slots__ = ("_mac", "kept", "limit")

    def __init__(self, mac: hmac.HMAC, limit: int) -> None:
        self._mac = mac
        #: bytes kept for capture (up to `limit`; 0: none)
        self.limit = limit
        self.kept = bytearray() if limit else None

    def update(self, data: bytes) -> None:
        self._mac.update(data)
        kept = self.kept
        if kept is not None and len(kept) <= self.limit:
            kept += data[: self.limit + 1 - len(kept)]

    def hexdigest(self) -> str:
        return self._mac.hexdigest()

    def text(self) -> str | None:
        """The kept answer as text, cut to the bound."""
        if self.kept is None:
            return None
        return _cut(bytes(self.kept), self.limit)


def _cut(data: bytes, limit: int) -> str:
    if len(data) <= limit:
        return data.decode("utf-8", "replace")
    return data[:limit].decode("utf-8", "ignore") + CUT_MARK


class Capture:
    """Which calls have their content kept, and how much of it."""

    def __init__(self, rules: Sequence[CaptureRule]) -> None:
        self._rules = [
            (_names(rule.consumers), _names(rule.groups), _names(rule.models), rule.max_bytes) for rule in rules
        ]

    def __bool__(self) -> bool:
        return bool(self._rules)

    def limit(self, consumer: str | None, groups: Sequence[str], model: str | None) -> int:
        """The byte bound of the first rule the call matches; 0 when none does."""
        for consumers, group_names, models, max_bytes in self._rules:
            if consumers is not None and not _match(consumers, consumer):
                continue
            if group_names is not None and not any(_match(group_names, g) for g in groups):
                continue
            if models is not None and not _match(models, model):
                continue
            return max_bytes
        return 0


def request_text(body: object, limit: int) -> str:
    """A request body (after the guards' redactions) as captured: JSON, cut to `limit` bytes."""
    return _cut(orjson.dumps(body, default=str), limit)


def _names(values: list[str] | None) -> frozenset[str] | None:
    return frozenset(values) if values is not None else None


def _match(names: frozenset[str], value: str | None) -> bool:
    return "*" in names or (value is not None and value in names)
