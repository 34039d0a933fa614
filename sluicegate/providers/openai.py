"""OpenAI and the OpenAI-compatible family (Groq, Mistral, DeepSeek, xAI, OpenRouter, vLLM, Ollama ...).

One adapter; family members differ only by preset (base URL, whether a key is needed). The
client's OpenAI body passes through: only `model` is replaced and, on streams, usage is asked
for so the gateway can account for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from sluicegate.errors import SluicegateError, UpstreamError
from sluicegate.providers.base import (
    Preset,
    Provider,
    StreamDecoder,
    capped,
    has_output_limit,
    json_error_message,
    output_cap,
    register_provider_type,
    reported_error,
    text_of,
)
from sluicegate.providers.framing import MAX_EVENT_BYTES, InvalidStream, SSEDecoder

if TYPE_CHECKING:
    from sluicegate.call import Call

#: the OpenAI-compatible family: `type:` value -> where it lives
PRESETS: dict[str, Preset] = {
    "openai": Preset("https://api.openai.com/v1", docs="https://platform.openai.com/docs/api-reference"),
    "openai_compatible": Preset(None, needs_key=False, docs="any server speaking the OpenAI API; base_url required"),
    "groq": Preset("https://api.groq.com/openai/v1"),
    "mistral": Preset("https://api.mistral.ai/v1"),
    "deepseek": Preset("https://api.deepseek.com/v1"),
    "xai": Preset("https://api.x.ai/v1"),
    "openrouter": Preset("https://openrouter.ai/api/v1"),
    "together": Preset("https://api.together.xyz/v1"),
    "fireworks": Preset("https://api.fireworks.ai/inference/v1"),
    "perplexity": Preset("https://api.perplexity.ai"),
    "vllm": Preset("http://127.0.0.1:8000/v1", needs_key=False),
    "ollama": Preset("http://127.0.0.1:11434/v1", needs_key=False),
    "lmstudio": Preset("http://127.0.0.1:1234/v1", needs_key=False),
}


#: OpenAI paths of the neutral endpoints
PATHS = {"chat": "chat/completions", "completions": "completions", "embeddings": "embeddings"}


class OpenAIProvider(Provider):
    """An upstream speaking the OpenAI HTTP API."""

    native_dialect = "openai"
    translated_endpoints = frozenset({"chat"})
    label = "an OpenAI-compatible provider"

    def __init__(self, config: Any, preset: Preset) -> None:
        super().__init__(config, preset)
        self._urls: dict[str, str] = {}

    def url_for(self, endpoint: str, model: str, stream: bool = False) -> str:
        url = self._urls.get(endpoint)
        if url is None:
            url = self._urls[endpoint] = f"{self.base_url}/{PATHS[endpoint]}"
        return url

    def prepare_body(self, call: Call) -> bytes:
        body = call.body
        assert body is not None
        cap = output_cap(call)
        if cap is not None and not has_output_limit(body):
            # The consumer's cap, in the field this upstream takes (a copy: the body stays as sent).
            chat = call.endpoint == "chat" and self.type in _COMPLETION_TOKENS_TYPES
            body = {**body, "max_completion_tokens" if chat else "max_tokens": cap}
        return self._body(call, body)

    def build_request(self, call: Call, chat: dict[str, Any]) -> bytes:
        # The neutral chat body is this protocol; only its extensions are not.
        body = {k: v for k, v in capped(chat, call).items() if k not in NEUTRAL_EXTENSIONS}
        if self.type in _COMPLETION_TOKENS_TYPES and "max_tokens" in body:
            # OpenAI's reasoning models refuse `max_tokens`; every OpenAI model takes this one.
            body.setdefault("max_completion_tokens", body.pop("max_tokens"))
        return self._body(call, body)

    def _body(self, call: Call, body: dict[str, Any]) -> bytes:
        assert call.route is not None
        out = dict(body)  # shallow copy: the parsed body stays as the client sent it
        out["model"] = call.route.upstream_model or call.model_requested
        if call.stream:
            # Ask for the usage chunk whatever the client asked: accounting needs it. The
            # gateway drops that chunk again when the client did not ask for it.
            options = out.get("stream_options")
            options = dict(options) if isinstance(options, dict) else {}
            options["include_usage"] = True
            out["stream_options"] = options
        return orjson.dumps(out)

    def parse_response(self, data: Any, call: Call) -> dict[str, Any]:
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise UpstreamError(f"provider '{self.name}' answered with a body that is not a chat completion")
        return data

    def stream_decoder(self, call: Call) -> StreamDecoder:
        return OpenAIStreamDecoder(self.name, call.snapshot.server.max_stream_event_bytes)

    def error_message(self, body: bytes) -> str:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return text_of(body)
        return json_error_message(data, ("error", "message"), ("error",), ("message",), ("detail",))

    def answer_error(self, data: dict[str, Any]) -> SluicegateError | None:
        if not data.get("error") and data.get("object") != "error":
            return None  # an answer (checked here: nearly every answer is one)
        return stream_error(self.name, None, data)


#: types whose translated calls say `max_completion_tokens` (OpenAI's own API; others vary)
_COMPLETION_TOKENS_TYPES = frozenset({"openai", "azure_openai"})
#: keys of the neutral chat body that are not OpenAI's (dropped on the way to an OpenAI upstream)
NEUTRAL_EXTENSIONS = frozenset({"top_k", "thinking_budget"})


#: the most choices and tool calls per choice a chunk may index (`n` is at most 128)
MAX_INDEX = 1024


class OpenAIStreamDecoder(SSEDecoder):
    """OpenAI SSE: each `data:` is a chunk already in the neutral shape; `[DONE]` ends it. An
    error object (https://platform.openai.com/docs/guides/error-codes) is raised; a chunk whose
    choices or tool calls are not indexed by small integers is refused (the encoders key on them)."""

    def __init__(self, provider: str, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        super().__init__(provider, max_event_bytes)

    def is_end(self, data: bytes) -> bool:
        return data.strip() == b"[DONE]"

    def event(self, name: str | None, data: dict[str, Any]) -> list[dict[str, Any]]:
        error = stream_error(self.provider, name, data)
        if error is not None:
            raise error
        check_chunk(self.provider, data)
        return [data]


def stream_error(provider: str, name: str | None, data: dict[str, Any]) -> SluicegateError | None:
    """The error an OpenAI answer or stream event reports: an `error` object, an event named
    `error`, or vLLM's `{"object": "error", "message", "type", "code"}`."""
    if not data.get("error") and data.get("object") != "error" and name != "error":
        return None
    found = data.get("error")
    error: dict[str, Any] = found if isinstance(found, dict) else data
    kind = error.get("type") or error.get("code")
    detail = json_error_message(error, ("message",)) or json_error_message(data, ("error",), ("message",))
    return reported_error(provider, kind, detail, error.get("code"))


def check_chunk(provider: str, chunk: dict[str, Any]) -> None:
    """Refuse a chunk whose choices or tool calls the neutral encoders could not index."""
    choices = chunk.get("choices")
    if choices is None:
        return
    if not isinstance(choices, list):
        raise InvalidStream(f"provider '{provider}' sent a chunk whose choices are not a list")
    for choice in choices:
        if not isinstance(choice, dict) or not _index_ok(choice.get("index", 0)):
            raise InvalidStream(f"provider '{provider}' sent a chunk with a choice that is not indexed")
        delta = choice.get("delta")
        if delta is None:
            continue
        calls = delta.get("tool_calls") if isinstance(delta, dict) else ()
        if not isinstance(delta, dict) or not isinstance(calls, list | None):
            raise InvalidStream(f"provider '{provider}' sent a chunk whose delta is not an object")
        for call in calls or ():
            if not isinstance(call, dict) or not _index_ok(call.get("index", 0)):
                raise InvalidStream(f"provider '{provider}' sent a tool call that is not indexed")


def _index_ok(value: Any) -> bool:
    return type(value) is int and 0 <= value < MAX_INDEX


class MistralProvider(OpenAIProvider):
    """Mistral's API (https://docs.mistral.ai/api/#tag/chat): OpenAI's shape, with its own quirks.

    It refuses fields it does not know (422), so the gateway does not ask for the usage chunk
    (the last chunk of a Mistral stream carries the usage anyway), sends `max_completion_tokens`
    as `max_tokens` and `seed` as `random_seed`.
    """

    label = "Mistral"

    def _body(self, call: Call, body: dict[str, Any]) -> bytes:
        assert call.route is not None
        out = dict(body)
        out["model"] = call.route.upstream_model or call.model_requested
        out.pop("stream_options", None)
        if "max_completion_tokens" in out:
            out.setdefault("max_tokens", out.pop("max_completion_tokens"))
        if "seed" in out:
            out["random_seed"] = out.pop("seed")
        return orjson.dumps(out)


for _name, _preset in PRESETS.items():
    register_provider_type(_name, MistralProvider if _name == "mistral" else OpenAIProvider, _preset)
