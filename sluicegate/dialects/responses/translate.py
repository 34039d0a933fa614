"""A (parsed) Responses body as a neutral chat body; refuses what a stateless translation cannot carry.

Part of the Responses dialect (`sluicegate.dialects.responses`, whose doc lists the choices the
gateway makes); what cannot be carried raises `neutral.unsupported`.
"""

from __future__ import annotations

from typing import Any

from sluicegate.neutral import unsupported

TARGET = "the gateway's Responses translation"


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
        return  # a previous answer's reasoning, bound to the model that wrote it: not sent (see package doc)
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
