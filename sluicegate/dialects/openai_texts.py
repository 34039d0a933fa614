"""Every text of an OpenAI request, answer or stream chunk, with its path, for the guardrails.

Part of the OpenAI dialect (`sluicegate.dialects.openai`), for chat completions, legacy
completions and embeddings; translated answers are neutral, so chat-shaped, and read here too.
Each body shape is read whole (`sluicegate.dialects.fields`) except the fields listed below, each
with the reason it is not text a model reads or writes. The lists are checked against the
official SDK's request and response types by `tests/guardrails/test_field_coverage.py`.
"""

from __future__ import annotations

from typing import Any

from sluicegate.dialects.fields import Fields, under
from sluicegate.dialects.paths import USER, Path, Step, format_path

# Reasons, shared by many entries.
ROUTING = "names the route; the gateway puts the upstream model in its place"
TRANSPORT = "how the answer is delivered (streaming, usage in the stream), not what the model reads"
SAMPLING = "a sampling or length setting: a number or switch the model never reads"
LABEL = "labels for the provider's or the gateway's records, never put in the prompt"
END_USER = "an end-user id for the provider's abuse monitoring, never put in the prompt"
PROVIDER = "a provider option (tier, storage, caching, effort): never put in the prompt"
STOP = "stop sequences end the answer where they appear; the model is not shown them"
ROLE = "the speaker's role, one of a few names"
KIND = "the kind of a part, call or format, one of a few names"
CALL_ID = "an opaque id pairing a tool call with its result"
MEDIA = "media (an image, audio or file: base64 data or a URL); guards read text, not media"
FILE_REF = "a reference to a file uploaded to the provider; its content is not in the body"
SIGNATURE = "an opaque signature of the model's reasoning, checked by the provider"
CACHE = "a prompt-cache hint"
VOICE = "the voice and format of spoken output"
OUTPUT_AUDIO = "a reference to an earlier spoken answer kept by the provider"
MODERATION = "the provider's moderation settings or verdict, not model text"

_CHAT_SAMPLING = (
    "temperature", "top_p", "top_k", "n", "seed", "frequency_penalty", "presence_penalty", "max_tokens",
    "max_completion_tokens", "logprobs", "top_logprobs", "logit_bias", "thinking_budget",
)  # fmt: skip
_CHAT_PROVIDER = (
    "service_tier", "store", "parallel_tool_calls", "reasoning_effort", "verbosity", "modalities",
    "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options",
)  # fmt: skip
_COMPLETIONS_SAMPLING = (
    "temperature", "top_p", "n", "seed", "frequency_penalty", "presence_penalty", "max_tokens", "logprobs",
    "logit_bias", "best_of", "echo",
)  # fmt: skip

#: the chat completions request (https://platform.openai.com/docs/api-reference/chat/create)
CHAT_REQUEST = Fields(
    {
        "model": ROUTING,
        "stream": TRANSPORT,
        "stream_options": TRANSPORT,
        **dict.fromkeys(_CHAT_SAMPLING, SAMPLING),
        "metadata": LABEL,
        "user": END_USER,
        "safety_identifier": END_USER,
        **dict.fromkeys(_CHAT_PROVIDER, PROVIDER),
        "audio": VOICE,
        "moderation": MODERATION,
        "stop": STOP,
        "response_format.type": KIND,
        "prediction.type": KIND,
        "prediction.content.*.type": KIND,
        "tool_choice.type": KIND,
        "tools.*.type": KIND,
        "tools.*.custom.format.type": KIND,
        "tools.*.cache_control": CACHE,
        "messages.*.role": ROLE,
        "messages.*.tool_call_id": CALL_ID,
        "messages.*.tool_calls.*.id": CALL_ID,
        "messages.*.tool_calls.*.type": KIND,
        "messages.*.audio": OUTPUT_AUDIO,
        "messages.*.reasoning_signature": SIGNATURE,
        "messages.*.cache_control": CACHE,
        "messages.*.content.*.type": KIND,
        "messages.*.content.*.cache_control": CACHE,
        "messages.*.content.*.image_url": MEDIA,
        "messages.*.content.*.input_audio": MEDIA,
        "messages.*.content.*.file.file_data": MEDIA,
        "messages.*.content.*.file.file_id": FILE_REF,
    },
    json_text=["messages.*.tool_calls.*.function.arguments", "messages.*.function_call.arguments"],
    envelopes=[
        "messages.*.tool_calls.*.function",
        "messages.*.tool_calls.*.custom",
        "messages.*.function_call",
        "messages.*.content.*.file",
        "tools.*.function",
        "tools.*.custom.format.grammar",
        "functions.*",
        "response_format.json_schema",
        "tool_choice.function",
        "tool_choice.custom",
        "function_call",
    ],
)

#: the legacy completions request (https://platform.openai.com/docs/api-reference/completions)
COMPLETIONS_REQUEST = Fields(
    {
        "model": ROUTING,
        "stream": TRANSPORT,
        "stream_options": TRANSPORT,
        **dict.fromkeys(_COMPLETIONS_SAMPLING, SAMPLING),
        "user": END_USER,
        "stop": STOP,
    },
    token_ids=["prompt"],
)

#: the embeddings request (https://platform.openai.com/docs/api-reference/embeddings)
EMBEDDINGS_REQUEST = Fields(
    {
        "model": ROUTING,
        "encoding_format": "the number format of the vectors returned",
        "dimensions": "the length of the vectors returned",
        "user": END_USER,
    },
    token_ids=["input"],
)

_ANSWER_ENVELOPE = {
    "id": "the answer's id",
    "object": KIND,
    "created": "a timestamp",
    "model": "the model that answered",
    "system_fingerprint": "the provider's backend configuration id",
    "service_tier": PROVIDER,
    "usage": "token counts",
    "metadata": LABEL,
    "moderation": MODERATION,
    "obfuscation": "random padding the provider adds to stream events against size side channels",
    "choices.*.index": "the choice's position",
    "choices.*.finish_reason": "why the answer ended, one of a few names",
    "choices.*.logprobs": (
        "the answer's own tokens again, with probabilities; the text is read in the message, and a "
        "redaction in a choice drops its logprobs"
    ),
}

#: a chat completion or legacy completion, and the neutral completion of translated calls
#: (https://platform.openai.com/docs/api-reference/chat/object)
ANSWER = Fields(
    {
        **_ANSWER_ENVELOPE,
        "choices.*.message.role": ROLE,
        "choices.*.message.tool_calls.*.id": CALL_ID,
        "choices.*.message.tool_calls.*.type": KIND,
        "choices.*.message.audio.id": OUTPUT_AUDIO,
        "choices.*.message.audio.data": MEDIA,
        "choices.*.message.audio.expires_at": "when the provider forgets the audio",
        "choices.*.message.annotations.*.type": KIND,
        "choices.*.message.annotations.*.url_citation.start_index": "a position in the text",
        "choices.*.message.annotations.*.url_citation.end_index": "a position in the text",
        "choices.*.message.reasoning_signature": SIGNATURE,
    },
    json_text=["choices.*.message.tool_calls.*.function.arguments", "choices.*.message.function_call.arguments"],
    envelopes=[
        "choices.*.message.tool_calls.*.function",
        "choices.*.message.tool_calls.*.custom",
        "choices.*.message.function_call",
        "choices.*.message.annotations.*.url_citation",
    ],
)

#: a chat completion chunk, and the neutral chunks of translated streams
#: (https://platform.openai.com/docs/api-reference/chat-streaming/streaming). Tool-call argument
#: fragments are read as written: a fragment is no JSON on its own.
CHUNK = Fields(
    {
        **_ANSWER_ENVELOPE,
        **under(
            ["choices.*.delta"],
            {
                ".role": ROLE,
                ".tool_calls.*.index": "the tool call's position, which fragments continue",
                ".tool_calls.*.id": CALL_ID,
                ".tool_calls.*.type": KIND,
                ".audio.id": OUTPUT_AUDIO,
                ".audio.data": MEDIA,
                ".audio.expires_at": "when the provider forgets the audio",
                ".reasoning_signature": SIGNATURE,
                ".annotations.*.type": KIND,
                ".annotations.*.url_citation.start_index": "a position in the text",
                ".annotations.*.url_citation.end_index": "a position in the text",
                ".content.*.type": KIND,
            },
        ),
    },
    envelopes=[
        "choices.*.delta.tool_calls.*.function",
        "choices.*.delta.function_call",
        "choices.*.delta.annotations.*.url_citation",
    ],
)

_REQUESTS = {"chat": CHAT_REQUEST, "completions": COMPLETIONS_REQUEST, "embeddings": EMBEDDINGS_REQUEST}


def request_texts(endpoint: str, body: dict[str, Any], model: str | None = None) -> list[tuple[Path, str]]:
    """Every text of a request the model will read: all roles and parts, tool definitions and
    schemas, tool calls (arguments also decoded), response formats, predictions, prompts and
    embedding inputs (token ids decoded with `model`'s encoding, else the body's `model`'s);
    unknown fields included."""
    fields = _REQUESTS.get(endpoint)
    if fields is None:
        return []
    if model is None:
        named = body.get("model")
        model = named if isinstance(named, str) else None
    return fields.texts(body, model=model)


def holds_token_ids(endpoint: str, body: dict[str, Any]) -> bool:
    """Whether `request_texts` decodes token ids in this request (a prompt or an input of ids)."""
    fields = _REQUESTS.get(endpoint)
    return fields is not None and fields.holds_token_ids(body)


def response_texts(endpoint: str, data: dict[str, Any]) -> list[tuple[Path, str]]:
    """Every text of a complete answer: content (string or parts), refusals, reasoning under any
    name, tool and function calls (arguments also decoded), audio transcripts, citations."""
    if endpoint not in ("chat", "completions"):
        return []
    return ANSWER.texts(data)


def chunk_texts(data: dict[str, Any]) -> list[tuple[str, Path, str]]:
    """(channel, path, text) an OpenAI (or neutral) stream chunk adds.

    A channel is one text growing across chunks: `0.content` (choice 0's content), `0.reasoning`,
    `0.tool_calls[1].function.arguments`. It is named by the path inside the choice's `delta`,
    with each list position replaced by the item's own `index` (tool calls) or dropped (content
    parts, which continue one another)."""
    out = []
    for n, (path, text) in enumerate(CHUNK.texts(data)):
        channel = _channel(data, path)
        if USER in path:
            channel += f"#{n}"  # user-defined JSON comes whole in one chunk: nothing continues it
        out.append((channel, path, text))
    return out


#: channel names by the steps they are made of (a stream repeats a handful of them)
_CHANNELS: dict[tuple[Step, ...], str] = {}


def _channel(data: Any, path: Path) -> str:
    steps: list[Step] = []
    node = data
    for step in path:
        if step is USER:
            steps.append(step)
        elif isinstance(step, int):
            item = node[step] if isinstance(node, list) and -len(node) <= step < len(node) else None
            index = item.get("index") if isinstance(item, dict) else None
            if isinstance(index, int) and not isinstance(index, bool):
                steps.append(index)
            node = item
        elif isinstance(step, str):
            steps.append(step)
            node = node.get(step) if isinstance(node, dict) else None
    key = tuple(steps)
    name = _CHANNELS.get(key)
    if name is None:
        if len(key) > 2 and key[0] == "choices" and isinstance(key[1], int):
            inside = key[3:] if key[2] == "delta" else key[2:]
            name = f"{key[1]}.{format_path(inside)}"
        else:
            name = format_path(key)
        if len(_CHANNELS) > 4096:
            _CHANNELS.clear()
        _CHANNELS[key] = name
    return name
