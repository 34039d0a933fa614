"""What every upstream adapter provides, and the registry that maps a config `type` to one.

A provider turns a `Call` into the upstream HTTP request (URL, headers, body bytes) and the
upstream's answers and failures back. Credentials come from the vault at send time and are
attached by the provider's `request_headers`, never stored on the call.

Two ways through a provider (see `sluicegate.neutral` for the shapes in between):
- passthrough, when the client's dialect is the provider's `native_dialect`: `prepare_body`
  replaces the model in the client's body, and the answer goes back as the upstream sent it;
- translation otherwise: `build_request` turns a neutral chat body into the upstream's request,
  `parse_response` turns its JSON answer into a neutral completion, and `stream_decoder` turns
  its streamed body into neutral chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from sluicegate.errors import RateLimited, SluicegateError, UpstreamError, UpstreamUnavailable

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.config.model import ProviderConfig


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

    def __init__(self, config: ProviderConfig, preset: Preset) -> None:
        self.config = config
        self.name = config.name
        self.type = config.type
        self.preset = preset
        self.base_url = (config.base_url or preset.base_url or "").rstrip("/")
        self.timeouts = config.timeouts
        #: how translation refusals name this provider
        self.target = f"{self.label} (provider '{self.name}')"
        self._headers: tuple[str | None, dict[str, str]] | None = None

    def url_for(self, endpoint: str, model: str, stream: bool = False) -> str:
        """Absolute upstream URL of one endpoint (`chat`, `completions`, `embeddings`, `messages`,
        `count_tokens` ...) for an upstream model, streamed or not."""
        raise NotImplementedError

    def request_headers(self, call: Call, secret: str | None, url: str, body: bytes) -> Mapping[str, str]:
        """Request headers for one upstream request, credential included (signers see the body;
        `call.headers` holds the client's request headers, lower-case bytes names). The default:
        `base_headers` plus `credential_header`, built once per secret."""
        cached = self._headers
        if cached is not None and cached[0] == secret:
            return cached[1]
        headers = self.base_headers()
        if secret:
            name, value = self.credential_header(secret)
            headers[name] = value
        self._headers = (secret, headers)
        return headers

    def base_headers(self) -> dict[str, str]:
        """Headers of every request, before the credential: JSON, then the config's `headers`."""
        return {"Content-Type": "application/json", **self.config.headers}

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
        """The human message of one of this provider's error bodies, bounded; "" when none."""
        return body[:300].decode("utf-8", "replace").strip()

    def parse_error(self, status: int, body: bytes, retry_after: float | None, secret: str | None) -> SluicegateError:
        """Turn an upstream error response into an error that names this provider, never its key."""
        return upstream_error(self.name, status, self.error_message(body), retry_after, secret)


#: the request fields that bound the answer's length, in every client dialect
OUTPUT_LIMITS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def has_output_limit(body: dict[str, Any]) -> bool:
    """Whether a request body names a limit on the answer's length."""
    return any(body.get(name) is not None for name in OUTPUT_LIMITS)


def output_cap(call: Call) -> int | None:
    """The output tokens to ask for when a request names no limit (a call made outside the
    pipeline, such as a guard's own model call, has none)."""
    return getattr(call, "output_cap", None)


def capped(chat: dict[str, Any], call: Call, at_most: int | None = None) -> dict[str, Any]:
    """A neutral chat body with the consumer's output cap as `max_tokens` when it names no limit
    (a copy: the body is not changed); `at_most` bounds the cap (a provider's own default)."""
    cap = output_cap(call)
    if cap is None or has_output_limit(chat):
        return chat
    return {**chat, "max_tokens": cap if at_most is None else min(cap, at_most)}


def upstream_error(
    name: str, status: int, detail: str, retry_after: float | None, secret: str | None
) -> SluicegateError:
    """The gateway error for an upstream HTTP error status, the same for every provider."""
    if secret and detail:
        detail = detail.replace(secret, "[redacted]")
    where = f"provider '{name}'"
    if status in (401, 403):
        # Upstream auth messages quote (part of) the gateway's key: never relay them.
        return UpstreamError(
            f"{where} refused the gateway's credentials (HTTP {status}); an operator must fix its key",
            code="upstream_auth_error",
            status=502,
        )
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


def json_error_message(data: Any, *paths: tuple[str, ...]) -> str:
    """The first string found at one of `paths` inside a parsed error body, bounded to 1000 chars."""
    for path in paths:
        value = data
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str) and value:
            return value[:1000]
    return ""


ProviderFactory = Callable[["ProviderConfig", Preset], Provider]


@dataclass(frozen=True, slots=True)
class ProviderType:
    """A registered `type:` value of the providers config."""

    name: str
    factory: ProviderFactory
    preset: Preset


_REGISTRY: dict[str, ProviderType] = {}


def register_provider_type(name: str, factory: ProviderFactory, preset: Preset) -> None:
    """Make `type: <name>` available in the providers config."""
    if name in _REGISTRY:
        raise ValueError(f"provider type {name!r} is registered twice")
    _REGISTRY[name] = ProviderType(name, factory, preset)


def provider_types() -> dict[str, ProviderType]:
    """Every registered provider type, built-ins first."""
    _load_builtins()
    return _REGISTRY


def _load_builtins() -> None:
    # Importing a provider module runs its registration lines.
    from sluicegate.providers import anthropic, azure, bedrock, cohere, gemini, ollama_native, openai  # noqa: F401
