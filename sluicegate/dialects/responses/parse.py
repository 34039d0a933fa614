"""Checks of a `POST /v1/responses` body's shape, with OpenAI's error wording and codes.

Part of the Responses dialect (`sluicegate.dialects.responses`): `parse_responses` raises a 400
naming the parameter, or fills the call (model, stream); what cannot be carried is `translate`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeGuard

from sluicegate.errors import BadRequest

if TYPE_CHECKING:
    from sluicegate.call import Call

MAX_ITEMS = 10_000

#: body parameters of `POST /v1/responses` the gateway knows (others are refused, never dropped)
KNOWN_PARAMS = frozenset(
    {"model", "input", "instructions", "stream", "stream_options", "max_output_tokens", "tools", "tool_choice",
     "text", "reasoning", "temperature", "top_p", "parallel_tool_calls", "metadata", "user", "store", "include",
     "truncation", "previous_response_id", "conversation", "background", "prompt", "max_tool_calls",
     "top_logprobs", "service_tier", "prompt_cache_key", "prompt_cache_retention", "safety_identifier"}
)  # fmt: skip
MESSAGE_ROLES = frozenset({"user", "system", "developer", "assistant"})
TOOL_CHOICES = frozenset({"auto", "none", "required"})
REASONING_EFFORTS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh", "max"})
SUMMARIES = frozenset({"auto", "concise", "detailed"})
VERBOSITIES = frozenset({"low", "medium", "high"})
TEXT_FORMATS = frozenset({"text", "json_object", "json_schema"})
#: `include` values that only add data to built-in tool calls (refused anyway) or to reasoning items
HARMLESS_INCLUDES = frozenset(
    {"reasoning.encrypted_content", "web_search_call.action.sources", "web_search_call.results",
     "file_search_call.results", "code_interpreter_call.outputs", "computer_call_output.output.image_url",
     "message.input_image.image_url"}
)  # fmt: skip
#: https://platform.openai.com/docs/api-reference/responses/create#responses-create-include
INCLUDES = HARMLESS_INCLUDES | {"message.output_text.logprobs"}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(type(value), "a number")


def _invalid(param: str, message: str) -> BadRequest:
    return BadRequest(message, param=param, code="invalid_value")


def _type_error(param: str, expected: str, value: Any) -> BadRequest:
    return BadRequest(
        f"Invalid type for '{param}': expected {expected}, but got {_kind(value)} instead.",
        param=param,
        code="invalid_type",
    )


def is_int(value: Any) -> TypeGuard[int]:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> TypeGuard[int | float]:
    """An int or float that is not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(body: dict[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if not is_number(value):
        raise _type_error(name, "a decimal", value)
    if not low <= value <= high:
        raise _invalid(name, f"Invalid '{name}': must be between {low:g} and {high:g}, got {value}.")


def _optional(body: dict[str, Any], name: str, kind: type, expected: str) -> Any:
    value = body.get(name)
    if value is not None and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
        raise _type_error(name, expected, value)
    return value


def _enum(value: Any, param: str, allowed: frozenset[str]) -> None:
    if value is not None and value not in allowed:
        raise _invalid(
            param, f"Invalid value for '{param}': {value!r}; supported values are {', '.join(sorted(allowed))}."
        )


def parse_responses(call: Call, body: dict[str, Any]) -> None:
    """Check a Responses body's shape and fill the call from it (what cannot be carried: `to_chat`)."""
    model = body.get("model")
    if model is None:
        raise BadRequest("Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model.strip():
        raise _type_error("model", "a non-empty string", model)
    if len(model) > 256:
        raise _invalid("model", "Invalid 'model': longer than 256 characters.")
    call.model_requested = model
    for key in body:
        if key not in KNOWN_PARAMS:
            raise BadRequest(f"Unknown parameter: '{key}'.", param=key, code="unknown_parameter")
    _input(body.get("input"))
    _optional(body, "instructions", str, "a string")
    stream = _optional(body, "stream", bool, "a boolean")
    call.stream = stream is True
    _optional(body, "stream_options", dict, "an object")
    tokens = body.get("max_output_tokens")
    if tokens is not None:
        if not is_int(tokens):
            raise _type_error("max_output_tokens", "an integer", tokens)
        if tokens < 1:
            raise _invalid("max_output_tokens", f"Invalid 'max_output_tokens': must be at least 1, got {tokens}.")
    _tools(body.get("tools"))
    _tool_choice(body.get("tool_choice"))
    _text(body.get("text"))
    reasoning = _optional(body, "reasoning", dict, "an object")
    if reasoning is not None:
        _enum(reasoning.get("effort"), "reasoning.effort", REASONING_EFFORTS)
        _enum(reasoning.get("summary"), "reasoning.summary", SUMMARIES)
        _enum(reasoning.get("generate_summary"), "reasoning.generate_summary", SUMMARIES)
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _optional(body, "parallel_tool_calls", bool, "a boolean")
    _metadata(body.get("metadata"))
    for name in ("user", "previous_response_id", "prompt_cache_key", "safety_identifier", "service_tier"):
        _optional(body, name, str, "a string")
    for name in ("store", "background"):
        _optional(body, name, bool, "a boolean")
    include = _optional(body, "include", list, "an array")
    for i, value in enumerate(include or ()):
        _enum(value, f"include[{i}]", INCLUDES)
    _enum(body.get("truncation"), "truncation", frozenset({"auto", "disabled"}))
    conversation = body.get("conversation")
    if conversation is not None and not isinstance(conversation, str | dict):
        raise _type_error("conversation", "a string or an object", conversation)
    _optional(body, "prompt", dict, "an object")
    for name in ("max_tool_calls", "top_logprobs"):
        value = body.get(name)
        if value is not None and (not is_int(value) or value < 0):
            raise _type_error(name, "a non-negative integer", value)


def _input(value: Any) -> None:
    if value is None:
        raise BadRequest("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise _type_error("input", "a string or an array of input items", value)
    if not value:
        raise _invalid("input", "Invalid 'input': empty array; expected at least one input item.")
    if len(value) > MAX_ITEMS:
        raise _invalid("input", f"Invalid 'input': more than {MAX_ITEMS} items.")
    for i, item in enumerate(value):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            raise _type_error(param, "an object", item)
        kind = item.get("type", "message" if "role" in item else None)
        if not isinstance(kind, str):
            raise BadRequest(f"Missing required parameter: '{param}.type'.", param=f"{param}.type")
        if kind == "message":
            _message(item, param)
        elif kind == "function_call":
            for key in ("call_id", "name", "arguments"):
                if not isinstance(item.get(key), str):
                    raise _type_error(f"{param}.{key}", "a string", item.get(key))
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise _type_error(f"{param}.call_id", "a string", item.get("call_id"))
            output = item.get("output")
            if isinstance(output, list):
                _parts(output, f"{param}.output")
            elif not isinstance(output, str):
                raise _type_error(f"{param}.output", "a string or an array", output)


def _message(item: dict[str, Any], param: str) -> None:
    role = item.get("role")
    if role not in MESSAGE_ROLES:
        raise _invalid(
            f"{param}.role",
            f"Invalid value for '{param}.role': {role!r}; supported values are assistant, developer, system, user.",
        )
    content = item.get("content")
    if isinstance(content, list):
        _parts(content, f"{param}.content")
    elif not isinstance(content, str):
        raise _type_error(f"{param}.content", "a string or an array of content parts", content)


def _parts(parts: list[Any], param: str) -> None:
    for j, part in enumerate(parts):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _type_error(f"{param}[{j}]", "a content part object with a 'type'", part)
        kind = part["type"]
        if kind in ("input_text", "output_text") and not isinstance(part.get("text"), str):
            raise _type_error(f"{param}[{j}].text", "a string", part.get("text"))
        if kind == "refusal" and not isinstance(part.get("refusal"), str):
            raise _type_error(f"{param}[{j}].refusal", "a string", part.get("refusal"))
        if kind == "input_image":
            url = part.get("image_url")
            if url is not None and not isinstance(url, str):
                raise _type_error(f"{param}[{j}].image_url", "a string", url)
            if url is None and part.get("file_id") is None:
                raise BadRequest(
                    f"Missing required parameter: '{param}[{j}].image_url' (or 'file_id').",
                    param=f"{param}[{j}].image_url",
                    code="missing_required_parameter",
                )


def _tools(tools: Any) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise _type_error("tools", "an array", tools)
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise _type_error(f"tools[{i}]", "a tool object with a 'type'", tool)
        if tool["type"] != "function":
            continue
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise BadRequest(
                f"Missing required parameter: 'tools[{i}].name'.",
                param=f"tools[{i}].name",
                code="missing_required_parameter",
            )
        for key, kind, expected in (("description", str, "a string"), ("parameters", dict, "an object")):
            value = tool.get(key)
            if value is not None and not isinstance(value, kind):
                raise _type_error(f"tools[{i}].{key}", expected, value)
        strict = tool.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise _type_error(f"tools[{i}].strict", "a boolean", strict)


def _tool_choice(choice: Any) -> None:
    if choice is None:
        return
    if isinstance(choice, str):
        _enum(choice, "tool_choice", TOOL_CHOICES)
    elif not isinstance(choice, dict) or not isinstance(choice.get("type"), str):
        raise _type_error("tool_choice", "a string or an object with a 'type'", choice)
    elif choice["type"] == "function" and not isinstance(choice.get("name"), str):
        raise _type_error("tool_choice.name", "a string", choice.get("name"))


def _text(text: Any) -> None:
    if text is None:
        return
    if not isinstance(text, dict):
        raise _type_error("text", "an object", text)
    _enum(text.get("verbosity"), "text.verbosity", VERBOSITIES)
    fmt = text.get("format")
    if fmt is None:
        return
    if not isinstance(fmt, dict):
        raise _type_error("text.format", "an object", fmt)
    _enum(fmt.get("type"), "text.format.type", TEXT_FORMATS)
    if fmt.get("type") is None:
        raise BadRequest(
            "Missing required parameter: 'text.format.type'.",
            param="text.format.type",
            code="missing_required_parameter",
        )
    if fmt["type"] == "json_schema":
        if not isinstance(fmt.get("name"), str) or not fmt["name"]:
            raise BadRequest(
                "Missing required parameter: 'text.format.name'.",
                param="text.format.name",
                code="missing_required_parameter",
            )
        if not isinstance(fmt.get("schema"), dict):
            raise _type_error("text.format.schema", "an object", fmt.get("schema"))


def _metadata(metadata: Any) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise _type_error("metadata", "an object", metadata)
    if len(metadata) > 16:
        raise _invalid("metadata", "Invalid 'metadata': at most 16 key-value pairs.")
    for key, value in metadata.items():
        if len(key) > 64:
            raise _invalid("metadata", "Invalid 'metadata': keys are at most 64 characters.")
        if not isinstance(value, str) or len(value) > 512:
            raise _invalid("metadata", f"Invalid 'metadata.{key}': expected a string of at most 512 characters.")
