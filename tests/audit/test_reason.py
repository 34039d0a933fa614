"""The audit reason: a code and a bounded message, scrubbed and with personal data and secrets
replaced by labels."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from sluicegate.audit.reason import MAX_REASON_CHARS, reason_of, redact
from sluicegate.errors import BadRequest, UpstreamError
from sluicegate.scrub import NOTHING, Scrubber

KEY = "sk-proj-Zq3vX9pL2mN8bR4tY7wK1cF6hJ0dS5gA"


def call(error: Any, scrub: Scrubber = NOTHING) -> Any:
    return SimpleNamespace(error=error, scrub=scrub)


def test_no_error_no_reason() -> None:
    assert reason_of(call(None)) is None


def test_a_code_then_the_message_without_key_card_email_or_token() -> None:
    message = (
        f"provider 'x' rejected the request: card 4539 1488 0343 6467 of jane.doe@acme-mail.com was refused; "
        f"key {KEY[:20]}, other key AKIA2OGYBAH6STMMNXNY"
    )
    reason = reason_of(call(UpstreamError(message, code="upstream_bad_request"), Scrubber([KEY])))
    assert reason is not None and reason.startswith("upstream_bad_request: provider 'x' rejected")
    assert "[CREDIT_CARD]" in reason and "4539" not in reason
    assert "[EMAIL]" in reason and "jane.doe@" not in reason
    assert KEY[:8] not in reason and "AKIA2OGYBAH6STMMNXNY" not in reason


def test_the_reason_is_bounded() -> None:
    reason = reason_of(call(BadRequest("word " * 500)))
    assert reason is not None and len(reason) == MAX_REASON_CHARS and reason.startswith("invalid_request_error: ")


def test_plain_text_is_left_alone() -> None:
    assert (
        redact("The model 'gpt-4o-mini' is overloaded (HTTP 529).")
        == "The model 'gpt-4o-mini' is overloaded (HTTP 529)."
    )
