"""Guard kind `secrets`: API keys, tokens and private keys, by provider format and by entropy.

Runs on text normalised without case folding (key formats are case-sensitive). Provider patterns
come first; `high_entropy` then reports long random-looking tokens none of them claimed. Findings
are labelled with the detector's name (`aws_access_key_id`, ...), never with the secret.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import ClassVar, Literal, get_args

from pydantic import Field

from sluicegate.config.model import GuardConfig
from sluicegate.guardrails.base import Guard, GuardContext, GuardSettings, register_guard_kind, settings_as
from sluicegate.guardrails.regex import any_overlap, pattern_width

Detector = Literal[
    "private_key",
    "jwt",
    "anthropic_api_key",
    "openai_api_key",
    "aws_access_key_id",
    "aws_secret_access_key",
    "github_token",
    "slack_token",
    "stripe_secret_key",
    "google_api_key",
    "high_entropy",
]
DETECTORS: tuple[Detector, ...] = get_args(Detector)
#: the longest token `high_entropy` considers; longer runs (inline images, blobs) are not keys
MAX_TOKEN_CHARS = 512

#: provider formats, in the order they claim text (an `sk-ant-` key is not also an OpenAI key)
PATTERNS: dict[Detector, str] = {
    # A PEM block, or its header and body when the footer is missing (cut-off text). 4096 characters
    # hold an RSA-4096 key in PKCS#8 with room to spare.
    "private_key": (
        r"-----BEGIN[A-Z0-9 ]{0,32} PRIVATE KEY(?: BLOCK)?-----"
        r"(?:[A-Za-z0-9+/=\s:,.-]{0,4096}?-----END[A-Z0-9 ]{0,32} PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=\s]{0,4096})"
    ),
    # header.payload.signature, both JSON parts base64url of '{"' (so `eyJ`)
    "jwt": r"(?<![\w-])eyJ[A-Za-z0-9_-]{5,1000}\.eyJ[A-Za-z0-9_-]{5,2000}\.[A-Za-z0-9_-]{0,1000}(?![\w-])",
    "anthropic_api_key": r"(?<![\w-])sk-ant-[A-Za-z0-9_-]{20,250}(?![\w-])",
    "openai_api_key": r"(?<![\w-])sk-(?!ant-)(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_-]{20,250}(?![\w-])",
    "aws_access_key_id": r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Za-z0-9])",
    # 40 characters of base64 are too common to report alone: only after a key name that says so
    "aws_secret_access_key": (
        r"(?i:aws.{0,20}?secret.{0,20}?|secret_?access_?key)[\"']?\s{0,5}[:=]{1,2}>?\s{0,5}[\"']?"
        r"(?P<secret>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"
    ),
    "github_token": r"(?<!\w)(?:(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,244})(?!\w)",
    "slack_token": r"(?<![\w-])xox[baprs]-[A-Za-z0-9-]{10,250}(?![\w-])",
    "stripe_secret_key": r"(?<!\w)(?:sk|rk)_live_[A-Za-z0-9]{16,247}(?!\w)",
    "google_api_key": r"(?<![\w-])AIza[A-Za-z0-9_-]{35}(?![\w-])",
}
_HEX = re.compile(r"[0-9a-fA-F-]+")
_TOKEN = r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/=_-]{%d,%d}(?![A-Za-z0-9+/=_-])"


class SecretsSettings(GuardSettings):
    """Settings of a `secrets` guard."""

    #: which detectors run; default: all
    detectors: list[Detector] = Field(default_factory=lambda: list(DETECTORS), min_length=1)
    #: `high_entropy`: the least Shannon entropy (bits per character) of a reported token, which must
    #: also mix upper case, lower case and digits and not be hex alone; random base62 strings of 20
    #: characters score 4.0 on average (3.6 at worst), of 40 characters 4.8; identifiers about 3.8
    entropy_threshold: float = Field(3.8, gt=0, le=8)
    #: `high_entropy`: the shortest token considered
    min_entropy_length: int = Field(20, ge=8, le=MAX_TOKEN_CHARS)


class SecretsGuard(Guard):
    """Finds credentials in text; provider formats first, then high-entropy tokens."""

    Settings = SecretsSettings
    #: keys are case-sensitive: `AKIA...` is an AWS key id, `akia...` is not
    casefold: ClassVar[bool] = False

    def __init__(self, config: GuardConfig, settings: GuardSettings, context: GuardContext) -> None:
        super().__init__(config, settings, context)
        self.settings = settings = settings_as(settings, SecretsSettings)
        self._patterns = [(name, re.compile(p)) for name, p in PATTERNS.items() if name in settings.detectors]
        self._token: re.Pattern[str] | None = None
        widths = [pattern_width(p.pattern) or MAX_TOKEN_CHARS for _, p in self._patterns]
        if "high_entropy" in settings.detectors:
            self._token = re.compile(_TOKEN % (settings.min_entropy_length, MAX_TOKEN_CHARS))
            widths.append(MAX_TOKEN_CHARS)
        self._reach = max(widths)

    @property
    def reach(self) -> int | None:
        """The widest detector: a PEM private key when that one is on, else a JWT."""
        return self._reach

    def scan_text(self, text: str) -> list[tuple[int, int, str]]:
        """Secrets in `text`, as (start, end, detector name)."""
        found: list[tuple[int, int, str]] = []
        taken: list[tuple[int, int]] = []
        for name, pattern in self._patterns:
            for m in pattern.finditer(text):
                start, end = m.span("secret") if "secret" in pattern.groupindex else m.span()
                if not any_overlap(taken, start, end):
                    found.append((start, end, name))
                    taken.append((start, end))
        if self._token is not None:
            for m in self._token.finditer(text):
                start, end = m.span()
                if not any_overlap(taken, start, end) and self._is_random(m.group()):
                    found.append((start, end, "high_entropy"))
        found.sort()
        return found

    def _is_random(self, token: str) -> bool:
        # Keys in base62/base64 mix upper case, lower case and digits; words, paths and identifiers
        # seldom do. Hex alone (hashes, UUIDs) is left out: it fills prompts about code and logs.
        if _HEX.fullmatch(token):
            return False
        if not (
            any(c.isdigit() for c in token) and any(c.isupper() for c in token) and any(c.islower() for c in token)
        ):
            return False
        return shannon_entropy(token) >= self.settings.entropy_threshold


def shannon_entropy(text: str) -> float:
    """Bits per character of `text`'s character distribution."""
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values()) if n else 0.0


register_guard_kind("secrets", SecretsGuard)

__all__ = ["DETECTORS", "PATTERNS", "SecretsGuard", "SecretsSettings", "shannon_entropy"]
