"""Guard kind `secrets`: API keys, tokens and private keys, by provider format and by entropy.

Runs on text normalised without case folding (key formats are case-sensitive). Provider patterns
come first; `high_entropy` then reports long random-looking tokens none of them claimed. Findings
are labelled with the detector's name (`aws_access_key_id`, ...), never with the secret.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Container, Sequence
from itertools import pairwise
from typing import ClassVar, Literal, get_args

from pydantic import Field

from sluicegate.config.model import GuardConfig
from sluicegate.guardrails.base import EVERY, Guard, GuardContext, GuardSettings, register_guard_kind, settings_as
from sluicegate.guardrails.decode import base64_text
from sluicegate.guardrails.matcher import Partial, earliest
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
#: the patterns' lookaheads read one character past a match
LOOKAHEAD = 1

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
# `=` only as padding at the end: `name=value` is two tokens
_TOKEN = r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{%d,%d}={0,2}(?![A-Za-z0-9+/=_-])"
#: what a key's body holds when it is a stand-in in templates (`sk-your-key-goes-here`,
#: `<redacted>`, `xxxx...`), not a key. Published sample keys (AWS's `AKIA...EXAMPLE`, jwt.io's
#: token) are reported: they are well-formed credentials, and the gateway cannot tell which
#: well-formed key a provider would accept.
_PLACEHOLDER = re.compile(r"(.)\1{5}|your|here|placeholder|redacted|changeme|replace_?me|xxx", re.IGNORECASE)
#: a digest's name before it: integrity fields (`sha512-`), go.sum (`h1:`), pip (`sha256:`), ...
_DIGEST_BEFORE = re.compile(
    r"(?:sha(?:1|224|256|384|512)|md5|blake2[bs]?|h1|integrity|checksum|digest)[-:=\s\"']{1,3}$", re.IGNORECASE
)
_DIGEST_TOKEN = re.compile(r"(?:sha(?:1|224|256|384|512)|md5)-", re.IGNORECASE)
#: words of an identifier or a path: `Profile`, `card`, `HTTP`
_WORD = re.compile(r"[A-Z]?[a-z]{2,}")
_PIECE = re.compile(r"(?:[A-Z]?[a-z]+|[A-Z]+|[a-z]+)\d*|\w{1,3}")
_SEPARATORS = re.compile(r"[_\-/.]")


def _body(match: re.Match[str]) -> str:
    """A provider key without its prefix (`sk-proj-`, `ghp_`, `xoxb-`, `AKIA`...)."""
    text = match.group()
    cut = max(text.rfind("-", 0, 12), text.rfind("_", 0, 12))
    return text[cut + 1 :] if cut >= 0 else text[4:]


def key_ok(match: re.Match[str], text: str) -> bool:
    """A provider key, not a placeholder (`sk-your-key-goes-here`, `xxxx`)."""
    return not is_placeholder(_body(match))


def is_placeholder(body: str) -> bool:
    """True when a key's body is a stand-in: a word such as `your` or `placeholder`, a run of one
    character, or too little entropy for a random key."""
    return bool(_PLACEHOLDER.search(body)) or shannon_entropy(body) < 3.0


def _always(match: re.Match[str], text: str) -> bool:
    return True


#: per detector, literals one of which every match holds; a text with none of them is not searched
GATES: dict[Detector, tuple[str, ...]] = {
    "private_key": ("-----BEGIN",),
    "jwt": ("eyJ",),
    "anthropic_api_key": ("sk-ant-",),
    "openai_api_key": ("sk-",),
    "aws_access_key_id": ("AKIA", "ASIA", "ABIA", "ACCA"),
    "aws_secret_access_key": ("ecret", "ECRET"),
    "github_token": ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    "slack_token": ("xox",),
    "stripe_secret_key": ("_live_",),
    "google_api_key": ("AIza",),
}
#: per detector: is a match a finding (from the match and the text around it)
VALIDATORS: dict[Detector, Callable[[re.Match[str], str], bool]] = {
    "private_key": _always,
    "jwt": _always,
    "aws_secret_access_key": lambda m, text: not is_placeholder(m.group("secret")),
}


def is_identifier(token: str) -> bool:
    """True when `token` reads as names rather than noise: a path or a snake/kebab/dotted name
    whose every piece is a word, or a camelCase name mostly of words with few case changes."""
    pieces = [p for p in _SEPARATORS.split(token) if p]
    if len(pieces) >= 2 and all(_PIECE.fullmatch(p) for p in pieces):
        return True
    words = sum(len(m.group()) for m in _WORD.finditer(token))
    return words >= 0.6 * len(token) and class_changes(token) <= 0.5


def class_changes(token: str) -> float:
    """How often neighbouring characters change class (upper, lower, digit, other): about 0.6
    for random base62, 0.3 for camelCase names."""
    classes = ["u" if c.isupper() else "l" if c.islower() else "d" if c.isdigit() else "o" for c in token]
    return sum(a != b for a, b in pairwise(classes)) / max(1, len(token) - 1)


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
        self._partials: list[Partial] | None = None

    @property
    def reach(self) -> int | None:
        """The widest detector: a PEM private key when that one is on, else a JWT."""
        return self._reach

    def patterns(self) -> Sequence[re.Pattern[str]]:
        """The provider formats in the order they claim text, then `high_entropy`'s tokens."""
        return (*(p for _, p in self._patterns), *(() if self._token is None else (self._token,)))

    def scan_text(self, text: str) -> list[tuple[int, int, str]]:
        """Secrets in `text`, as (start, end, detector name)."""
        return self.find(text, EVERY)

    def find(self, text: str, candidates: Container[int]) -> list[tuple[int, int, str]]:
        """`scan_text`, running only the detectors that may match."""
        found: list[tuple[int, int, str]] = []
        if not candidates:
            return found
        taken: list[tuple[int, int]] = []
        for i, (name, pattern) in enumerate(self._patterns):
            if i not in candidates or not any(literal in text for literal in GATES[name]):
                continue  # the key's prefix is nowhere: the pattern cannot match
            validate = VALIDATORS.get(name, key_ok)
            for m in pattern.finditer(text):
                start, end = m.span("secret") if "secret" in pattern.groupindex else m.span()
                if not any_overlap(taken, start, end) and validate(m, text):
                    found.append((start, end, name))
                    taken.append((start, end))
        if self._token is not None and len(self._patterns) in candidates:
            for m in self._token.finditer(text):
                start, end = m.span()
                if not any_overlap(taken, start, end) and self.is_random(m.group(), text, start):
                    found.append((start, end, "high_entropy"))
        found.sort()
        return found

    def pending(self, text: str, start: int) -> int | None:
        """Where a key or token may still be growing at the end of `text`."""
        if self._partials is None:
            self._partials = [
                Partial(p, margin=LOOKAHEAD, cap=pattern_width(p.pattern) or MAX_TOKEN_CHARS) for p in self.patterns()
            ]
        return earliest(self._partials, text, start)

    def is_random(self, token: str, text: str, start: int) -> bool:
        """`high_entropy`'s validator: a random-looking token that is not a digest, an encoded
        text, an identifier or a path."""
        # Keys in base62/base64 mix upper case, lower case and digits; words, paths and identifiers
        # seldom do. Hex alone (hashes, UUIDs) is left out: it fills prompts about code and logs.
        if _HEX.fullmatch(token):
            return False
        if not (
            any(c.isdigit() for c in token) and any(c.isupper() for c in token) and any(c.islower() for c in token)
        ):
            return False
        if shannon_entropy(token) < self.settings.entropy_threshold:
            return False
        if _DIGEST_BEFORE.search(text, max(0, start - 16), start) or _DIGEST_TOKEN.match(token):
            return False
        if is_identifier(token) or _PLACEHOLDER.search(token):
            return False
        # Base64 of text is text (its decoded form is scanned as such), not a key.
        return base64_text(token) is None


def shannon_entropy(text: str) -> float:
    """Bits per character of `text`'s character distribution."""
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values()) if n else 0.0


register_guard_kind("secrets", SecretsGuard)

__all__ = [
    "DETECTORS",
    "GATES",
    "PATTERNS",
    "VALIDATORS",
    "SecretsGuard",
    "SecretsSettings",
    "class_changes",
    "is_identifier",
    "is_placeholder",
    "key_ok",
    "shannon_entropy",
]
