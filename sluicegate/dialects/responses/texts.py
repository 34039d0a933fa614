"""Every text of a Responses request or answer, with its path in the body, for the guardrails.

Part of the Responses dialect (`sluicegate.dialects.responses`); `sluicegate.dialects` picks it
for the `responses` endpoint. Each body is read whole (`sluicegate.dialects.fields`) except the
fields listed below, each with the reason it is not text a model reads or writes; function
schemas, `text.format` schemas and call arguments are read whole, keys included. The lists are
checked against the `openai` SDK's types by `tests/guardrails/test_field_coverage.py`.
"""

from __future__ import annotations

from typing import Any

from sluicegate.dialects.fields import Fields, under
from sluicegate.dialects.openai_texts import (
    CALL_ID,
    END_USER,
    FILE_REF,
    KIND,
    LABEL,
    MEDIA,
    MODERATION,
    PROVIDER,
    ROLE,
    ROUTING,
    SAMPLING,
    TRANSPORT,
)
from sluicegate.dialects.paths import Path

ENCRYPTED = "content the provider encrypted; nobody but the provider can read it"
ITEM_ID = "an id of an item or of something the provider keeps"
STORED = "state the provider keeps (the gateway refuses it: it keeps none)"
CREDENTIAL = "a credential or address for a tool's server, never shown to the model"
LOGPROBS = "tokens of an earlier answer with their probabilities; the text is read in the part"

#: the parts of a message's or a tool output's content, relative to the part
_PART = {
    ".type": KIND,
    ".image_url": MEDIA,
    ".file_data": MEDIA,
    ".file_url": MEDIA,
    ".file_id": FILE_REF,
    ".detail": "the detail level an image is read at",
    ".logprobs": LOGPROBS,
    ".annotations.*.type": KIND,
    ".annotations.*.file_id": FILE_REF,
    ".annotations.*.container_id": ITEM_ID,
}

#: the fields of one input or output item (a message, a call, a call's output, reasoning ...),
#: relative to the item (https://platform.openai.com/docs/api-reference/responses/object)
_ITEM = {
    ".type": KIND,
    ".id": ITEM_ID,
    ".call_id": CALL_ID,
    ".status": "the item's state, one of a few names",
    ".role": ROLE,
    ".encrypted_content": ENCRYPTED,
    ".approval_request_id": ITEM_ID,
    ".container_id": ITEM_ID,
    ".pending_safety_checks.*.id": ITEM_ID,
    ".acknowledged_safety_checks.*.id": ITEM_ID,
    ".results.*.file_id": FILE_REF,
    ".outputs.*.type": KIND,
    ".outputs.*.url": MEDIA,
    "(type=image_generation_call).result": MEDIA,
    ".output.type": KIND,
    ".output.image_url": MEDIA,
    ".output.file_id": FILE_REF,
    ".summary.*.type": KIND,
    **under([".content.*", ".output.*"], _PART),
}

#: the fields of one tool definition, relative to it
_TOOL = {
    ".type": KIND,
    ".vector_store_ids": FILE_REF,
    ".authorization": CREDENTIAL,
    ".headers": CREDENTIAL,
    ".server_url": CREDENTIAL,
    ".connector_id": ITEM_ID,
    ".container": "a code container the provider keeps (an id, or files and a network policy)",
    ".environment": "a shell's container and network policy, which hold credentials",
    ".input_image_mask": MEDIA,
}

_SAMPLING = ("temperature", "top_p", "top_logprobs", "max_output_tokens", "max_tool_calls")
_PROVIDER = (
    "store", "service_tier", "parallel_tool_calls", "prompt_cache_key", "prompt_cache_retention",
    "prompt_cache_options", "truncation", "include", "background", "background_options", "reasoning",
    "context_management",
)  # fmt: skip
_ARGUMENTS = [f"{items}.*.arguments" for items in ("input", "instructions")]

#: a Responses request (https://platform.openai.com/docs/api-reference/responses/create)
REQUEST = Fields(
    {
        "model": ROUTING,
        "stream": TRANSPORT,
        "stream_options": TRANSPORT,
        **dict.fromkeys(_SAMPLING, SAMPLING),
        **dict.fromkeys(_PROVIDER, PROVIDER),
        "metadata": LABEL,
        "user": END_USER,
        "safety_identifier": END_USER,
        "moderation": MODERATION,
        "previous_response_id": STORED,
        "conversation": STORED,
        "prompt.id": STORED,
        "prompt.version": STORED,
        "text.verbosity": PROVIDER,
        "text.format.type": KIND,
        "tool_choice.type": KIND,
        **under(["tools.*", "input.*.tools.*", "instructions.*.tools.*"], _TOOL),
        **under(["input.*", "instructions.*"], _ITEM),
    },
    json_text=_ARGUMENTS,
    envelopes=["text.format", "tool_choice", "prompt"],
)

_ECHOES = (
    "instructions", "tools", "tool_choice", "text", "prompt", "reasoning", "max_output_tokens", "max_tool_calls",
    "parallel_tool_calls", "previous_response_id", "conversation", "background", "truncation", "store", "user",
    "safety_identifier", "prompt_cache_key", "prompt_cache_retention", "top_logprobs", "temperature", "top_p",
    "service_tier", "metadata", "moderation", "include", "context_management",
)  # fmt: skip

#: a Response object (https://platform.openai.com/docs/api-reference/responses/object): what the
#: model wrote is its `output`; the request's settings echoed back were read on the way in
ANSWER = Fields(
    {
        "id": "the response's id",
        "object": KIND,
        "created_at": "a timestamp",
        "completed_at": "a timestamp",
        "model": "the model that answered",
        "status": "the response's state, one of a few names",
        "incomplete_details": "why the answer stopped, one of a few names",
        "error": "the provider's error report",
        "usage": "token counts",
        **dict.fromkeys(_ECHOES, "the request's own setting, echoed back (read in the request)"),
        **under(["output.*"], _ITEM),
    },
    json_text=["output.*.arguments"],
)


def request_texts(endpoint: str, body: dict[str, Any], model: str | None = None) -> list[tuple[Path, str]]:
    """Every text of a Responses request the model will read: instructions, input messages and
    parts, calls (names, arguments also decoded) and their outputs, reasoning, tool definitions
    and schemas, `text.format`, prompt variables; unknown fields."""
    if endpoint != "responses":
        return []
    return REQUEST.texts(body)


def response_texts(endpoint: str, data: dict[str, Any]) -> list[tuple[Path, str]]:
    """Every text of a Response the model wrote: message text and refusals, reasoning, calls."""
    if endpoint != "responses":
        return []
    return ANSWER.texts(data)
