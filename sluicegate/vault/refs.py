"""Secret references as text: their parts, and what a credential looks like, to refuse one in config.

A reference is `scheme://target` (`env://OPENAI_API_KEY`, `file:///run/secrets/key`,
`secret://openai`). A header value may put a word before it (`Bearer env://TOKEN`). The config
refuses a reference whose target is itself a credential (`env://sk-proj-...`: the key pasted where
its variable's name belongs) and a literal credential where a reference belongs; neither message
ever quotes the value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: every scheme a reference may use; `aws-sm` needs `vault.aws`, `vault` needs `vault.hashicorp`
SECRET_SCHEMES = ("env", "file", "secret", "aws-sm", "vault")

#: a POSIX environment variable name, as shells and container runtimes accept them
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_REF = re.compile(r"(?:(?P<prefix>[A-Za-z][A-Za-z0-9_-]{0,31}) +)?(?P<scheme>[a-z][a-z0-9-]*)://(?P<target>\S+)")

#: well-known credential formats (provider API keys, cloud key ids, tokens, JWTs, PEM keys)
_KNOWN = re.compile(
    r"(?:^|[^A-Za-z0-9])(?:"
    r"sk-[A-Za-z0-9_-]{16,}|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{10,}|"
    r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}|AIza[A-Za-z0-9_-]{30,}|"
    r"(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{20,}|glpat-[A-Za-z0-9_-]{16,}|"
    r"xox[abprs]-[A-Za-z0-9-]{10,}|hf_[A-Za-z0-9]{20,}|gsk_[A-Za-z0-9]{20,}|xai-[A-Za-z0-9]{20,}|"
    r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}|-----BEGIN[A-Z ]*PRIVATE KEY"
    r")"
)
_TOKEN = re.compile(r"[A-Za-z0-9+/=_.~-]{16,}")
_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")
_HEX = re.compile(r"[0-9a-fA-F]+")
_MIXED = re.compile(r"^(?=.*[a-z])(?=.*[A-Z])(?=.*[0-9])")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

#: header names that carry credentials: their values must be references, never the value itself
_CREDENTIAL_HEADER = re.compile(
    r"authori[sz]ation|cookie|key|token|secret|auth|passw|pwd|signature|credential|session|bearer|jwt", re.IGNORECASE
)


@dataclass(frozen=True, slots=True)
class SecretRef:
    """A parsed reference: `prefix` is the word before it in a header value (`Bearer`), or ''."""

    scheme: str
    target: str
    prefix: str = ""

    @property
    def ref(self) -> str:
        """The reference alone, as the vault resolves it."""
        return f"{self.scheme}://{self.target}"


def parse_ref(value: str, *, allow_prefix: bool = False) -> SecretRef | None:
    """The reference in `value`, or None when it is not one (of a known scheme)."""
    match = _REF.fullmatch(value)
    if match is None or match["scheme"] not in SECRET_SCHEMES or (match["prefix"] and not allow_prefix):
        return None
    return SecretRef(match["scheme"], match["target"], match["prefix"] or "")


def is_secret_ref(value: str) -> bool:
    """True when `value` is a secret reference (`env://NAME`, `file:///path`, ...)."""
    return parse_ref(value) is not None


def is_credential_header(name: str) -> bool:
    """Whether a header of this name carries a credential (Authorization, Cookie, x-api-key ...)."""
    return _CREDENTIAL_HEADER.search(name) is not None


def looks_like_credential(text: str, *, min_random: int = 32) -> bool:
    """Whether `text` holds something shaped like a credential: a known key format, or a random-
    looking token of `min_random` characters or more (noise, where identifiers are made of words)."""
    if _KNOWN.search(text):
        return True
    return any(_is_random(m.group(), min_random) for m in _TOKEN.finditer(text))


def _is_random(token: str, min_length: int) -> bool:
    # Names are words (`AZURE_OPENAI_KEY_EASTUS2`, `OpenRouterKeyForTeam42`): cut at case changes
    # and digits, their pieces are several characters long. Base62, base64 and hex noise cut into
    # pieces of one or two characters on average.
    if len(token) < min_length or _UUID.fullmatch(token):
        return False  # a UUID is an identifier's shape (request, project ids)
    parts = token.split("_")
    if len(parts) >= 3 and max(map(len, parts)) <= 12:
        return False  # SNAKE_CASE words
    if _HEX.fullmatch(token) and len(token) >= 24:
        digits = sum(c.isdigit() for c in token)
        return 0.25 <= digits / len(token) <= 0.8
    if any(len(part) >= 24 and _MIXED.search(part) for part in parts):
        return True  # upper, lower and digits run together, longer than a camelCase name
    words = _WORDS.findall(token)
    chars = sum(map(len, words))
    return chars >= min_length and chars / len(words) < 3.0


def env_name_problem(name: str) -> str | None:
    """Why `name` cannot be the variable of an `env://` reference (never quoting it), or None."""
    if looks_like_credential(name, min_random=16):
        return "the reference holds what looks like a credential itself, not the name of a variable that holds one"
    if ENV_NAME.fullmatch(name) is None:
        return "an env:// reference takes an environment variable name (letters, digits and _)"
    return None


def describe(ref: str) -> str:
    """A reference as messages may show it: masked whole when it looks like a credential."""
    return "a reference that looks like a credential (not shown)" if looks_like_credential(ref) else ref
