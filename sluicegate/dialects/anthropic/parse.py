"""Checks of Anthropic Messages and count_tokens bodies, the way Anthropic checks them.

Part of the Anthropic dialect (`sluicegate.dialects.anthropic`): `parse_messages` and
`parse_count_tokens` raise a 400 naming the field, or fill the call (model, stream) from the body.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeGuard

from sluicegate.dialects import openai as _openai
from sluicegate.errors import BadRequest

if TYPE_CHECKING:
    from sluicegate.call import Call

MAX_MESSAGES = 100_000  # "There is a limit of 100,000 messages in a single request."

#: `system` mid-conversation: Anthropic's `mid-conversation-system` beta, which Claude Code uses
ROLES = ("user", "assistant", "system")
TOOL_CHOICES = ("auto", "any", "tool", "none")
THINKING_TYPES = ("enabled", "disabled", "adaptive")

parse_body = _openai.parse_body


def _bad(path: str, message: str) -> BadRequest:
    return BadRequest(f"{path}: {message}", param=path)


def _missing(path: str) -> BadRequest:
    return _bad(path, "Field required")


def is_int(value: Any) -> TypeGuard[int]:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> TypeGuard[int | float]:
    """An int or float that is not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise _missing("model")
    if not isinstance(model, str):
        raise _bad("model", "Input should be a valid string")
    if not model.strip():
        raise _bad("model", "String should have at least 1 character")
    if len(model) > 256:
        raise _bad("model", "String should have at most 256 characters")
    return model


def _blocks(path: str, blocks: Any) -> None:
    if not isinstance(blocks, list):
        raise _bad(path, "Input should be a valid string or a valid list")
    for j, block in enumerate(blocks):
        where = f"{path}.{j}"
        if not isinstance(block, dict):
            raise _bad(where, "Input should be a valid dictionary")
        kind = block.get("type")
        if kind is None:
            raise _missing(f"{where}.type")
        if not isinstance(kind, str):
            raise _bad(f"{where}.type", "Input should be a valid string")
        if kind == "text" and not isinstance(block.get("text"), str):
            raise _bad(f"{where}.text", "Input should be a valid string")
        elif kind in ("image", "document") and not isinstance(block.get("source"), dict):
            raise _bad(f"{where}.source", "Input should be a valid dictionary")
        elif kind == "tool_use":
            for key in ("id", "name"):
                if not isinstance(block.get(key), str):
                    raise _bad(f"{where}.{key}", "Input should be a valid string")
            if not isinstance(block.get("input"), dict):
                raise _bad(f"{where}.input", "Input should be a valid dictionary")
        elif kind == "tool_result":
            if not isinstance(block.get("tool_use_id"), str):
                raise _bad(f"{where}.tool_use_id", "Input should be a valid string")
            content = block.get("content")
            if content is not None and not isinstance(content, str):
                _blocks(f"{where}.content", content)
        elif kind == "thinking":
            for key in ("thinking", "signature"):
                if not isinstance(block.get(key), str):
                    raise _bad(f"{where}.{key}", "Input should be a valid string")


def _messages(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if messages is None:
        raise _missing("messages")
    if not isinstance(messages, list):
        raise _bad("messages", "Input should be a valid list")
    if not messages:
        raise _bad("messages", "at least one message is required")
    if len(messages) > MAX_MESSAGES:
        raise _bad("messages", f"a request can hold at most {MAX_MESSAGES} messages")
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise _bad(where, "Input should be a valid dictionary")
        role = message.get("role")
        if role is None:
            raise _missing(f"{where}.role")
        if role not in ROLES:
            raise _bad(f"{where}.role", "Input should be 'user', 'assistant' or 'system'")
        content = message.get("content")
        if content is None:
            raise _missing(f"{where}.content")
        if role == "system":
            _system_blocks(f"{where}.content", content)
        elif not isinstance(content, str):
            _blocks(f"{where}.content", content)


def _system(body: dict[str, Any]) -> None:
    system = body.get("system")
    if system is not None:
        _system_blocks("system", system)


def _system_blocks(where: str, system: Any) -> None:
    """A system prompt: a string, or a list of text blocks."""
    if isinstance(system, str):
        return
    if not isinstance(system, list):
        raise _bad(where, "Input should be a valid string or a valid list")
    for j, block in enumerate(system):
        if not isinstance(block, dict):
            raise _bad(f"{where}.{j}", "Input should be a valid dictionary")
        if block.get("type") != "text":
            raise _bad(f"{where}.{j}.type", "Input should be 'text'")
        if not isinstance(block.get("text"), str):
            raise _bad(f"{where}.{j}.text", "Input should be a valid string")


def _tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad("tools", "Input should be a valid list")
        for j, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise _bad(f"tools.{j}", "Input should be a valid dictionary")
            kind = tool.get("type")
            if kind is not None and not isinstance(kind, str):
                raise _bad(f"tools.{j}.type", "Input should be a valid string")
            if kind not in (None, "custom"):
                continue  # Anthropic's own tools: the upstream checks them, a translation refuses them
            if not isinstance(tool.get("name"), str):
                raise _bad(f"tools.{j}.name", "Input should be a valid string")
            if not isinstance(tool.get("input_schema"), dict):
                raise _bad(f"tools.{j}.input_schema", "Input should be a valid dictionary")
    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict):
            raise _bad("tool_choice", "Input should be a valid dictionary")
        if choice.get("type") not in TOOL_CHOICES:
            raise _bad("tool_choice.type", "Input should be 'auto', 'any', 'tool' or 'none'")
        if choice["type"] == "tool" and not isinstance(choice.get("name"), str):
            raise _missing("tool_choice.name")
        parallel = choice.get("disable_parallel_tool_use")
        if parallel is not None and not isinstance(parallel, bool):
            raise _bad("tool_choice.disable_parallel_tool_use", "Input should be a valid boolean")


def _thinking(body: dict[str, Any]) -> None:
    thinking = body.get("thinking")
    if thinking is None:
        return
    if not isinstance(thinking, dict):
        raise _bad("thinking", "Input should be a valid dictionary")
    kind = thinking.get("type")
    if kind not in THINKING_TYPES:
        raise _bad("thinking.type", "Input should be 'enabled', 'disabled' or 'adaptive'")
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if budget is None:
            raise _missing("thinking.enabled.budget_tokens")
        if not is_int(budget):
            raise _bad("thinking.enabled.budget_tokens", "Input should be a valid integer")
        if budget < 1024:
            raise _bad("thinking.enabled.budget_tokens", "Input should be greater than or equal to 1024")


def _conversation(body: dict[str, Any]) -> None:
    """What Messages and count_tokens bodies share: messages, system prompt, tools, thinking."""
    _messages(body)
    _system(body)
    _tools(body)
    _thinking(body)


def parse_messages(call: Call, body: dict[str, Any]) -> None:
    """Check a Messages body and fill the call from it."""
    call.model_requested = _model(body)
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise _missing("max_tokens")
    if not is_int(max_tokens):
        raise _bad("max_tokens", "Input should be a valid integer")
    if max_tokens < 1:
        raise _bad("max_tokens", "Input should be greater than or equal to 1")
    _conversation(body)
    for name, high in (("temperature", 1.0), ("top_p", 1.0)):
        value = body.get(name)
        if value is None:
            continue
        if not is_number(value):
            raise _bad(name, "Input should be a valid number")
        if not 0.0 <= value <= high:
            raise _bad(name, f"Input should be between 0 and {high:g}")
    top_k = body.get("top_k")
    if top_k is not None:
        if not is_int(top_k):
            raise _bad("top_k", "Input should be a valid integer")
        if top_k < 0:
            raise _bad("top_k", "Input should be greater than or equal to 0")
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list):
            raise _bad("stop_sequences", "Input should be a valid list")
        for j, stop in enumerate(stops):
            if not isinstance(stop, str):
                raise _bad(f"stop_sequences.{j}", "Input should be a valid string")
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _bad("metadata", "Input should be a valid dictionary")
        user_id = metadata.get("user_id")
        if user_id is not None and not isinstance(user_id, str):
            raise _bad("metadata.user_id", "Input should be a valid string")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream", "Input should be a valid boolean")
    call.stream = stream is True


def parse_count_tokens(call: Call, body: dict[str, Any]) -> None:
    """Check a `POST /v1/messages/count_tokens` body (no `max_tokens`, never streamed)."""
    call.model_requested = _model(body)
    _conversation(body)
    call.stream = False
