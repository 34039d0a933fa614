"""OpenAI and the OpenAI-compatible family (Groq, Mistral, DeepSeek, xAI, OpenRouter, vLLM, Ollama ...).

One adapter; family members differ only by preset (base URL, whether a key is needed). The
client's OpenAI body passes through: only `model` is replaced and, on streams, usage is asked
for so the gateway can account for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from sluicegate.errors import UpstreamError
from sluicegate.providers.base import (
    Preset,
    Provider,
    StreamDecoder,
    capped,
    has_output_limit,
    json_error_message,
    output_cap,
    register_provider_type,
)
from sluicegate.providers.framing import SSEParser, event_json

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
        return OpenAIStreamDecoder(self.name)

    def error_message(self, body: bytes) -> str:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body[:300].decode("utf-8", "replace").strip()
        return json_error_message(data, ("error", "message"), ("error",), ("message",), ("detail",))


#: types whose translated calls say `max_completion_tokens` (OpenAI's own API; others vary)
_COMPLETION_TOKENS_TYPES = frozenset({"openai", "azure_openai"})
#: keys of the neutral chat body that are not OpenAI's (dropped on the way to an OpenAI upstream)
NEUTRAL_EXTENSIONS = frozenset({"top_k", "thinking_budget"})


class OpenAIStreamDecoder(StreamDecoder):
    """OpenAI SSE: each `data:` is a chunk already in the neutral shape; `[DONE]` ends it."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.sse = SSEParser()
        self.done = False

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        out = []
        for _, payload in self.sse.feed(data):
            if payload == b"[DONE]":
                self.done = True
                continue
            chunk = event_json(self.provider, payload)
            if "error" in chunk:
                detail = json_error_message(chunk, ("error", "message"))
                raise UpstreamError(f"provider '{self.provider}' reported an error in the stream: {detail}")
            out.append(chunk)
        return out


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
