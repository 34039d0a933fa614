"""What every upstream adapter provides, and the registry that maps a config `type` to one.

A provider turns a `Call` into the upstream HTTP request (URL, headers, body bytes) and the
upstream's answers and failures back. Credentials come from the vault at send time and are
attached by the provider's `request_headers`, never stored on the call: the api key, and config
`headers` whose values are secret references (`X-Org-Token: env://ORG_TOKEN`,
`Authorization: Bearer file:///run/secrets/token`). `secret_values` lists them all, for scrubbing
upstream text.

Two ways through a provider (see `sluicegate.neutral` for the shapes in between):
- passthrough, when the client's dialect is the provider's `native_dialect`: `prepare_body`
  replaces the model in the client's body, and the answer goes back as the upstream sent it;
- translation otherwise: `build_request` turns a neutral chat body into the upstream's request,
  `parse_response` turns its JSON answer into a neutral completion, and `stream_decoder` turns
  its streamed body into neutral chunks.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from sluicegate.errors import RateLimited, SluicegateError, UpstreamError, UpstreamUnavailable
from sluicegate.vault.refs import SecretRef, parse_ref

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.config.model import ProviderConfig
    from sluicegate.scrub import Scrubber
    from sluicegate.vault import Vault

#: how much of an upstream's error text is read: scrubbed whole, then cut (`scrub.MAX_MESSAGE_CHARS`)
MAX_DETAIL_CHARS = 64 * 1024


@dataclass(frozen=True, slots=True)
class Preset:
    """Defaults of one member of a provider family: where it lives and whether it needs a key."""

    base_url: str | None
    needs_key: bool = True
    docs: str = ""


class StreamDecoder:
    """Turns one upstream streamed body, read piece by piece, into neutral chunks.

    `feed` takes bytes as they arrive (any split: half events, many events) and returns the
    neutral chunks they complete. It sets `done` once the upstream's end of stream arrived (its
    end marker, or its last event); a body that ends before that is a cut stream. An error the
    upstream reports inside the stream is raised as an `UpstreamError` (never with a key in it).
    """

    done: bool = False

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        raise NotImplementedError

    def close(self) -> list[dict[str, Any]]:
        """The upstream body ended: chunks still buffered (most decoders have none)."""
        return []


class Provider:
    """An upstream adapter, built once per config snapshot from its `ProviderConfig`."""

    #: the wire protocol this provider speaks natively (bodies pass through when they match)
    native_dialect: ClassVar[str] = ""
    supports_streaming: ClassVar[bool] = True
    #: neutral endpoints a translated call may reach (`chat` always; `embeddings` where it maps)
    translated_endpoints: ClassVar[frozenset[str]] = frozenset({"chat"})
    #: how the provider's product is named in messages (`Anthropic`, `Google Gemini` ...)
    label: ClassVar[str] = "the provider"
    #: how its streams are framed: `sse`, `ndjson`, `eventstream`
    stream_framing: ClassVar[str] = "sse"

    def __init__(self, config: ProviderConfig, preset: Preset) -> None:
        self.config = config
        self.name = config.name
        self.type = config.type
        self.preset = preset
        self.base_url = (config.base_url or preset.base_url or "").rstrip("/")
        self.timeouts = config.timeouts
        #: how translation refusals name this provider
        self.target = f"{self.label} (provider '{self.name}')"
        static: dict[str, str] = {}
        refs: list[tuple[str, SecretRef]] = []
        for name, value in config.headers.items():
            ref = parse_ref(value, allow_prefix=True)
            if ref is None:
                static[name] = value
            else:
                refs.append((name, ref))
        #: config headers sent as written
        self.static_headers = static
        #: config headers whose values are secret references, resolved by the vault at send time
        self.header_refs = tuple(refs)
        #: resolves `header_refs` (bound by the pipeline for each config snapshot)
        self.vault: Vault | None = None
        self._headers: tuple[tuple[str | None, tuple[str, ...]], dict[str, str]] | None = None

    def url_for(self, endpoint: str, model: str, stream: bool = False) -> str:
        """Absolute upstream URL of one endpoint (`chat`, `completions`, `embeddings`, `messages`,
        `count_tokens` ...) for an upstream model, streamed or not."""
        raise NotImplementedError

    def request_headers(self, call: Call, secret: str | None, url: str, body: bytes) -> Mapping[str, str]:
        """Request headers for one upstream request, credential included (signers see the body;
        `call.headers` holds the client's request headers, lower-case bytes names). The default:
        `base_headers`, the referenced headers, then `credential_header`, built once per set of
        secret values."""
        values = self.header_secret_values() if self.header_refs else ()
        cached = self._headers
        if cached is not None and cached[0] == (secret, values):
            return cached[1]
        headers = self.base_headers()
        headers.update(self.referenced_headers(values))
        if secret:
            name, value = self.credential_header(secret)
            headers[name] = value
        self._headers = ((secret, values), headers)
        return headers

    def base_headers(self) -> dict[str, str]:
        """Headers of every request, before the credential: JSON, then the config's plain `headers`."""
        return {"Content-Type": "application/json", **self.static_headers}

    def bind_vault(self, vault: Vault) -> None:
        """The vault that resolves the referenced headers."""
        self.vault = vault

    async def resolve_header_secrets(self) -> None:
        """Read the referenced headers' secrets into the vault's cache without blocking the loop
        (the router does it before the send; a cached value costs a dict lookup)."""
        vault = self.vault
        if vault is None:
            return
        for _, ref in self.header_refs:
            if vault.cached(ref.ref) is None:
                await vault.aresolve(ref.ref)

    def header_secret_values(self) -> tuple[str, ...]:
        """The values of the referenced headers, from the vault (its cache, nearly always).

        A value that is missing, or holds a line break, fails closed (`SecretUnavailable`, 503
        `credential_unavailable`), naming the header and never a value."""
        from sluicegate.vault import SecretUnavailable, Vault

        vault = self.vault
        if vault is None:
            vault = self.vault = Vault()
        values = []
        for name, ref in self.header_refs:
            value = vault.cached(ref.ref) or vault.resolve(ref.ref)
            if any(c in value for c in "\r\n\0"):
                raise SecretUnavailable(f"the secret for header '{name}' of provider '{self.name}' holds a line break")
            values.append(value)
        return tuple(values)

    def referenced_headers(self, values: tuple[str, ...] | None = None) -> dict[str, str]:
        """The referenced headers with their secrets (`values`: `header_secret_values()`)."""
        if values is None:
            values = self.header_secret_values()
        return {
            name: f"{ref.prefix} {value}" if ref.prefix else value
            for (name, ref), value in zip(self.header_refs, values, strict=True)
        }

    def secret_values(self, secret: str | None) -> tuple[str, ...]:
        """Every secret this provider sends upstream with `secret` as its key: what a scrubber must
        remove from upstream text (the key, then the referenced headers' values that are cached)."""
        out = [secret] if secret else []
        vault = self.vault
        if vault is not None:
            for _, ref in self.header_refs:
                value = vault.cached(ref.ref)
                if value:
                    out.append(value)
        return tuple(out)

    def credential_header(self, secret: str) -> tuple[str, str]:
        """The header that carries the credential (default: a Bearer token)."""
        return "Authorization", f"Bearer {secret}"

    def prepare_body(self, call: Call) -> bytes:
        """Passthrough: body bytes for the upstream from the client's own body, with only the
        model replaced (a shallow copy: the parsed body is never mutated), and the consumer's
        output cap as `max_tokens` when the body names no limit."""
        assert call.body is not None and call.route is not None
        out = dict(call.body)
        out["model"] = call.route.upstream_model or call.model_requested
        cap = output_cap(call)
        if cap is not None and not has_output_limit(out):
            out["max_tokens"] = cap
        return orjson.dumps(out)

    def build_request(self, call: Call, chat: dict[str, Any]) -> bytes:
        """Translation: the upstream body for a neutral chat body (`call.route` names the
        upstream model). A feature the provider cannot carry raises `neutral.unsupported`."""
        raise NotImplementedError

    def parse_response(self, data: Any, call: Call) -> dict[str, Any]:
        """Translation: a neutral completion from the upstream's JSON answer (not mutated)."""
        raise NotImplementedError

    def stream_decoder(self, call: Call) -> StreamDecoder:
        """Translation: a decoder for one streamed answer."""
        raise NotImplementedError

    def error_message(self, body: bytes) -> str:
        """The human message of one of this provider's error bodies ("" when none), not cut yet:
        it is scrubbed whole, then cut (see `sluicegate.scrub`)."""
        return text_of(body)

    def parse_error(self, status: int, body: bytes, retry_after: float | None, scrub: Scrubber) -> SluicegateError:
        """Turn an upstream error response into an error that names this provider, never its key."""
        return upstream_error(self.name, status, self.error_message(body), retry_after, scrub)

    def answer_error(self, data: dict[str, Any]) -> SluicegateError | None:
        """The error an upstream reported in a JSON object of its protocol (a 200 answer that is an
        error body, or a stream event); None when `data` is no error. Default: a truthy `error`."""
        error = data.get("error")
        if not error:
            return None
        if isinstance(error, dict):
            kind = error.get("type") or error.get("status") or error.get("code")
            return reported_error(self.name, kind, json_error_message(error, ("message",)), error.get("code"))
        return reported_error(self.name, None, json_error_message(data, ("error",), ("message",)))


#: the request fields that bound the answer's length, in every client dialect
OUTPUT_LIMITS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def has_output_limit(body: dict[str, Any]) -> bool:
    """Whether a request body names a limit on the answer's length."""
    return any(body.get(name) is not None for name in OUTPUT_LIMITS)


def output_cap(call: Call) -> int | None:
    """The output tokens to ask for when a request names no limit: the consumer's cap, bounded by
    the target's `max_tokens` (a call made outside the pipeline, such as a guard's own model
    call, has neither)."""
    cap: int | None = getattr(call, "output_cap", None)
    limit: int | None = getattr(getattr(call, "route", None), "max_tokens", None)
    if limit is None:
        return cap
    return limit if cap is None else min(cap, limit)


def clamp_output(body: dict[str, Any], limit: int) -> dict[str, Any]:
    """`body` with every limit on the answer's length it names lowered to `limit` (a copy when one
    is lowered; a body naming none gets the cap where its provider inserts `output_cap`)."""
    over = [name for name in OUTPUT_LIMITS if type(body.get(name)) in (int, float) and body[name] > limit]
    if not over:
        return body
    return {**body, **dict.fromkeys(over, limit)}


def capped(chat: dict[str, Any], call: Call, at_most: int | None = None) -> dict[str, Any]:
    """A neutral chat body with the consumer's output cap as `max_tokens` when it names no limit
    (a copy: the body is not changed); `at_most` bounds the cap (a provider's own default)."""
    cap = output_cap(call)
    if cap is None or has_output_limit(chat):
        return chat
    return {**chat, "max_tokens": cap if at_most is None else min(cap, at_most)}


#: the longest wait an upstream may ask for (Retry-After, RetryInfo): a day
MAX_RETRY_AFTER_S = 86400.0


def retry_seconds(value: str | None) -> float | None:
    """A wait an upstream asked for, in seconds (`"7"`, `"1.5"`): finite and at most
    `MAX_RETRY_AFTER_S`, else None (an HTTP date, `inf`, `nan`, a negative number)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds <= MAX_RETRY_AFTER_S else None


def text_of(body: bytes) -> str:
    """A non-JSON error body as text, bounded by `MAX_DETAIL_CHARS`."""
    return body[: MAX_DETAIL_CHARS * 4].decode("utf-8", "replace").strip()[:MAX_DETAIL_CHARS]


#: an upstream's error type or code, when it is an identifier worth repeating (`overloaded_error`)
_KIND = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def reported_error(name: str, kind: Any, detail: str, status: Any = None) -> SluicegateError:
    """The gateway error for an error an upstream reported itself, inside a stream or as a 200
    answer: classified by its type or code (overloaded or unavailable: 503, rate limit: 429, an
    invalid request: 400, else 502), its type named and its message kept (scrubbed later)."""
    label = str(kind) if isinstance(kind, str | int) and not isinstance(kind, bool) else ""
    label = label if _KIND.fullmatch(label) else ""
    code = status if type(status) is int else None
    text = label.lower()
    where = f"provider '{name}'"
    said = f" ({label})" if label else ""
    detail = detail or label or "unknown error"
    if code in (401, 403) or any(w in text for w in ("authentication", "permission", "unauthenticated")):
        return _auth_error(where, f"reported as {label}" if label else "reported in its answer")
    if code == 429 or any(w in text for w in ("rate_limit", "too_many_requests", "resource_exhausted", "throttl")):
        return RateLimited(f"{where} is rate limiting{said}: {detail}", code="upstream_rate_limited")
    if code in (502, 503, 529) or "overloaded" in text or "unavailable" in text:
        return UpstreamUnavailable(f"{where} is unavailable{said}: {detail}")
    if (code is not None and 400 <= code < 500 and code not in (401, 403)) or "invalid_request" in text:
        return UpstreamError(f"{where} rejected the request{said}: {detail}", code="upstream_bad_request", status=400)
    return UpstreamError(f"{where} reported an error{said}: {detail}")


def upstream_error(name: str, status: int, detail: str, retry_after: float | None, scrub: Scrubber) -> SluicegateError:
    """The gateway error for an upstream HTTP error status, the same for every provider; the
    upstream's message is scrubbed of the call's credentials, then cut."""
    detail = scrub(detail)
    where = f"provider '{name}'"
    if status in (401, 403):
        return _auth_error(where, f"HTTP {status}")
    if status == 429:
        return RateLimited(
            f"{where} is rate limiting: {detail or 'too many requests'}",
            code="upstream_rate_limited",
            retry_after=retry_after,
        )
    if 400 <= status < 500:
        # The client's request was refused on its merits: same status, the upstream's reason.
        return UpstreamError(
            f"{where} rejected the request: {detail or f'HTTP {status}'}",
            code="upstream_bad_request" if status != 404 else "upstream_not_found",
            status=status if status in (400, 404, 409, 413, 422) else 400,
        )
    if status in (502, 503, 529):
        return UpstreamUnavailable(
            f"{where} is unavailable (HTTP {status}): {detail or 'overloaded'}", retry_after=retry_after
        )
    return UpstreamError(f"{where} failed (HTTP {status}): {detail or 'server error'}")


def _auth_error(where: str, how: str) -> UpstreamError:
    # Upstream auth messages quote (part of) the gateway's key: never relay them.
    return UpstreamError(
        f"{where} refused the gateway's credentials ({how}); an operator must fix its key",
        code="upstream_auth_error",
        status=502,
    )


def json_error_message(data: Any, *paths: tuple[str, ...]) -> str:
    """The first string found at one of `paths` inside a parsed error body, bounded by
    `MAX_DETAIL_CHARS` (scrubbed and cut later)."""
    for path in paths:
        value = data
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str) and value:
            return value[:MAX_DETAIL_CHARS]
    return ""


ProviderFactory = Callable[["ProviderConfig", Preset], Provider]


@dataclass(frozen=True, slots=True)
class ProviderType:
    """A registered `type:` value of the providers config."""

    name: str
    factory: ProviderFactory
    preset: Preset


_REGISTRY: dict[str, ProviderType] = {}
#: built-in types with a module of their own, imported when a config first names the type; every
#: other built-in type is the OpenAI family's (`providers.openai`, imported for any of them)
_OWN_MODULES = {
    "anthropic": "anthropic",
    "azure_openai": "azure",
    "bedrock": "bedrock",
    "cohere": "cohere",
    "gemini": "gemini",
    "ollama_native": "ollama_native",
}


def register_provider_type(name: str, factory: ProviderFactory, preset: Preset) -> None:
    """Make `type: <name>` available in the providers config."""
    if name in _REGISTRY:
        raise ValueError(f"provider type {name!r} is registered twice")
    _REGISTRY[name] = ProviderType(name, factory, preset)


def provider_type(name: str) -> ProviderType | None:
    """A registered provider type by name, its built-in module imported on first use; None when
    unknown (`provider_types` lists the known ones)."""
    found = _REGISTRY.get(name)
    if found is None:
        # Importing a provider module runs its registration lines.
        importlib.import_module(f"sluicegate.providers.{_OWN_MODULES.get(name, 'openai')}")
        found = _REGISTRY.get(name)
    return found


def provider_types() -> dict[str, ProviderType]:
    """Every registered provider type, built-ins first (every built-in module imported)."""
    for module in ("openai", *_OWN_MODULES.values()):
        importlib.import_module(f"sluicegate.providers.{module}")
    return _REGISTRY
