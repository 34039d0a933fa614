"""Guard kind `webhook`: POST the texts to a service of yours and act on the verdict it returns.

Request `{"guard": name, "texts": [...]}`; verdict `{"verdict": "allow"|"block"|"redact"|"flag",
"findings": [{"index", "start", "end", "label", "score"?}]}` (see docs/guardrails-remote.md).
Any failure (connection, timeout, status, size, malformed verdict) raises `GuardUnavailable`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TypeGuard

import aiohttp
import orjson
from pydantic import Field, field_validator
from yarl import URL

from sluicegate.config.model import GuardConfig
from sluicegate.guardrails.base import (
    Finding,
    Guard,
    GuardContext,
    GuardSettings,
    GuardUnavailable,
    register_guard_kind,
    settings_as,
)
from sluicegate.vault import SECRET_SCHEMES, SecretUnavailable, Vault

DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
#: labels land in the audit record: short identifiers only, so a service cannot smuggle text into it
_LABEL = re.compile(r"^[A-Za-z0-9_.:/\[\]-]{1,64}$")
_VERDICTS = frozenset({"allow", "block", "redact", "flag"})
#: headers the guard sets itself; a configured value would change the request's framing
_RESERVED_HEADERS = frozenset({"content-type", "content-length", "host", "transfer-encoding", "connection"})


def check_http_url(url: str) -> str:
    """`url` if it is an absolute http(s) URL with a host; ValueError otherwise."""
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        raise ValueError("must be an http:// or https:// URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parsed.user is not None or parsed.password is not None:
        raise ValueError("must not carry credentials; put them in `headers` as a secret reference")
    return url


def is_secret_ref(value: str) -> bool:
    """True when `value` is a secret reference (`env://NAME`, `file:///path`, ...)."""
    scheme, sep, rest = value.partition("://")
    return bool(sep) and bool(rest) and scheme in SECRET_SCHEMES


async def resolve_headers(guard: str, headers: Mapping[str, str], vault: Vault) -> dict[str, str]:
    """Header values with secret references resolved; a failure names the header, never a value."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        if not is_secret_ref(value):
            out[name] = value
            continue
        try:
            secret = await vault.aresolve(value)
        except SecretUnavailable:
            raise GuardUnavailable(f"guard {guard!r}: the secret for header {name!r} cannot be read") from None
        if any(c in secret for c in "\r\n\0"):
            raise GuardUnavailable(f"guard {guard!r}: the secret for header {name!r} holds a line break")
        out[name] = secret
    return out


async def post_json(
    guard: str,
    context: GuardContext,
    url: str,
    payload: object,
    headers: Mapping[str, str],
    *,
    timeout_s: float,
    max_response_bytes: int,
) -> object:
    """POST `payload` as JSON and return the parsed JSON answer; any failure raises `GuardUnavailable`.

    No redirects are followed (where a guard's text goes is set by config only); the answer must
    be a 200 of at most `max_response_bytes`. Messages name the guard and the cause, never a URL
    (it may carry a token), a header or the body; the aiohttp error is not chained, since its
    request info holds the headers.
    """
    session = context.http()
    if session is None:
        raise GuardUnavailable(f"guard {guard!r}: the gateway's HTTP client is not running")
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    body = orjson.dumps(payload)
    try:
        async with session.post(
            url,
            data=body,
            headers={**headers, "Content-Type": "application/json", "Accept": "application/json"},
            timeout=timeout,
            allow_redirects=False,
        ) as resp:
            if resp.status != 200:
                raise GuardUnavailable(f"guard {guard!r}: the service answered HTTP {resp.status}")
            if resp.content_length is not None and resp.content_length > max_response_bytes:
                raise GuardUnavailable(f"guard {guard!r}: the answer is larger than {max_response_bytes} bytes")
            raw = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                raw += chunk
                if len(raw) > max_response_bytes:
                    raise GuardUnavailable(f"guard {guard!r}: the answer is larger than {max_response_bytes} bytes")
    except TimeoutError:
        raise GuardUnavailable(f"guard {guard!r}: the service did not answer within {timeout_s:g} s") from None
    except aiohttp.ClientError as exc:
        raise GuardUnavailable(f"guard {guard!r}: cannot reach the service ({type(exc).__name__})") from None
    except ValueError:
        # aiohttp refuses a header it cannot send; its message may quote the value.
        raise GuardUnavailable(f"guard {guard!r}: the request cannot be sent (a header is invalid)") from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise GuardUnavailable(f"guard {guard!r}: the answer is not JSON") from None


class WebhookSettings(GuardSettings):
    """Settings of a `webhook` guard."""

    #: where the texts are POSTed (http or https); no redirect is followed
    url: str
    #: extra request headers; a value that is a secret reference (`env://`, `file://`, ...) is resolved per call
    headers: dict[str, str] = Field(default_factory=dict)
    #: the largest answer read; a longer one makes the guard unavailable
    max_response_bytes: int = Field(DEFAULT_MAX_RESPONSE_BYTES, ge=1024, le=16 * 1024 * 1024)

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        return check_http_url(url)

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by the gateway")
            if any(c in value for c in "\r\n\0"):
                raise ValueError(f"the value of header {name!r} holds a line break")
        return headers


class WebhookGuard(Guard):
    """Asks an HTTP service of yours about the texts; its findings get the guard's `action`."""

    Settings = WebhookSettings
    remote = True

    def __init__(self, config: GuardConfig, settings: GuardSettings, context: GuardContext) -> None:
        super().__init__(config, settings, context)
        self.settings = settings = settings_as(settings, WebhookSettings)

    async def ascan(self, texts: Sequence[str]) -> list[Finding]:
        """POST the texts, return the verdict's findings; `GuardUnavailable` on any failure."""
        if not texts:
            return []
        try:
            async with asyncio.timeout(self.config.timeout_s):
                headers = await resolve_headers(self.name, self.settings.headers, self.context.vault)
                answer = await post_json(
                    self.name,
                    self.context,
                    self.settings.url,
                    {"guard": self.name, "texts": list(texts)},
                    headers,
                    timeout_s=self.config.timeout_s,
                    max_response_bytes=self.settings.max_response_bytes,
                )
        except TimeoutError:
            raise GuardUnavailable(f"guard {self.name!r}: no verdict within {self.config.timeout_s:g} s") from None
        return parse_verdict(self.name, answer, texts)


def parse_verdict(guard: str, answer: object, texts: Sequence[str]) -> list[Finding]:
    """The findings of a webhook verdict; a malformed one raises `GuardUnavailable`.

    `allow` means no findings (any listed are ignored). `block` and `flag` without findings cover
    the whole of text 0 with label `webhook`; `redact` needs findings (there is nothing to redact
    otherwise). Offsets are Unicode code points into the texts as sent.
    """

    def bad(why: str) -> GuardUnavailable:
        return GuardUnavailable(f"guard {guard!r}: malformed verdict ({why})")

    if not isinstance(answer, dict):
        raise bad("not a JSON object")
    verdict = answer.get("verdict")
    if not isinstance(verdict, str) or verdict not in _VERDICTS:
        raise bad("`verdict` must be one of allow, block, redact, flag")
    if verdict == "allow":
        return []
    raw = answer.get("findings", [])
    if not isinstance(raw, list):
        raise bad("`findings` must be a list")
    findings = [_finding(item, texts, bad) for item in raw]
    if findings:
        return findings
    if verdict == "redact":
        raise bad("a redact verdict needs findings")
    return [Finding(0, 0, len(texts[0]), "webhook")]


def _finding(item: object, texts: Sequence[str], bad: Callable[[str], GuardUnavailable]) -> Finding:
    if not isinstance(item, dict):
        raise bad("a finding is not an object")
    index, start, end = item.get("index", 0), item.get("start"), item.get("end")
    if not _is_int(index) or not 0 <= index < len(texts):
        raise bad("a finding's `index` is not the index of a text sent")
    size = len(texts[index])
    # A finding without offsets covers its whole text.
    start = 0 if start is None else start
    end = size if end is None else end
    if not _is_int(start) or not _is_int(end) or not 0 <= start <= end <= size:
        raise bad("a finding's `start`/`end` are not offsets into its text")
    label = item.get("label")
    if not isinstance(label, str) or not _LABEL.match(label):
        label = "webhook"
    score = item.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1):
        raise bad("a finding's `score` is not a number in [0, 1]")
    return Finding(index, start, end, label, None if score is None else float(score))


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


register_guard_kind("webhook", WebhookGuard)

__all__ = ["WebhookGuard", "WebhookSettings", "check_http_url", "parse_verdict", "post_json", "resolve_headers"]
