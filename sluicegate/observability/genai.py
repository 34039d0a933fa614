"""The OpenTelemetry GenAI semantic conventions as a call fills them: operation, provider, model,
request parameters and usage, plus the gateway's own attributes. Plain values, no SDK import."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sluicegate.call import Call

#: GenAI `gen_ai.operation.name` of each endpoint that calls a model
OPERATIONS = {
    "chat": "chat",
    "messages": "chat",
    "responses": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
    "count_tokens": "count_tokens",
}
#: `gen_ai.provider.name` of the provider types the GenAI conventions name; others go as their type
PROVIDER_NAMES = {
    "anthropic": "anthropic",
    "azure_openai": "azure.ai.openai",
    "bedrock": "aws.bedrock",
    "cohere": "cohere",
    "deepseek": "deepseek",
    "gemini": "gcp.gemini",
    "groq": "groq",
    "mistral": "mistral_ai",
    "openai": "openai",
    "perplexity": "perplexity",
    "xai": "x_ai",
}
#: the longest string attribute kept (a client names its model; longer values are cut)
MAX_ATTRIBUTE_CHARS = 256
#: guard verdicts listed on a call's span at most
MAX_VERDICTS = 32


def call_attributes(call: Call) -> dict[str, Any]:
    """The attributes a call's span ends with: GenAI conventions, HTTP status, the gateway's own."""
    out: dict[str, Any] = {
        "sluicegate.decision": call.decision,
        "sluicegate.outcome": call.outcome,
    }
    if call.status:
        out["http.response.status_code"] = call.status
    if call.client_ip:
        out["client.address"] = call.client_ip
    if call.consumer is not None:
        out["sluicegate.consumer"] = call.consumer.name
    if call.key_id is not None:
        out["sluicegate.key_id"] = call.key_id
    if call.provider is not None:
        out["sluicegate.provider"] = call.provider
    route = call.route
    if route is not None:
        out["gen_ai.provider.name"] = PROVIDER_NAMES.get(route.provider.type, route.provider.type)
    if call.model_requested:
        out["gen_ai.request.model"] = cut(call.model_requested)
    if call.model_served:
        out["gen_ai.response.model"] = cut(call.model_served)
    if call.endpoint in OPERATIONS:
        out["gen_ai.request.stream"] = call.stream
        if call.body is not None:
            _request_parameters(call.body, out)
    for key, value in (
        ("gen_ai.usage.input_tokens", call.prompt_tokens),
        ("gen_ai.usage.output_tokens", call.completion_tokens),
        ("sluicegate.cost_micro_usd", call.cost_micro_usd),
    ):
        if value is not None:
            out[key] = value
    # Each attribute costs a few microseconds to record and export: the details only when not 0.
    for key, value in (
        ("gen_ai.usage.cache_read.input_tokens", call.cached_tokens),
        ("gen_ai.usage.cache_creation.input_tokens", call.cache_write_tokens),
        ("gen_ai.usage.reasoning.output_tokens", call.reasoning_tokens),
    ):
        if value:
            out[key] = value
    if call.usage_source in ("counted", "cache"):
        # The upstream reported no usable usage (the gateway counted), or a cache hit's tokens.
        out["sluicegate.usage_source"] = call.usage_source
    cache = call.cache
    if cache is not None:
        out["sluicegate.cache"] = cache.audit_value()
        if cache.saved_micro_usd is not None:
            out["sluicegate.cache.saved_micro_usd"] = cache.saved_micro_usd
    if call.stream and call.ttft_ms is not None:
        out["gen_ai.response.time_to_first_chunk"] = call.ttft_ms / 1000.0
    guards = call.guards
    if guards is not None and guards.records:
        # Guard, action and direction: never the text a guard matched.
        verdicts = dict.fromkeys(f"{r.guard}:{r.action}:{r.direction}" for r in guards.records)
        out["sluicegate.guard_verdicts"] = list(verdicts)[:MAX_VERDICTS]
    return out


#: request parameters recorded, by the body field that carries them in each client API
_NUMBER_PARAMETERS = (
    ("max_tokens", "gen_ai.request.max_tokens"),
    ("max_completion_tokens", "gen_ai.request.max_tokens"),
    ("max_output_tokens", "gen_ai.request.max_tokens"),
    ("temperature", "gen_ai.request.temperature"),
    ("top_p", "gen_ai.request.top_p"),
    ("top_k", "gen_ai.request.top_k"),
    ("frequency_penalty", "gen_ai.request.frequency_penalty"),
    ("presence_penalty", "gen_ai.request.presence_penalty"),
    ("seed", "gen_ai.request.seed"),
)


def _request_parameters(body: dict[str, Any], out: dict[str, Any]) -> None:
    """The request's sampling parameters the conventions name, numbers only (`True` is not one)."""
    for field, key in _NUMBER_PARAMETERS:
        value = body.get(field)
        if type(value) is int and -(2**53) < value < 2**53:
            out[key] = value
        elif type(value) is float and -1e9 < value < 1e9:
            out[key] = value
    n = body.get("n")
    if type(n) is int and 1 < n < 2**31:
        out["gen_ai.request.choice.count"] = n


def error_type(call: Call) -> str | None:
    """`error.type` of a call: its error's code, or its outcome when that is not `ok`; else None."""
    if call.error is not None:
        return call.error.code
    return None if call.outcome == "ok" else call.outcome


def cut(text: str) -> str:
    """A string attribute bounded to `MAX_ATTRIBUTE_CHARS`."""
    return text if len(text) <= MAX_ATTRIBUTE_CHARS else text[:MAX_ATTRIBUTE_CHARS]
