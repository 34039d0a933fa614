"""Request validation of the fake Bedrock: a Converse body checked as Bedrock does (roles that
alternate, ContentBlock unions, tool use answered by tool results, toolConfig, inferenceConfig),
failing with AWS's ValidationException messages.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from sluicegate.testing.wire import words

IMAGE_FORMATS = frozenset({"png", "jpeg", "gif", "webp"})
BLOCK_KINDS = frozenset(
    {
        "text",
        "image",
        "document",
        "video",
        "audio",
        "toolUse",
        "toolResult",
        "guardContent",
        "cachePoint",
        "reasoningContent",
        "citationsContent",
    }
)

START_WITH_USER = (
    "A conversation must start with a user message. Try again with a conversation that starts with a user message."
)


def _null(where: str) -> str:
    return f"1 validation error detected: Value null at '{where}' failed to satisfy constraint: Member must not be null"


class Invalid(Exception):
    """A 400 ValidationException with AWS's message."""


def validate(data: Any) -> tuple[str, int, int, int | None]:
    """Check a Converse request like Bedrock does; (last user text, prompt words, messages, maxTokens)."""
    if not isinstance(data, dict):
        raise Invalid("1 validation error detected: the request body must be a JSON object")
    messages = data.get("messages")
    if messages is None:
        raise Invalid(_null("messages"))
    if not isinstance(messages, list) or not messages:
        raise Invalid(START_WITH_USER)
    tool_config = data.get("toolConfig")
    prompt_words = 0
    used_tools = False
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise Invalid(
                f"1 validation error detected: Value '{role}' at 'messages.{i + 1}.member.role' failed to satisfy "
                "constraint: Member must satisfy enum value set: [user, assistant]"
            )
        if i == 0 and role != "user":
            raise Invalid(START_WITH_USER)
        if i and messages[i - 1].get("role") == role:
            raise Invalid(
                "A conversation must alternate between user and assistant roles. Make sure the conversation "
                "alternates between user and assistant roles and try again."
            )
        content = message.get("content")
        if not isinstance(content, list) or not content:
            raise Invalid(
                f"1 validation error detected: Value at 'messages.{i + 1}.member.content' failed to satisfy "
                "constraint: Member must have length greater than or equal to 1"
            )
        for j, block in enumerate(content):
            prompt_words += _check_block(block, i, j, role)
            used_tools = used_tools or "toolUse" in block or "toolResult" in block
    if used_tools and not (isinstance(tool_config, dict) and tool_config.get("tools")):
        raise Invalid("The toolConfig field must be defined when using toolUse and toolResult content blocks.")
    _check_tool_results(messages)
    system = data.get("system")
    system_messages = 0
    if system is not None:
        if not isinstance(system, list):
            raise Invalid("1 validation error detected: 'system' must be a list of SystemContentBlock")
        for block in system:
            if isinstance(block, dict) and isinstance(block.get("text"), str):
                prompt_words += words(block["text"])
        system_messages = 1 if system else 0
    if tool_config is not None:
        for k, tool in enumerate(tool_config.get("tools") or ()):
            spec = tool.get("toolSpec") if isinstance(tool, dict) else None
            schema = spec.get("inputSchema") if isinstance(spec, dict) else None
            if (
                not isinstance(spec, dict)
                or not spec.get("name")
                or not isinstance(schema, dict)
                or "json" not in schema
            ):
                raise Invalid(
                    f"1 validation error detected: Value at 'toolConfig.tools.{k + 1}.member.toolSpec' failed to "
                    "satisfy constraint: Member must have a name and an inputSchema"
                )
    inference = data.get("inferenceConfig") or {}
    max_tokens = inference.get("maxTokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise Invalid(
            f"1 validation error detected: Value '{max_tokens}' at 'inferenceConfig.maxTokens' failed to satisfy "
            "constraint: Member must have value greater than or equal to 1"
        )
    last_user = ""
    for message in reversed(messages):
        if message["role"] == "user":
            last_user = "".join(b["text"] for b in message["content"] if isinstance(b.get("text"), str))
            break
    return last_user, prompt_words, len(messages) + system_messages, max_tokens


def _check_block(block: Any, i: int, j: int, role: str) -> int:
    """Validate one ContentBlock (a union: exactly one member); the words of its text."""
    if not isinstance(block, dict) or len(block) != 1 or next(iter(block)) not in BLOCK_KINDS:
        raise Invalid(
            f"1 validation error detected: Value at 'messages.{i + 1}.member.content.{j + 1}.member' failed to "
            "satisfy constraint: Member must be a ContentBlock with exactly one member set"
        )
    kind, value = next(iter(block.items()))
    where = f"messages.{i + 1}.member.content.{j + 1}.member"
    if kind == "text":
        if not isinstance(value, str) or not value.strip():
            raise Invalid(
                f"The text field in the ContentBlock object at messages.{i}.content.{j} is blank. "
                "Add text to the text field, and try again."
            )
        return words(value)
    if kind == "image":
        if not isinstance(value, dict) or value.get("format") not in IMAGE_FORMATS:
            raise Invalid(
                f"1 validation error detected: Value at '{where}.image.format' failed to satisfy constraint: "
                "Member must satisfy enum value set: [png, jpeg, gif, webp]"
            )
        _check_bytes(value.get("source"), f"{where}.image.source.bytes")
    elif kind == "document":
        if not isinstance(value, dict) or not value.get("name") or not value.get("format"):
            raise Invalid(_null(f"{where}.document.name"))
        _check_bytes(value.get("source"), f"{where}.document.source.bytes")
    elif kind == "toolUse":
        if role != "assistant":
            raise Invalid(f"messages.{i}.content.{j}: toolUse blocks can only be sent by the assistant.")
        for name in ("toolUseId", "name", "input"):
            if not isinstance(value, dict) or value.get(name) in (None, ""):
                raise Invalid(_null(f"{where}.toolUse.{name}"))
    elif kind == "toolResult":
        if not isinstance(value, dict) or not value.get("toolUseId"):
            raise Invalid(_null(f"{where}.toolResult.toolUseId"))
        if value.get("status") not in (None, "success", "error"):
            raise Invalid(
                f"1 validation error detected: Value at '{where}.toolResult.status' failed to satisfy constraint: "
                "Member must satisfy enum value set: [success, error]"
            )
        total = 0
        for part in value.get("content") or ():
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                total += words(part["text"])
        return total
    elif kind == "reasoningContent":
        text = value.get("reasoningText") if isinstance(value, dict) else None
        readable = isinstance(text, dict) and isinstance(text.get("text"), str)
        if role != "assistant" or not (readable or (isinstance(value, dict) and "redactedContent" in value)):
            raise Invalid(f"1 validation error detected: Value at '{where}.reasoningContent' is not valid")
    return 0


def _check_bytes(source: Any, where: str) -> None:
    data = source.get("bytes") if isinstance(source, dict) else None
    try:
        if not isinstance(data, str) or not base64.b64decode(data, validate=True):
            raise ValueError
    except (ValueError, binascii.Error):
        raise Invalid(
            f"1 validation error detected: Value at '{where}' failed to satisfy constraint: Member must be base64 bytes"
        ) from None


def _check_tool_results(messages: list[dict[str, Any]]) -> None:
    """Every toolUse of an assistant turn is answered by a toolResult in the next user turn."""
    for i in range(1, len(messages)):
        results = [b["toolResult"]["toolUseId"] for b in messages[i]["content"] if "toolResult" in b]
        if not results:
            continue
        uses = [b["toolUse"]["toolUseId"] for b in messages[i - 1]["content"] if "toolUse" in b]
        if len(results) > len(uses):
            raise Invalid(
                f"The number of toolResult blocks at messages.{i}.content exceeds the number of toolUse blocks of "
                "previous turn."
            )
        missing = [u for u in uses if u not in results]
        if missing:
            raise Invalid(
                f"Expected toolResult blocks at messages.{i}.content for the following Ids: {', '.join(missing)}"
            )
