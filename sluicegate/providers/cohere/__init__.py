"""Cohere: the v2 Chat API (https://docs.cohere.com/reference/chat), streamed or not: the provider.

No client dialect speaks Cohere, so every call is translated: `request.py` builds the v2 chat
body, `response.py` reads the answer into a neutral completion, `stream.py` decodes the typed SSE
events into neutral chunks. Error bodies and statuses are read here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from sluicegate import neutral
from sluicegate.errors import SluicegateError, UpstreamError, UpstreamTimeout
from sluicegate.providers.base import (
    Preset,
    Provider,
    StreamDecoder,
    capped,
    json_error_message,
    register_provider_type,
    reported_error,
    text_of,
    upstream_error,
)
from sluicegate.providers.cohere.request import build_body
from sluicegate.providers.cohere.response import parse_response
from sluicegate.providers.cohere.stream import CohereStreamDecoder

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.config.model import ProviderConfig
    from sluicegate.scrub import Scrubber

__all__ = ["DOCS", "CohereProvider", "CohereStreamDecoder", "build_body", "parse_response"]

DOCS = "https://docs.cohere.com/reference/chat"


class CohereProvider(Provider):
    """Cohere's v2 chat endpoint; the key goes in `Authorization: Bearer`.

    Choices made where the two shapes differ (the README lists them for operators):
    - reasoning: Cohere's `thinking` content and its `tool_plan` (the text a model writes before its
      tool calls) both come back as `reasoning_content`; going up, an assistant turn's
      `reasoning_content` becomes its `tool_plan` when it has tool calls, a `thinking` item otherwise;
    - `reasoning_effort` `none` turns thinking off, any other effort turns it on; `thinking_budget`
      becomes `thinking.token_budget`; Anthropic's `reasoning_signature` has no Cohere counterpart;
    - `tool_choice` maps `none`/`required` to `NONE`/`REQUIRED`; naming a function is carried only
      when it is the only tool; tools marked `strict` set `strict_tools` (all or none of them);
    - citations (`citation-start`/`citation-end`) have no neutral place and are not relayed;
    - `cache_control` hints are not carried (Cohere has no caching controls); a message's `name` neither.
    """

    native_dialect = "cohere"
    translated_endpoints = frozenset({"chat"})
    label = "Cohere"

    def __init__(self, config: ProviderConfig, preset: Preset) -> None:
        super().__init__(config, preset)
        self._chat_url = f"{self.base_url}/v2/chat"

    def url_for(self, endpoint: str, model: str, stream: bool = False) -> str:
        if endpoint != "chat":
            raise neutral.unsupported(f"The '{endpoint}' endpoint", self.target)
        return self._chat_url  # streaming is the body's `stream` flag

    @staticmethod
    def _model(call: Call) -> str | None:
        assert call.route is not None
        return call.route.upstream_model or call.model_requested

    def build_request(self, call: Call, chat: dict[str, Any]) -> bytes:
        return orjson.dumps(build_body(capped(chat, call), self._model(call), bool(call.stream), self.target))

    def parse_response(self, data: Any, call: Call) -> dict[str, Any]:
        return parse_response(data, self.name, self._model(call) or "")

    def stream_decoder(self, call: Call) -> StreamDecoder:
        return CohereStreamDecoder(self.name, self._model(call) or "", call.snapshot.server.max_stream_event_bytes)

    # ------------------------------------------------------------------------------ errors

    def error_message(self, body: bytes) -> str:
        # https://docs.cohere.com/reference/errors: `{"message": ...}` (v2 answers add an `id`)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return text_of(body)
        return json_error_message(data, ("message",), ("data",), ("error",))

    def answer_error(self, data: dict[str, Any]) -> SluicegateError | None:
        # An error body is `{"id", "message": "<text>"}`; an answer's `message` is an object.
        if isinstance(data.get("message"), str):
            return reported_error(self.name, None, json_error_message(data, ("message",)))
        return super().answer_error(data)

    def parse_error(self, status: int, body: bytes, retry_after: float | None, scrub: Scrubber) -> SluicegateError:
        detail = scrub(self.error_message(body))
        where = f"provider '{self.name}'"
        if status == 402:
            # The account cannot pay: an operator's problem, not the client's request.
            return UpstreamError(
                f"{where} refused the call for billing reasons (HTTP 402): {detail or 'payment required'}",
                code="upstream_payment_required",
            )
        if status == 498:
            # A deny-listed token in the request or the answer: the request's content is refused.
            return UpstreamError(
                f"{where} rejected the request: {detail or 'blocked token (HTTP 498)'}",
                code="upstream_bad_request",
                status=400,
            )
        if status == 499:
            return UpstreamError(f"{where} cancelled the request (HTTP 499): {detail or 'request cancelled'}")
        if status == 504:
            return UpstreamTimeout(f"{where} timed out (HTTP 504): {detail or 'gateway timeout'}")
        return upstream_error(self.name, status, detail, retry_after, scrub)


register_provider_type("cohere", CohereProvider, Preset("https://api.cohere.com", docs=DOCS))
