"""The audit `reason` of a failed or refused call: its code and a bounded, safe message.

Error messages may quote an upstream, which may quote the prompt (a card number) or a
credential. The reason keeps the error's code, then its message scrubbed of the call's
credentials (`sluicegate.scrub`), with whatever the built-in `secrets` and `pii` guard kinds find
in it (default settings) replaced by their labels, cut to `MAX_REASON_CHARS`.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from sluicegate.config.model import GuardConfig
from sluicegate.guardrails.base import Guard, GuardContext, guard_kind
from sluicegate.vault import Vault

if TYPE_CHECKING:
    from sluicegate.call import Call

#: the longest reason kept (characters)
MAX_REASON_CHARS = 500


def reason_of(call: Call) -> str | None:
    """`<code>: <message>` of the call's error, scrubbed, redacted and bounded; None without one."""
    error = call.error
    if error is None:
        return None
    # Scrub whole, redact, then cut: a cut never leaves part of a key or a card number behind.
    message = redact(call.scrub(error.message, None))
    reason = f"{error.code}: {message}"
    return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 1] + "…"


def redact(text: str) -> str:
    """`text` with what the `secrets` and `pii` guards find replaced by `[LABEL]`."""
    if not text:
        return text
    found: list[tuple[int, int, str]] = []
    for guard in _guards():
        for start, end, label in guard.scan_text(text):
            if all(end <= s or start >= e for s, e, _ in found):
                found.append((start, end, label))
    for start, end, label in sorted(found, reverse=True):
        text = text[:start] + f"[{label}]" + text[end:]
    return text


def preload() -> None:
    """Build the redacting guards now: the gateway does at startup, in a worker thread, so that
    its first failed call does not wait for them (the libraries that check a candidate, such as
    `phonenumbers` and `python-stdnum`, still load only when a message holds one)."""
    _guards()


async def _no_model(model: str, messages: list[dict[str, object]], max_tokens: int) -> str:
    raise RuntimeError("the audit's guards ask no model")


@functools.cache
def _guards() -> tuple[Guard, ...]:
    """The `secrets` and `pii` guards with their default settings, built once (`preload`)."""
    context = GuardContext(http=lambda: None, vault=Vault(), complete=_no_model)
    out = []
    for kind in ("secrets", "pii"):
        registered = guard_kind(kind)
        assert registered is not None, kind
        cls = registered.cls
        config = GuardConfig(name=f"audit-{kind}", kind=kind, action="redact")
        out.append(cls(config, cls.Settings(), context))
    return tuple(out)
