"""OpenAI and the OpenAI-compatible family (Groq, Mistral, DeepSeek, xAI, OpenRouter, vLLM, Ollama ...).

One adapter; family members differ only by preset (base URL, whether a key is needed). The
client's OpenAI body passes through: only `model` is replaced and, on streams, usage is asked
for so the gateway can account for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from sluicegate.errors import RateLimited, SluicegateError, UpstreamError, UpstreamUnavailable
from sluicegate.providers.base import Preset, Provider, register_provider_type

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


class OpenAIProvider(Provider):
    """An upstream speaking the OpenAI HTTP API."""

    native_dialect = "openai"

    def __init__(self, config: Any, preset: Preset) -> None:
        super().__init__(config, preset)
        self._urls: dict[str, str] = {}
        self._extra_headers = dict(config.headers)
        self._headers: tuple[str | None, dict[str, str]] | None = None

    def url_for(self, endpoint: str, model: str) -> str:
        url = self._urls.get(endpoint)
        if url is None:
            url = self._urls[endpoint] = f"{self.base_url}/{endpoint}"
        return url

    def auth_headers(self, secret: str | None) -> dict[str, str]:
        cached = self._headers
        if cached is not None and cached[0] == secret:
            return cached[1]
        headers = {"Content-Type": "application/json", **self._extra_headers}
        if secret:
            name, value = self.credential_header(secret)
            headers[name] = value
        self._headers = (secret, headers)
        return headers

    def credential_header(self, secret: str) -> tuple[str, str]:
        """The header that carries the credential."""
        return "Authorization", f"Bearer {secret}"

    def prepare_body(self, call: Call) -> bytes:
        body = call.body
        assert body is not None and call.route is not None
        out = dict(body)  # shallow copy: the parsed body stays as the client sent it
        upstream_model = call.route.upstream_model or call.model_requested
        out["model"] = upstream_model
        if call.stream:
            # Ask for the usage chunk whatever the client asked: accounting needs it. The
            # gateway drops that chunk again when the client did not ask for it.
            options = out.get("stream_options")
            options = dict(options) if isinstance(options, dict) else {}
            options["include_usage"] = True
            out["stream_options"] = options
        return orjson.dumps(out)

    def parse_error(self, status: int, body: bytes, retry_after: float | None, secret: str | None) -> SluicegateError:
        detail = _error_message(body)
        if secret and detail:
            detail = detail.replace(secret, "[redacted]")
        where = f"provider '{self.name}'"
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


def _error_message(body: bytes) -> str:
    """The human message of an OpenAI-style error body, bounded; empty when there is none."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:300].decode("utf-8", "replace").strip()
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            msg = err.get("message")
            if isinstance(msg, str):
                return msg[:1000]
        elif isinstance(err, str):
            return err[:1000]
    return ""


for _name, _preset in PRESETS.items():
    register_provider_type(_name, OpenAIProvider, _preset)
