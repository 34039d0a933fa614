"""Every text of an Anthropic request, answer or stream event, with its path, for the guardrails.

Part of the Anthropic dialect (`sluicegate.dialects.anthropic`); `sluicegate.dialects` picks it
for the `messages` and `count_tokens` endpoints. Each body is read whole
(`sluicegate.dialects.fields`) except the fields listed below, each with the reason it is not
text a model reads or writes; tool inputs and schemas are user-defined JSON, read whole, keys
included. The lists are checked against the `anthropic` SDK's types by
`tests/guardrails/test_field_coverage.py`.
"""

from __future__ import annotations

from typing import Any

from sluicegate.dialects.fields import Fields, under
from sluicegate.dialects.openai_texts import (
    CACHE,
    CALL_ID,
    FILE_REF,
    KIND,
    LABEL,
    MEDIA,
    PROVIDER,
    ROLE,
    ROUTING,
    SAMPLING,
    SIGNATURE,
    STOP,
    TRANSPORT,
)
from sluicegate.dialects.paths import USER, Path, Step, format_path

ENCRYPTED = "content the provider encrypted; nobody but the provider can read it"

#: the fields of one content block (https://docs.anthropic.com/en/api/messages), relative to it
_BLOCK = {
    ".type": KIND,
    ".cache_control": CACHE,
    ".id": CALL_ID,
    ".tool_use_id": CALL_ID,
    ".caller": "which tool or client made the call (ids)",
    ".signature": SIGNATURE,
    "(type=redacted_thinking).data": ENCRYPTED,
    "(type=image|document).source(type=base64|url|file)": MEDIA,
    ".source.type": KIND,
    ".source.media_type": "the media type of a text document",
    "(type=container_upload).file_id": FILE_REF,
    ".citations.*.type": KIND,
    ".citations.*.encrypted_index": ENCRYPTED,
    ".citations.*.file_id": FILE_REF,
    ".content.*.type": KIND,
    ".content.*.encrypted_content": ENCRYPTED,
    ".content.encrypted_stdout": ENCRYPTED,
    ".content.type": KIND,
}


def _blocks(prefix: str, depth: int = 3) -> dict[str, str]:
    """`_BLOCK` at `prefix` and in the blocks nested in it: tool results, search results and
    code-execution results hold blocks (`content`), a document may hold blocks (`source.content`),
    a web-fetch result holds a document (`content.content`)."""
    out = under([prefix], _BLOCK)
    if depth > 1:
        for nested in (".content.*", ".source.content.*", ".content.content"):
            out.update(_blocks(prefix + nested, depth - 1))
    return out


#: a Messages (or count_tokens) request
REQUEST = Fields(
    {
        "model": ROUTING,
        "stream": TRANSPORT,
        **dict.fromkeys(("max_tokens", "temperature", "top_k", "top_p"), SAMPLING),
        "metadata": LABEL,
        "stop_sequences": STOP,
        "thinking": "how many tokens the model may spend thinking",
        **dict.fromkeys(("service_tier", "inference_geo", "context_management"), PROVIDER),
        "container": "a code-execution container the provider keeps",
        "output_config.effort": PROVIDER,
        "output_config.format.type": KIND,
        "mcp_servers.*.authorization_token": "a credential for an MCP server, never shown to the model",
        "mcp_servers.*.url": "an MCP server's address",
        "mcp_servers.*.type": KIND,
        "tool_choice.type": KIND,
        "tools.*.type": KIND,
        "tools.*.cache_control": CACHE,
        "messages.*.role": ROLE,
        **_blocks("system.*"),
        **_blocks("messages.*.content.*"),
    },
    envelopes=["output_config.format"],
)

_MESSAGE = {
    ".id": "the message's id",
    ".type": KIND,
    ".role": ROLE,
    ".model": "the model that answered",
    ".stop_reason": "why the answer ended, one of a few names",
    ".stop_sequence": STOP,
    ".usage": "token counts",
    ".container": "a code-execution container the provider keeps",
    ".context_management": PROVIDER,
}

#: an Anthropic message (https://docs.anthropic.com/en/api/messages)
ANSWER = Fields({**{pattern[1:]: reason for pattern, reason in _MESSAGE.items()}, **_blocks("content.*")})

#: one Messages stream event (https://docs.anthropic.com/en/api/messages-streaming): a message's
#: start, a content block's start (a tool call's name and input may come whole here), a block's
#: delta (text, thinking, tool input as JSON fragments, citations), the message's delta and end
EVENT = Fields(
    {
        "type": KIND,
        "index": "the content block's position, which deltas continue",
        **under(["message"], _MESSAGE),
        **_blocks("message.content.*"),
        **_blocks("content_block"),
        "delta.type": KIND,
        "delta.signature": SIGNATURE,
        "delta.stop_reason": "why the answer ended, one of a few names",
        "delta.stop_sequence": STOP,
        "delta.container": "a code-execution container the provider keeps",
        "delta.citation.type": KIND,
        "delta.citation.encrypted_index": ENCRYPTED,
        "delta.citation.file_id": FILE_REF,
        "usage": "token counts",
        "context_management": PROVIDER,
        "error": "the provider's error report, relayed as sent",
    },
)


def request_texts(endpoint: str, body: dict[str, Any], model: str | None = None) -> list[tuple[Path, str]]:
    """Every text of a Messages (or count_tokens) request the model will read: the system prompt,
    every message block (text, tool-use inputs, tool results, thinking, text documents, search
    results, citations), tool definitions and their schemas, output formats; unknown fields."""
    if endpoint not in ("messages", "count_tokens"):
        return []
    return REQUEST.texts(body)


def response_texts(endpoint: str, data: dict[str, Any]) -> list[tuple[Path, str]]:
    """Every text of an Anthropic message: text, thinking, tool-use names and inputs, results of
    server tools, citations."""
    if endpoint != "messages":
        return []
    return ANSWER.texts(data)


def stream_event_texts(event: dict[str, Any]) -> list[tuple[str, Path, str]]:
    """(channel, path, text) one Messages stream event adds, one channel per content block and
    field: `content_block_start` (its text, a tool's name and whole input) and the deltas that
    continue it (`text`, `thinking`, tool input JSON fragments, citations)."""
    index = event.get("index")
    block: list[Step] = ["content", index if isinstance(index, int) and not isinstance(index, bool) else -1]
    out = []
    for n, (path, text) in enumerate(EVENT.texts(event)):
        steps = [*block, *path[1:]] if path and path[0] in ("content_block", "delta") else list(path)
        channel = format_path(tuple(steps))
        if USER in path:
            channel += f"#{n}"  # user-defined JSON comes whole in one event: nothing continues it
        out.append((channel, path, text))
    return out
