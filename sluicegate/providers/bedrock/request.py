"""Neutral chat -> Converse request body: messages, system blocks, media, tool calls and results,
toolConfig, inferenceConfig (https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html);
a neutral feature Converse cannot carry is refused with `neutral.unsupported`, naming the parameter.
"""

from __future__ import annotations

from typing import Any

import orjson

from sluicegate import neutral
from sluicegate.errors import BadRequest

TARGET = "AWS Bedrock (Converse)"

#: ImageBlock formats (https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ImageBlock.html)
IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}
#: DocumentBlock formats (https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_DocumentBlock.html)
DOCUMENT_FORMATS = {
    "application/pdf": "pdf",
    "text/csv": "csv",
    "application/msword": "doc",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.ms-excel": "xls",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "text/html": "html",
    "text/plain": "txt",
    "text/markdown": "md",
}

#: neutral chat keys that map to nothing in Converse, with the values that ask for nothing
_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "n": (None, 1),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "seed": (None,),
    "logit_bias": (None, {}),
    "reasoning_effort": (None,),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "web_search_options": (None,),
    "functions": (None, []),
    "function_call": (None,),
    "service_tier": (None, "auto", "default"),
}

#: characters a DocumentBlock name may hold (others become '-')
_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-()[] ")


def converse_request(chat: dict[str, Any]) -> dict[str, Any]:
    """The Converse request body of a neutral chat body."""
    for key, allowed in _UNSUPPORTED.items():
        value = chat.get(key)
        if value not in allowed:
            raise neutral.unsupported(f"'{key}'", TARGET, key)
    fmt = chat.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise neutral.unsupported("'response_format' (JSON mode / structured output)", TARGET, "response_format")
    messages = chat.get("messages")
    if not isinstance(messages, list):
        raise BadRequest("'messages' must be an array", param="messages")
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    has_tool_blocks = False
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{i}] must be an object", param=f"messages[{i}]")
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_blocks(message.get("content"), i, system=True))
            _cache_point(message, system)
            continue
        if role == "user":
            blocks = _blocks(message.get("content"), i)
            _cache_point(message, blocks)
            out_role = "user"
        elif role == "assistant":
            blocks = _assistant_blocks(message, i)
            has_tool_blocks = has_tool_blocks or any("toolUse" in b for b in blocks)
            out_role = "assistant"
        elif role == "tool":
            blocks = [_tool_result(message, i)]
            _cache_point(message, blocks)
            has_tool_blocks = True
            out_role = "user"
        else:
            raise neutral.unsupported(f"A message with role '{role}'", TARGET, f"messages[{i}].role")
        if turns and turns[-1]["role"] == out_role:
            # Converse wants user and assistant turns to alternate: same-role neighbours merge.
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": out_role, "content": blocks})
    body: dict[str, Any] = {"messages": turns}
    if system:
        body["system"] = system
    inference: dict[str, Any] = {}
    max_tokens = chat.get("max_completion_tokens", chat.get("max_tokens"))
    if max_tokens is not None:
        inference["maxTokens"] = max_tokens
    if chat.get("temperature") is not None:
        inference["temperature"] = chat["temperature"]
    if chat.get("top_p") is not None:
        inference["topP"] = chat["top_p"]
    stop = chat.get("stop")
    if stop:
        inference["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    if inference:
        body["inferenceConfig"] = inference
    tool_config = _tool_config(chat, has_tool_blocks)
    if tool_config is not None:
        body["toolConfig"] = tool_config
    # Model-specific fields: these are the names Anthropic Claude models take on Bedrock.
    extra: dict[str, Any] = {}
    if chat.get("top_k") is not None:
        extra["top_k"] = chat["top_k"]
    if chat.get("thinking_budget") is not None:
        extra["thinking"] = {"type": "enabled", "budget_tokens": chat["thinking_budget"]}
    if extra:
        body["additionalModelRequestFields"] = extra
    metadata: dict[str, str] = {}
    if isinstance(chat.get("metadata"), dict):
        metadata.update({str(k): str(v) for k, v in chat["metadata"].items()})
    if isinstance(chat.get("user"), str) and chat["user"]:
        metadata["user"] = chat["user"]
    if metadata:
        body["requestMetadata"] = metadata
    return body


def _cache_point(item: dict[str, Any], blocks: list[dict[str, Any]]) -> None:
    """A message's or content part's `cache_control` marks the end of a cached prefix: Converse's
    cachePoint block, appended after non-empty `blocks`."""
    if item.get("cache_control") and blocks:
        blocks.append({"cachePoint": {"type": "default"}})


def _not_content(i: int) -> BadRequest:
    """The 400 for a message content that is neither a string nor an array."""
    return BadRequest(f"messages[{i}].content must be a string or an array", param=f"messages[{i}].content")


def _blocks(content: Any, i: int, *, system: bool = False) -> list[dict[str, Any]]:
    """Converse content blocks of a user or system message content."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}]
    if not isinstance(content, list):
        raise _not_content(i)
    out: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        where = f"messages[{i}].content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            out.append({"text": part["text"]})
        elif kind in ("image_url", "file") and not system:
            out.append(_media_block(part, where))
        else:
            what = f"A '{kind}' content part" if kind else "A content part without a type"
            raise neutral.unsupported(f"{what}{' in a system message' if system else ''}", TARGET, where)
        _cache_point(part, out)
    return out


def _media_block(part: dict[str, Any], where: str) -> dict[str, Any]:
    """An image or document block from an `image_url` or `file` part holding a data: URL."""
    if part["type"] == "image_url":
        ref = part.get("image_url")
        url = ref.get("url") if isinstance(ref, dict) else ref
        name = None
    else:
        ref = part.get("file")
        url = ref.get("file_data") if isinstance(ref, dict) else None
        name = ref.get("filename") if isinstance(ref, dict) else None
        if url is None:
            raise neutral.unsupported("A file part without file_data (file ids)", TARGET, where)
    parsed = neutral.parse_data_url(url) if isinstance(url, str) else None
    if parsed is None:
        raise neutral.unsupported("An image or file by URL (only base64 data: URLs)", TARGET, where)
    media_type, data = parsed
    media_type = media_type.lower()
    if media_type in IMAGE_FORMATS:
        return {"image": {"format": IMAGE_FORMATS[media_type], "source": {"bytes": data}}}
    if media_type in DOCUMENT_FORMATS:
        return {
            "document": {"format": DOCUMENT_FORMATS[media_type], "name": _doc_name(name), "source": {"bytes": data}}
        }
    raise neutral.unsupported(f"A '{media_type}' attachment", TARGET, where)


def _doc_name(name: Any) -> str:
    """A DocumentBlock name: letters, digits, single spaces, hyphens, parentheses, brackets."""
    if not isinstance(name, str) or not name.strip():
        return "document"
    stem = name.rsplit(".", 1)[0] if "." in name else name
    cleaned = "".join(c if c in _NAME_OK else "-" for c in stem)
    return " ".join(cleaned.split())[:200] or "document"


def _assistant_blocks(message: dict[str, Any], i: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        text: dict[str, Any] = {"text": reasoning}
        signature = message.get("reasoning_signature")
        if isinstance(signature, str) and signature:
            text["signature"] = signature
        out.append({"reasoningContent": {"reasoningText": text}})
    content = message.get("content")
    if isinstance(content, str):
        if content:
            out.append({"text": content})
    elif isinstance(content, list):
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("text", "output_text") and isinstance(part.get("text"), str):
                if part["text"]:
                    out.append({"text": part["text"]})
            elif kind == "refusal" and isinstance(part.get("refusal"), str):
                out.append({"text": part["refusal"]})
            else:
                raise neutral.unsupported(
                    f"A '{kind}' content part in an assistant message", TARGET, f"messages[{i}].content[{j}]"
                )
            if part.get("cache_control"):
                out.append({"cachePoint": {"type": "default"}})
    elif content is not None:
        raise _not_content(i)
    for j, call in enumerate(message.get("tool_calls") or ()):
        where = f"messages[{i}].tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or call.get("type", "function") != "function":
            raise neutral.unsupported("A tool call that is not a function call", TARGET, where)
        arguments = fn.get("arguments")
        try:
            parsed = orjson.loads(arguments) if isinstance(arguments, str) and arguments.strip() else {}
        except orjson.JSONDecodeError:
            raise BadRequest(
                f"{where}.function.arguments is not JSON (Bedrock needs the tool input as a JSON object)",
                param=f"{where}.function.arguments",
            ) from None
        out.append({"toolUse": {"toolUseId": call.get("id") or "", "name": fn.get("name") or "", "input": parsed}})
    _cache_point(message, out)
    return out


def _tool_result(message: dict[str, Any], i: int) -> dict[str, Any]:
    content = message.get("content")
    blocks: list[dict[str, Any]] = []
    if isinstance(content, str):
        blocks.append({"text": content})
    elif isinstance(content, list):
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                blocks.append({"text": part["text"]})
            elif kind in ("image_url", "file"):
                blocks.append(_media_block(part, where))
            else:
                raise neutral.unsupported(f"A '{kind}' content part in a tool result", TARGET, where)
    elif isinstance(content, dict):
        blocks.append({"json": content})
    elif content is not None:
        raise _not_content(i)
    result: dict[str, Any] = {"toolUseId": message.get("tool_call_id") or "", "content": blocks}
    if message.get("is_error") is True:
        result["status"] = "error"
    return {"toolResult": result}


def _tool_config(chat: dict[str, Any], has_tool_blocks: bool) -> dict[str, Any] | None:
    tools = chat.get("tools") or []
    choice = chat.get("tool_choice")
    if chat.get("parallel_tool_calls") is False and tools:
        raise neutral.unsupported("'parallel_tool_calls': false", TARGET, "parallel_tool_calls")
    specs: list[dict[str, Any]] = []
    for k, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type") != "function":
            raise neutral.unsupported("A tool that is not a function", TARGET, f"tools[{k}]")
        spec: dict[str, Any] = {
            "name": fn.get("name"),
            "inputSchema": {"json": fn.get("parameters") or {"type": "object", "properties": {}}},
        }
        if fn.get("description"):
            spec["description"] = fn["description"]
        specs.append({"toolSpec": spec})
    if choice == "none":
        # Converse has no "none": the tools are left out, so the model cannot call one. That is
        # not possible once the conversation holds tool calls (Converse then needs toolConfig).
        if has_tool_blocks:
            raise neutral.unsupported("'tool_choice': 'none' in a conversation with tool calls", TARGET, "tool_choice")
        return None
    if not specs:
        if has_tool_blocks:
            raise neutral.unsupported("A conversation with tool calls but no 'tools'", TARGET, "tools")
        if choice not in (None, "auto"):
            raise BadRequest("'tool_choice' needs 'tools'", param="tool_choice")
        return None
    config: dict[str, Any] = {"tools": specs}
    if choice == "auto":
        config["toolChoice"] = {"auto": {}}
    elif choice == "required":
        config["toolChoice"] = {"any": {}}
    elif isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if choice.get("type") != "function" or not isinstance(name, str):
            raise neutral.unsupported("This 'tool_choice'", TARGET, "tool_choice")
        config["toolChoice"] = {"tool": {"name": name}}
    elif choice is not None:
        raise neutral.unsupported(f"'tool_choice': {choice!r}", TARGET, "tool_choice")
    return config
