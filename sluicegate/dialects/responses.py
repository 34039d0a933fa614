"""The OpenAI Responses dialect (`POST /v1/responses`), carried over the neutral chat shape.

Request reference: https://platform.openai.com/docs/api-reference/responses/create
Response object:   https://platform.openai.com/docs/api-reference/responses/object
Streaming events:  https://platform.openai.com/docs/api-reference/responses-streaming

No provider speaks this dialect natively: every call is `to_chat` -> provider -> `render_response`
(or `ResponsesStreamEncoder`). `parse_responses` checks the body's shape; `to_chat` refuses, with
`neutral.unsupported`, what a stateless translation cannot carry (stored state, built-in tools,
uploaded files, stored prompts, background runs, logprobs).

Choices the gateway makes (it keeps no response state):
- `store` is accepted whatever its value and nothing is stored; the answer says `store: false`.
- `truncation: "auto"` is accepted and acts as `"disabled"` (the answer says so): a too long input
  gets the upstream's context-length error, nothing is cut silently.
- `reasoning` input items (a previous answer's reasoning, often encrypted and bound to the model
  that wrote it) are not sent upstream; `include: ["reasoning.encrypted_content"]` therefore yields
  no `encrypted_content`.
- `metadata` is echoed on the answer (the object it labels) and not sent upstream.
- `prompt_cache_key`, `prompt_cache_retention` are cache hints with no effect on the answer: accepted;
  `safety_identifier` stands for `user` when `user` is not given.
- Reasoning text from the upstream comes back as a `reasoning` item's `content` (`reasoning_text`),
  never as a `summary`: the gateway does not summarise.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

from sluicegate.dialects.base import StreamEncoder
from sluicegate.dialects.openai import strings
from sluicegate.errors import BadRequest, SluicegateError
from sluicegate.neutral import unsupported, usage_details

if TYPE_CHECKING:
    from sluicegate.call import Call

Path = tuple[str | int, ...]

TARGET = "the gateway's Responses translation"
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
#: neutral finish reason -> (Response status, incomplete_details.reason)
STATUS = {
    "length": ("incomplete", "max_output_tokens"),
    "content_filter": ("incomplete", "content_filter"),
}


# -- parsing --------------------------------------------------------------------------------------


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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(body: dict[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if not _is_number(value):
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
        if not _is_int(tokens):
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
        if value is not None and (not _is_int(value) or value < 0):
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


# -- request -> neutral chat ----------------------------------------------------------------------


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The neutral chat body of a (parsed) Responses body; refuses what cannot be carried."""
    _refuse_state(body)
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions:
        messages.append({"role": "system", "content": instructions})
    value = body["input"]
    if isinstance(value, str):
        messages.append({"role": "user", "content": value})
    else:
        for i, item in enumerate(value):
            _item(item, f"input[{i}]", messages)
    chat: dict[str, Any] = {"messages": messages}
    tools = body.get("tools")
    if tools:
        chat["tools"] = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
    choice = body.get("tool_choice")
    if choice is not None:
        chat["tool_choice"] = _neutral_tool_choice(choice)
    text = body.get("text")
    if text:
        verbosity = text.get("verbosity")
        if verbosity not in (None, "medium"):
            raise unsupported("text.verbosity other than 'medium'", TARGET, "text.verbosity")
        fmt = _response_format(text.get("format"))
        if fmt is not None:
            chat["response_format"] = fmt
    reasoning = body.get("reasoning")
    if reasoning and reasoning.get("effort") is not None:
        chat["reasoning_effort"] = reasoning["effort"]
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    for name in ("temperature", "top_p", "parallel_tool_calls", "user"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if "user" not in chat and body.get("safety_identifier") is not None:
        chat["user"] = body["safety_identifier"]
    if body.get("stream") is True:
        chat["stream"] = True
    return chat


def _refuse_state(body: dict[str, Any]) -> None:
    """What needs state or services the gateway does not have."""
    if body.get("previous_response_id") is not None:
        raise unsupported("previous_response_id (the gateway keeps no response state)", TARGET, "previous_response_id")
    if body.get("conversation") is not None:
        raise unsupported("conversation (the gateway keeps no conversation state)", TARGET, "conversation")
    if body.get("background") is True:
        raise unsupported("background: true", TARGET, "background")
    if body.get("prompt") is not None:
        raise unsupported("prompt (stored prompts)", TARGET, "prompt")
    if body.get("top_logprobs"):
        raise unsupported("top_logprobs", TARGET, "top_logprobs")
    if "message.output_text.logprobs" in (body.get("include") or ()):
        raise unsupported("include 'message.output_text.logprobs'", TARGET, "include")
    if body.get("service_tier") not in (None, "auto", "default"):
        raise unsupported(f"service_tier '{body['service_tier']}'", TARGET, "service_tier")


def _item(item: dict[str, Any], param: str, messages: list[dict[str, Any]]) -> None:
    kind = item.get("type", "message")
    if kind == "message":
        messages.append(_neutral_message(item, param))
    elif kind == "function_call":
        call = {
            "id": item["call_id"],
            "type": "function",
            "function": {"name": item["name"], "arguments": item["arguments"]},
        }
        last = messages[-1] if messages else None
        # Calls follow the assistant text of the same turn: one assistant message carries them all.
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item["output"]
        content = output if isinstance(output, str) else _user_parts(output, f"{param}.output", collapse=True)
        messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": content})
    elif kind == "reasoning":
        return  # a previous answer's reasoning, bound to the model that wrote it: not sent (see module doc)
    elif kind == "item_reference":
        raise unsupported("item_reference input items (stored items)", TARGET, param)
    else:
        raise unsupported(f"'{kind}' input items", TARGET, f"{param}.type")


def _neutral_message(item: dict[str, Any], param: str) -> dict[str, Any]:
    role = item["role"]
    content = item["content"]
    if isinstance(content, str):
        return {"role": role, "content": content}
    if role == "user":
        return {"role": role, "content": _user_parts(content, f"{param}.content", collapse=False)}
    # system, developer, assistant: text only
    texts: list[str] = []
    for j, part in enumerate(content):
        kind = part["type"]
        if kind in ("input_text", "output_text"):
            texts.append(part["text"])
        elif kind == "refusal":
            texts.append(part["refusal"])
        else:
            raise unsupported(f"'{kind}' content in a {role} message", TARGET, f"{param}.content[{j}]")
    if role == "assistant":
        return {"role": role, "content": "".join(texts) or None}
    return {"role": role, "content": "".join(texts)}


def _user_parts(parts: list[dict[str, Any]], param: str, *, collapse: bool) -> Any:
    out: list[dict[str, Any]] = []
    for j, part in enumerate(parts):
        kind = part["type"]
        where = f"{param}[{j}]"
        if kind in ("input_text", "output_text"):
            out.append({"type": "text", "text": part["text"]})
        elif kind == "refusal":
            out.append({"type": "text", "text": part["refusal"]})
        elif kind == "input_image":
            url = part.get("image_url")
            if url is None:
                raise unsupported("input_image with file_id (uploaded files)", TARGET, f"{where}.file_id")
            image: dict[str, Any] = {"url": url}
            if part.get("detail") in ("low", "high"):
                image["detail"] = part["detail"]
            out.append({"type": "image_url", "image_url": image})
        elif kind == "input_file":
            feature = "input_file with file_id (uploaded files)" if part.get("file_id") else "input_file content"
            raise unsupported(feature, TARGET, where)
        else:
            raise unsupported(f"'{kind}' content parts", TARGET, f"{where}.type")
    if collapse and all(p["type"] == "text" for p in out):
        return "".join(p["text"] for p in out)
    return out


def _tool(tool: dict[str, Any], param: str) -> dict[str, Any]:
    kind = tool["type"]
    if kind != "function":
        raise unsupported(f"The built-in '{kind}' tool", TARGET, f"{param}.type")
    function: dict[str, Any] = {"name": tool["name"]}
    for key in ("description", "parameters", "strict"):
        if tool.get(key) is not None:
            function[key] = tool[key]
    return {"type": "function", "function": function}


def _neutral_tool_choice(choice: Any) -> Any:
    if isinstance(choice, str):
        return choice
    if choice["type"] == "function":
        return {"type": "function", "function": {"name": choice["name"]}}
    raise unsupported(f"tool_choice of type '{choice['type']}'", TARGET, "tool_choice")


def _response_format(fmt: dict[str, Any] | None) -> dict[str, Any] | None:
    if fmt is None or fmt["type"] == "text":
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    schema: dict[str, Any] = {"name": fmt["name"], "schema": fmt["schema"]}
    for key in ("description", "strict"):
        if fmt.get(key) is not None:
            schema[key] = fmt[key]
    return {"type": "json_schema", "json_schema": schema}


# -- neutral answer -> Response -------------------------------------------------------------------


def _suffix(call: Call) -> str:
    rid = call.request_id
    return rid[4:] if rid.startswith("req_") else rid


def _echo(call: Call) -> dict[str, Any]:
    """The request settings a Response object repeats (those the SDK's model requires included)."""
    body = call.body or {}
    tools = [
        {"type": "function", "name": t["name"], "description": t.get("description"),
         "parameters": t.get("parameters"), "strict": t.get("strict")}
        for t in body.get("tools") or () if isinstance(t, dict) and t.get("type") == "function"
    ]  # fmt: skip
    text = body.get("text") or {}
    reasoning = body.get("reasoning") or {}
    return {
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "parallel_tool_calls": body.get("parallel_tool_calls", True) is not False,
        "previous_response_id": None,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": False,
        "temperature": body.get("temperature"),
        "text": {"format": text.get("format") or {"type": "text"}, "verbosity": text.get("verbosity") or "medium"},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": tools,
        "top_p": body.get("top_p"),
        "truncation": "disabled",
        "user": body.get("user"),
        "background": False,
    }


def _usage(value: Any) -> dict[str, Any] | None:
    """Neutral usage -> Responses usage (https://platform.openai.com/docs/api-reference/responses/object)."""
    if not isinstance(value, dict):
        return None
    cached, written, reasoning, prompt = usage_details(value)
    completion = value.get("completion_tokens")
    output = completion if isinstance(completion, int) and not isinstance(completion, bool) else 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + output,
    }


def _status(finish_reason: Any) -> tuple[str, dict[str, Any] | None]:
    status = STATUS.get(finish_reason) if isinstance(finish_reason, str) else None
    if status is None:
        return "completed", None
    return status[0], {"reason": status[1]}


def _response(
    call: Call,
    echo: dict[str, Any],
    *,
    model: str,
    created: float,
    status: str,
    output: list[dict[str, Any]],
    incomplete: dict[str, Any] | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": f"resp_{_suffix(call)}",
        "object": "response",
        "created_at": created,
        "status": status,
        "error": None,
        "incomplete_details": incomplete,
        "model": model,
        "output": output,
        **echo,
        "usage": usage,
    }
    if status == "completed":
        out["completed_at"] = int(time.time())
    return out


def _reasoning_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "type": "reasoning",
        "id": item_id,
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
        "status": status,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _function_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def render_response(completion: dict[str, Any], call: Call) -> dict[str, Any]:
    """A neutral completion as a Response object (`call.body` is the client's request)."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    status, incomplete = _status(choice.get("finish_reason"))
    suffix = _suffix(call)
    output: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        output.append(_reasoning_item(f"rs_{suffix}", reasoning, "completed"))
    content = message.get("content")
    parts: list[dict[str, Any]] = []
    if isinstance(content, list):
        content = "".join(p.get("text") or "" for p in content if isinstance(p, dict))
    if isinstance(content, str) and content:
        parts.append(_text_part(content))
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        parts.append({"type": "refusal", "refusal": refusal})
    if parts:
        output.append({"type": "message", "id": f"msg_{suffix}", "status": "completed", "role": "assistant",
                       "content": parts})  # fmt: skip
    for n, tool_call in enumerate(message.get("tool_calls") or ()):
        function = tool_call.get("function") or {}
        output.append(
            _function_item(
                f"fc_{suffix}_{n}",
                tool_call.get("id") or f"call_{suffix}_{n}",
                function.get("name") or "",
                function.get("arguments") or "",
                "completed",
            )
        )
    if status == "incomplete" and output:
        output[-1]["status"] = "incomplete"
    model = completion.get("model")
    created = completion.get("created")
    if not isinstance(created, int | float) or isinstance(created, bool):
        created = int(time.time())
    return _response(
        call,
        _echo(call),
        model=model if isinstance(model, str) and model else call.model_requested or "",
        created=created,
        status=status,
        output=output,
        incomplete=incomplete,
        usage=_usage(completion.get("usage")),
    )


# -- neutral chunks -> Responses stream events --------------------------------------------------------


class _Item:
    """One output item being streamed."""

    __slots__ = ("call_id", "id", "index", "kind", "name", "parts", "status")

    def __init__(self, kind: str, id_: str, index: int) -> None:
        self.kind = kind  # reasoning | message | function_call
        self.id = id_
        self.index = index
        #: None while open, then "completed" or "incomplete"
        self.status: str | None = None
        #: content parts as [kind, text] (message: output_text | refusal; reasoning: reasoning_text);
        #: a function call keeps its arguments as the one part
        self.parts: list[list[str]] = []
        self.call_id = ""
        self.name = ""


class ResponsesStreamEncoder(StreamEncoder):
    """Neutral chunks as Responses streaming events: `event: <type>` + `data: {...}` each.

    Events: https://platform.openai.com/docs/api-reference/responses-streaming. Output items are
    opened as their first delta arrives (reasoning, message text or refusal, one function call per
    neutral tool index) and closed when another kind of output starts or at the end; `finish` sends
    `response.completed` (or `response.incomplete`) with the whole Response and its usage.
    """

    def __init__(self, call: Call) -> None:
        super().__init__(call)
        self.seq = 0
        self.started = False
        self.suffix = _suffix(call)
        self.echo = _echo(call)
        self.model = call.model_requested or ""
        self.created = int(time.time())
        self.items: list[_Item] = []
        #: the open reasoning or message item
        self.current: _Item | None = None
        #: neutral tool-call index -> its function_call item
        self.tools: dict[int, _Item] = {}
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def _event(self, out: list[bytes], kind: str, data: dict[str, Any]) -> None:
        payload = orjson.dumps({"type": kind, "sequence_number": self.seq, **data})
        self.seq += 1
        out.append(b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n")

    def _snapshot(self, status: str, incomplete: dict[str, Any] | None = None) -> dict[str, Any]:
        done = status != "in_progress"
        return _response(
            self.call,
            self.echo,
            model=self.model,
            created=self.created,
            status=status,
            output=[self._item_json(item) for item in self.items] if done else [],
            incomplete=incomplete,
            usage=_usage(self.usage) if done else None,
        )

    def _start(self, out: list[bytes]) -> None:
        self.started = True
        self._event(out, "response.created", {"response": self._snapshot("in_progress")})
        self._event(out, "response.in_progress", {"response": self._snapshot("in_progress")})

    def encode(self, chunk: dict[str, Any]) -> bytes:
        out: list[bytes] = []
        if not self.started:
            model = chunk.get("model")
            if isinstance(model, str) and model:
                self.model = model
            self._start(out)
        if "usage" in chunk and isinstance(chunk["usage"], dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._delta(out, delta)
            if choice.get("finish_reason") is not None:
                self.finish_reason = choice["finish_reason"]
        return b"".join(out)

    def _delta(self, out: list[bytes], delta: dict[str, Any]) -> None:
        reasoning = delta.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            self._text(out, "reasoning", "reasoning_text", reasoning)
        content = delta.get("content")
        if isinstance(content, str) and content:
            self._text(out, "message", "output_text", content)
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            self._text(out, "message", "refusal", refusal)
        for tool_call in delta.get("tool_calls") or ():
            if isinstance(tool_call, dict):
                self._tool_delta(out, tool_call)

    def _open(self, out: list[bytes], kind: str, id_: str) -> _Item:
        item = _Item(kind, id_, len(self.items))
        self.items.append(item)
        self._event(out, "response.output_item.added", {"output_index": item.index, "item": self._item_json(item)})
        return item

    def _text(self, out: list[bytes], kind: str, part_kind: str, text: str) -> None:
        item = self.current
        if item is None or item.kind != kind:
            if item is not None:
                self._close(out, item)
            prefix = "rs" if kind == "reasoning" else "msg"
            n = sum(1 for i in self.items if i.kind == kind)
            item = self.current = self._open(out, kind, f"{prefix}_{self.suffix}" + (f"_{n}" if n else ""))
        if not item.parts or item.parts[-1][0] != part_kind:
            if item.parts:
                self._close_part(out, item)
            item.parts.append([part_kind, ""])
            self._event(
                out,
                "response.content_part.added",
                {"item_id": item.id, "output_index": item.index, "content_index": len(item.parts) - 1,
                 "part": self._part_json(part_kind, "")},
            )  # fmt: skip
        item.parts[-1][1] += text
        data: dict[str, Any] = {
            "item_id": item.id,
            "output_index": item.index,
            "content_index": len(item.parts) - 1,
            "delta": text,
        }
        if part_kind == "output_text":
            data["logprobs"] = []
        self._event(out, _DELTA_EVENTS[part_kind], data)

    def _tool_delta(self, out: list[bytes], tool_call: dict[str, Any]) -> None:
        index = tool_call.get("index", 0)
        function = tool_call.get("function") or {}
        item = self.tools.get(index)
        if item is None:
            if self.current is not None:
                self._close(out, self.current)
                self.current = None
            n = len(self.tools)
            item = _Item("function_call", f"fc_{self.suffix}_{n}", len(self.items))
            item.call_id = tool_call.get("id") or f"call_{self.suffix}_{n}"
            item.name = function.get("name") or ""
            item.parts.append(["arguments", ""])
            self.items.append(item)
            self.tools[index] = item
            self._event(out, "response.output_item.added", {"output_index": item.index, "item": self._item_json(item)})
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments and item.status is None:
            item.parts[0][1] += arguments
            self._event(
                out,
                "response.function_call_arguments.delta",
                {"item_id": item.id, "output_index": item.index, "delta": arguments},
            )

    def _close_part(self, out: list[bytes], item: _Item) -> None:
        kind, text = item.parts[-1]
        data: dict[str, Any] = {
            "item_id": item.id,
            "output_index": item.index,
            "content_index": len(item.parts) - 1,
            _DONE_FIELDS[kind]: text,
        }
        if kind == "output_text":
            data["logprobs"] = []
        self._event(out, _DONE_EVENTS[kind], data)
        self._event(
            out,
            "response.content_part.done",
            {"item_id": item.id, "output_index": item.index, "content_index": len(item.parts) - 1,
             "part": self._part_json(kind, text)},
        )  # fmt: skip

    def _close(self, out: list[bytes], item: _Item, status: str = "completed") -> None:
        if item.status is not None:
            return
        if item.kind == "function_call":
            self._event(
                out,
                "response.function_call_arguments.done",
                {"item_id": item.id, "output_index": item.index, "name": item.name, "arguments": item.parts[0][1]},
            )
        elif item.parts:
            self._close_part(out, item)
        item.status = status
        self._event(out, "response.output_item.done", {"output_index": item.index, "item": self._item_json(item)})

    def _part_json(self, kind: str, text: str) -> dict[str, Any]:
        if kind == "output_text":
            return _text_part(text)
        if kind == "refusal":
            return {"type": "refusal", "refusal": text}
        return {"type": "reasoning_text", "text": text}

    def _item_json(self, item: _Item) -> dict[str, Any]:
        status = item.status or "in_progress"
        if item.kind == "function_call":
            arguments = item.parts[0][1] if item.status else ""
            return _function_item(item.id, item.call_id, item.name, arguments, status)
        parts = [self._part_json(kind, text) for kind, text in item.parts] if item.status else []
        if item.kind == "reasoning":
            return {"type": "reasoning", "id": item.id, "summary": [], "content": parts, "status": status}
        return {"type": "message", "id": item.id, "status": status, "role": "assistant", "content": parts}

    def finish(self) -> bytes:
        out: list[bytes] = []
        if not self.started:
            self._start(out)
        status, incomplete = _status(self.finish_reason)
        last = self.items[-1] if self.items else None
        for item in self.items:
            self._close(out, item, "incomplete" if status == "incomplete" and item is last else "completed")
        self.current = None
        kind = "response.completed" if status == "completed" else "response.incomplete"
        self._event(out, kind, {"response": self._snapshot(status, incomplete)})
        return b"".join(out)

    def error(self, error: SluicegateError) -> bytes:
        out: list[bytes] = []
        self._event(out, "error", {"code": error.code, "message": error.message, "param": error.param})
        return b"".join(out)


_DELTA_EVENTS = {
    "output_text": "response.output_text.delta",
    "refusal": "response.refusal.delta",
    "reasoning_text": "response.reasoning_text.delta",
}
_DONE_EVENTS = {
    "output_text": "response.output_text.done",
    "refusal": "response.refusal.done",
    "reasoning_text": "response.reasoning_text.done",
}
_DONE_FIELDS = {"output_text": "text", "refusal": "refusal", "reasoning_text": "text"}


# -- texts for guards -----------------------------------------------------------------------------

#: keys whose string values are identifiers, enums or media, not text a model reads or writes
NON_TEXT_KEYS = frozenset(
    {"type", "role", "id", "call_id", "status", "detail", "image_url", "file_id", "file_data", "file_url",
     "filename", "encrypted_content", "annotations", "logprobs", "phase", "format", "strict", "model", "object"}
)  # fmt: skip


def _strings(value: Any, path: Path, out: list[tuple[Path, str]]) -> None:
    strings(value, path, out, NON_TEXT_KEYS)


def request_texts(endpoint: str, body: dict[str, Any]) -> list[tuple[Path, str]]:
    """Every text of a Responses request the model will read: instructions, input messages and
    parts, function calls (names, arguments) and their outputs, tool definitions. Reasoning items
    are not sent upstream (see the module doc), so they are not read."""
    out: list[tuple[Path, str]] = []
    if endpoint != "responses":
        return out
    _strings(body.get("instructions"), ("instructions",), out)
    value = body.get("input")
    if isinstance(value, str):
        _strings(value, ("input",), out)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, dict) and item.get("type") != "reasoning":
                _strings(item, ("input", i), out)
    _strings(body.get("tools"), ("tools",), out)
    return out


def response_texts(endpoint: str, data: dict[str, Any]) -> list[tuple[Path, str]]:
    """Every text of a Response the model wrote: message text and refusals, reasoning, tool calls."""
    out: list[tuple[Path, str]] = []
    if endpoint == "responses":
        _strings(data.get("output"), ("output",), out)
    return out
