"""Google Gemini (the Gemini Developer API, `generativelanguage.googleapis.com/v1beta`): the provider.

No client speaks Gemini's protocol, so every call is translated: `request.py` builds the
`GenerateContentRequest`, `response.py` reads the answer and error bodies, `stream.py` decodes the
`alt=sse` stream. The key goes in `x-goog-api-key` (https://ai.google.dev/gemini-api/docs/api-key).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from sluicegate.errors import NotFound, SluicegateError
from sluicegate.providers.base import Preset, Provider, StreamDecoder, capped, register_provider_type, upstream_error
from sluicegate.providers.gemini.request import TARGET, build_body
from sluicegate.providers.gemini.response import (
    error_message,
    error_object,
    parse_response,
    requested_model,
    retry_delay,
)
from sluicegate.providers.gemini.stream import GeminiStreamDecoder

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.config.model import ProviderConfig
    from sluicegate.scrub import Scrubber

__all__ = ["TARGET", "GeminiProvider", "GeminiStreamDecoder", "build_body"]


class GeminiProvider(Provider):
    """The Gemini Developer API, reached through translation only."""

    native_dialect = "gemini"
    translated_endpoints = frozenset({"chat"})
    label = "Google Gemini"

    def __init__(self, config: ProviderConfig, preset: Preset) -> None:
        super().__init__(config, preset)
        self._urls: dict[tuple[str, bool], str] = {}

    def url_for(self, endpoint: str, model: str, stream: bool = False) -> str:
        if endpoint != "chat":
            raise NotFound(f"provider '{self.name}' ({TARGET}) has no '{endpoint}' endpoint", code="not_found")
        key = (model, stream)
        url = self._urls.get(key)
        if url is None:
            if len(self._urls) > 1024:
                self._urls.clear()
            name = quote(model, safe="")
            if stream:
                url = f"{self.base_url}/models/{name}:streamGenerateContent?alt=sse"
            else:
                url = f"{self.base_url}/models/{name}:generateContent"
            self._urls[key] = url
        return url

    def credential_header(self, secret: str) -> tuple[str, str]:
        return "x-goog-api-key", secret  # never the `?key=` query: URLs end up in logs

    def build_request(self, call: Call, chat: dict[str, Any]) -> bytes:
        return orjson.dumps(build_body(capped(chat, call)))

    def parse_response(self, data: Any, call: Call) -> dict[str, Any]:
        return parse_response(data, self.name, call)

    def stream_decoder(self, call: Call) -> StreamDecoder:
        expected = 1
        body = call.body
        if call.dialect == "openai" and isinstance(body, dict):
            n = body.get("n")
            if isinstance(n, int) and not isinstance(n, bool) and n > 1:
                expected = n
        return GeminiStreamDecoder(
            self.name, requested_model(call), expected, call.snapshot.server.max_stream_event_bytes
        )

    def error_message(self, body: bytes) -> str:
        return error_message(body)

    def parse_error(self, status: int, body: bytes, retry_after: float | None, scrub: Scrubber) -> SluicegateError:
        # A bad key is a 400 INVALID_ARGUMENT with reason API_KEY_INVALID, not a 401
        # (https://ai.google.dev/gemini-api/docs/troubleshooting): report it as the auth failure it is.
        # A 429 carries its wait in a RetryInfo detail (`"retryDelay": "37s"`), not in Retry-After.
        error = error_object(body)
        if error is not None:
            reasons = {d.get("reason") for d in error.get("details") or () if isinstance(d, dict)}
            if "API_KEY_INVALID" in reasons or error.get("status") == "UNAUTHENTICATED":
                status = 401
            if retry_after is None:
                retry_after = retry_delay(error)
        return upstream_error(self.name, status, self.error_message(body), retry_after, scrub)


register_provider_type(
    "gemini",
    GeminiProvider,
    Preset("https://generativelanguage.googleapis.com/v1beta", docs="https://ai.google.dev/api/generate-content"),
)
