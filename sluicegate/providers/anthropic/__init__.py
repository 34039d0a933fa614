"""Anthropic: the Messages API (https://docs.anthropic.com/en/api/messages), the provider and its options.

Anthropic clients (`POST /v1/messages`, `/v1/messages/count_tokens`) pass through: only `model`
is replaced, and the client's own `anthropic-version` / `anthropic-beta` headers are forwarded
(Claude Code sends betas). Every other dialect is translated: `request.py` turns a neutral chat
body into a Messages request; `response.py` (JSON) and `stream.py` (SSE) turn the answer back.

`base_url` is the API root without `/v1` (`https://api.anthropic.com`); the key goes in `x-api-key`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from sluicegate.errors import UpstreamError
from sluicegate.providers.anthropic.request import to_messages_request
from sluicegate.providers.anthropic.response import from_message, usage_of
from sluicegate.providers.anthropic.stream import AnthropicStreamDecoder
from sluicegate.providers.base import (
    Preset,
    Provider,
    capped,
    json_error_message,
    register_provider_type,
)

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.config.model import ProviderConfig

__all__ = [
    "PATHS",
    "AnthropicOptions",
    "AnthropicProvider",
    "AnthropicStreamDecoder",
    "from_message",
    "to_messages_request",
    "usage_of",
]


class AnthropicOptions(BaseModel):
    """`options:` of an `anthropic` provider."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the `anthropic-version` header of translated calls (passthrough calls send the client's own)
    anthropic_version: str = Field("2023-06-01", min_length=1, pattern=r"^[0-9A-Za-z.-]+$")
    #: `max_tokens` of a translated request that names none (Anthropic requires one)
    default_max_tokens: int = Field(4096, ge=1, le=1_000_000)


#: Messages API paths of the endpoints a call may reach
PATHS = {
    "chat": "/v1/messages",
    "messages": "/v1/messages",
    "count_tokens": "/v1/messages/count_tokens",
}


class AnthropicProvider(Provider):
    """An upstream speaking the Anthropic Messages API."""

    native_dialect = "anthropic"
    translated_endpoints = frozenset({"chat"})
    label = "Anthropic"
    Options = AnthropicOptions

    def __init__(self, config: ProviderConfig, preset: Preset) -> None:
        super().__init__(config, preset)
        self.options = AnthropicOptions.model_validate(config.options)
        self._urls: dict[str, str] = {}

    # ------------------------------------------------------------------------------------- request

    def url_for(self, endpoint: str, model: str, stream: bool = False) -> str:
        url = self._urls.get(endpoint)
        if url is None:
            url = self._urls[endpoint] = self.base_url + PATHS[endpoint]
        return url

    def base_headers(self) -> dict[str, str]:
        return {"content-type": "application/json", "anthropic-version": self.options.anthropic_version,
                **self.static_headers}  # fmt: skip

    def credential_header(self, secret: str) -> tuple[str, str]:
        return "x-api-key", secret

    def request_headers(self, call: Call, secret: str | None, url: str, body: bytes) -> Mapping[str, str]:
        headers = super().request_headers(call, secret, url, body)
        if call.dialect != self.native_dialect:
            return headers
        # Passthrough: the client chose its API version and betas; forward them.
        version = call.headers.get(b"anthropic-version")
        beta = call.headers.get(b"anthropic-beta")
        if version is None and beta is None:
            return headers
        out = dict(headers)
        if version is not None:
            out["anthropic-version"] = version.decode("latin-1")
        if beta is not None:
            own = out.get("anthropic-beta")
            client = beta.decode("latin-1")
            out["anthropic-beta"] = f"{own},{client}" if own else client
        return out

    def build_request(self, call: Call, chat: dict[str, Any]) -> bytes:
        assert call.route is not None
        # Anthropic requires a limit: the consumer's cap, if any, bounds the configured default.
        chat = capped(chat, call, self.options.default_max_tokens)
        return orjson.dumps(
            to_messages_request(chat, call.route.upstream_model or call.model_requested, self.options, self.label)
        )

    # ------------------------------------------------------------------------------------- answer

    def parse_response(self, data: Any, call: Call) -> dict[str, Any]:
        if not isinstance(data, dict) or not isinstance(data.get("content"), list):
            raise UpstreamError(f"provider '{self.name}' answered with a body that is not a Messages API message")
        assert call.route is not None
        return from_message(data, call.route.upstream_model or call.model_requested or "", self.name)

    def stream_decoder(self, call: Call) -> AnthropicStreamDecoder:
        assert call.route is not None
        return AnthropicStreamDecoder(
            self.name,
            call.route.upstream_model or call.model_requested or "",
            call.snapshot.server.max_stream_event_bytes,
        )

    def error_message(self, body: bytes) -> str:
        # https://docs.anthropic.com/en/api/errors: {"type": "error", "error": {"type", "message"}, "request_id"}
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return super().error_message(body)
        return json_error_message(data, ("error", "message"), ("message",), ("error",))


register_provider_type(
    "anthropic",
    AnthropicProvider,
    Preset("https://api.anthropic.com", docs="https://docs.anthropic.com/en/api/messages"),
)
