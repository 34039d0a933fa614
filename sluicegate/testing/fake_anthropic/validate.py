"""Fake Anthropic upstream, validation: a Messages / count_tokens body checked as Anthropic does.

Refusals raise `Invalid` with Anthropic's own message; the routes in `__init__.py` render them.
"""

from __future__ import annotations

from typing import Any

MIN_THINKING_BUDGET = 1024


class Invalid(Exception):
    """A request Anthropic refuses with 400 invalid_request_error (or `status`)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def check_common(data: dict[str, Any], betas: str = "") -> None:
    """What Messages and count_tokens both check: model, system, messages and their tool pairing."""
    model = data.get("model")
    if model is None:
        raise Invalid("model: Field required")
    if not isinstance(model, str):
        raise Invalid("model: Input should be a valid string")
    if data.get("system") is not None:
        _check_system(data["system"], "system")
    messages = data.get("messages")
    if messages is None:
        raise Invalid("messages: Field required")
    if not isinstance(messages, list):
        raise Invalid("messages: Input should be a valid list")
    if not messages:
        raise Invalid("messages: at least one message is required")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise Invalid(f"messages.{i}: Input should be a valid dictionary")
        role = message.get("role")
        if role == "system" and "mid-conversation-system" in betas:
            # The beta Claude Code sends: system text between turns, as a string or text blocks.
            _check_system(message.get("content"), f"messages.{i}.content")
            continue
        if role == "system":
            raise Invalid(
                'messages: Unexpected role "system". The Messages API accepts a top-level `system` parameter, '
                'not "system" as an input message role.'
            )
        if role not in ("user", "assistant"):
            raise Invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        content = message.get("content")
        if content is None:
            raise Invalid(f"messages.{i}.content: Field required")
        if not isinstance(content, (str, list)):
            raise Invalid(f"messages.{i}.content: Input should be a valid string or list")
        last = i == len(messages) - 1 and role == "assistant"
        if (content == "" or content == []) and not last:
            raise Invalid(
                f"messages.{i}: all messages must have non-empty content except for the optional final assistant "
                "message"
            )
        if isinstance(content, list):
            for j, block in enumerate(content):
                _check_block(block, f"messages.{i}.content.{j}", role)
    if messages[0].get("role") != "user":
        raise Invalid('messages: first message must use the "user" role')
    _check_tool_pairing(messages)


def _check_system(system: Any, at: str) -> None:
    if not isinstance(system, (str, list)):
        raise Invalid(f"{at}: Input should be a valid string or a list of text blocks")
    if isinstance(system, list):
        for j, block in enumerate(system):
            if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
                raise Invalid(f"{at}.{j}: Input should be a text block")


#: content block types a request may hold, by role
_USER_BLOCKS = frozenset({"text", "image", "document", "tool_result", "search_result"})
_ASSISTANT_BLOCKS = frozenset({"text", "tool_use", "thinking", "redacted_thinking"})


def _check_block(block: Any, at: str, role: str) -> None:
    if not isinstance(block, dict):
        raise Invalid(f"{at}: Input should be a valid dictionary")
    kind = block.get("type")
    allowed = _USER_BLOCKS if role == "user" else _ASSISTANT_BLOCKS
    if kind not in allowed:
        raise Invalid(f"{at}.type: Input tag '{kind}' is not an expected tag for a {role} message")
    if kind == "text":
        if not isinstance(block.get("text"), str):
            raise Invalid(f"{at}.text: Field required")
        if not block["text"]:
            raise Invalid("messages: text content blocks must be non-empty")
    elif kind in ("image", "document"):
        source = block.get("source")
        if not isinstance(source, dict) or source.get("type") not in ("base64", "url", "text", "file"):
            raise Invalid(f"{at}.source: Input should be a valid source")
        if source["type"] == "base64" and not (
            isinstance(source.get("media_type"), str) and isinstance(source.get("data"), str)
        ):
            raise Invalid(f"{at}.source.base64: media_type and data are required")
    elif kind == "tool_use":
        if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
            raise Invalid(f"{at}: tool_use blocks need an id and a name")
        if not isinstance(block.get("input"), dict):
            raise Invalid(f"{at}.tool_use.input: Input should be a valid dictionary")
    elif kind == "tool_result":
        if not isinstance(block.get("tool_use_id"), str):
            raise Invalid(f"{at}.tool_result.tool_use_id: Field required")
    elif kind == "thinking":
        if not isinstance(block.get("signature"), str):
            raise Invalid(f"{at}.thinking.signature: Field required")


def _check_tool_pairing(messages: list[dict[str, Any]]) -> None:
    """Every tool_use answered by a tool_result in the next message, and no stray tool_result."""
    previous_ids: list[str] = []
    for i, message in enumerate(messages):
        content = message["content"]
        blocks = content if isinstance(content, list) else []
        if message["role"] == "user":
            results = [b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"]
            for j, block in enumerate(blocks):
                if block.get("type") == "tool_result" and block.get("tool_use_id") not in previous_ids:
                    raise Invalid(
                        f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                        f"{block.get('tool_use_id')}. Each `tool_result` block must have a corresponding `tool_use` "
                        "block in the previous message."
                    )
            missing = [t for t in previous_ids if t not in results]
            if missing:
                raise Invalid(
                    f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                    f"{', '.join(missing)}. Each `tool_use` block must have a corresponding `tool_result` block in "
                    "the next message."
                )
            previous_ids = []
        else:
            if previous_ids:
                raise Invalid(
                    f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                    f"{', '.join(previous_ids)}. Each `tool_use` block must have a corresponding `tool_result` block "
                    "in the next message."
                )
            previous_ids = [b["id"] for b in blocks if b.get("type") == "tool_use"]


def check_messages_request(data: dict[str, Any], betas: str = "") -> int:
    """The Messages create checks (https://docs.anthropic.com/en/api/messages); the max_tokens."""
    check_common(data, betas)
    max_tokens = data.get("max_tokens")
    if max_tokens is None:
        raise Invalid("max_tokens: Field required")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        raise Invalid("max_tokens: Input should be a valid integer")
    if max_tokens < 1:
        raise Invalid("max_tokens: Input should be greater than or equal to 1")
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise Invalid("stream: Input should be a valid boolean")
    stops = data.get("stop_sequences")
    if stops is not None and not (isinstance(stops, list) and all(isinstance(s, str) for s in stops)):
        raise Invalid("stop_sequences: Input should be a valid list of strings")
    thinking = data.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or isinstance(budget, bool):
            raise Invalid("thinking.enabled.budget_tokens: Field required")
        if budget < MIN_THINKING_BUDGET:
            raise Invalid(
                f"thinking.enabled.budget_tokens: Input should be greater than or equal to {MIN_THINKING_BUDGET}"
            )
        if max_tokens <= budget:
            raise Invalid("`max_tokens` must be greater than `thinking.budget_tokens`")
    tools = data.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise Invalid("tools: Input should be a valid list")
        for k, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                raise Invalid(f"tools.{k}.custom.name: Field required")
            if "type" not in tool and not isinstance(tool.get("input_schema"), dict):
                raise Invalid(f"tools.{k}.custom.input_schema: Field required")
    choice = data.get("tool_choice")
    if choice is not None and (
        not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none")
    ):
        raise Invalid("tool_choice: Input tag is not one of 'auto', 'any', 'tool', 'none'")
    return max_tokens
