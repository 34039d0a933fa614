"""Gemini request: a neutral chat body -> a `GenerateContentRequest` (https://ai.google.dev/api/generate-content).

Part of `sluicegate.providers.gemini`; `build_body` is the entry, the rest are its helpers. What
has no place in a Gemini request raises `neutral.unsupported`.
"""

from __future__ import annotations

import mimetypes
from typing import Any
from urllib.parse import urlsplit

import orjson

from sluicegate import neutral
from sluicegate.errors import BadRequest

TARGET = "Google Gemini"

#: reasoning_effort -> thinkingBudget tokens
EFFORT_BUDGETS: dict[str, int] = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576}

#: chat body keys that change the answer and have no place in a Gemini request
UNSUPPORTED_KEYS: dict[str, str] = {
    "logprobs": "logprobs",
    "top_logprobs": "top_logprobs",
    "logit_bias": "logit_bias",
    "audio": "audio output",
    "functions": "legacy functions (use tools)",
    "function_call": "legacy function_call (use tool_choice)",
    "web_search_options": "web_search_options",
}

TOOL_MODES: dict[str, str] = {"auto": "AUTO", "none": "NONE", "required": "ANY"}


def build_body(chat: dict[str, Any]) -> dict[str, Any]:
    """The `GenerateContentRequest` for a neutral chat body (raises `unsupported` for what has no place).

    Mapping (neutral -> Gemini):
    - system / developer messages -> `systemInstruction` (text only, wherever they stand);
    - user / assistant -> `contents` with roles `user` / `model`, consecutive same roles merged;
      parts: text; images and files as `inlineData` (data: URLs) or `fileData` (http(s) URLs, which
      Gemini fetches itself; `mimeType` guessed from the URL's extension, left out when unknown);
      `input_audio` as `inlineData` `audio/<format>`; assistant `tool_calls` -> `functionCall`
      {name, args}; tool messages -> `functionResponse` {name (from the assistant tool call with that
      id), response: {"result": <content, parsed when it is JSON>}} in a `user` content;
    - an assistant's `reasoning_signature` -> `thoughtSignature` on its first `functionCall` part
      (else its first part): Gemini 3 refuses a tool loop without it
      (https://ai.google.dev/gemini-api/docs/thought-signatures). Its `reasoning_content` (thought
      summaries) is not sent back: Gemini takes no thought text as input;
    - tools -> `functionDeclarations` with `parametersJsonSchema` (the JSON schema as is);
      tool_choice auto / none / required / a named function -> `functionCallingConfig` AUTO / NONE /
      ANY / ANY + `allowedFunctionNames`;
    - `generationConfig`: max_tokens / max_completion_tokens -> maxOutputTokens, temperature, top_p
      -> topP, top_k -> topK, stop -> stopSequences, n -> candidateCount, seed, presence_penalty,
      frequency_penalty, response_format json_object / json_schema -> responseMimeType
      `application/json` (+ responseJsonSchema); thinking_budget -> thinkingConfig.thinkingBudget,
      else reasoning_effort none / minimal / low / medium / high -> 0 / 512 / 1024 / 8192 / 24576
      (the budgets Google's OpenAI compatibility layer uses), with includeThoughts unless 0.
    Refused with `neutral.unsupported`: logprobs / top_logprobs, logit_bias, audio output
    (`audio`, `modalities` beyond text), legacy `functions`, `web_search_options`, non-function
    tools, `parallel_tool_calls: false`, OpenAI file ids, other content part types.
    """
    for key, feature in UNSUPPORTED_KEYS.items():
        value = chat.get(key)
        if value is not None and value is not False:
            raise neutral.unsupported(feature, TARGET, key)
    modalities = chat.get("modalities")
    if isinstance(modalities, list) and any(m != "text" for m in modalities):
        raise neutral.unsupported("output modalities other than text", TARGET, "modalities")
    if chat.get("parallel_tool_calls") is False:
        raise neutral.unsupported("parallel_tool_calls: false", TARGET, "parallel_tool_calls")

    messages = chat.get("messages")
    if not isinstance(messages, list):
        raise BadRequest("'messages' must be an array", param="messages")
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"'messages[{i}]' must be an object", param=f"messages[{i}]")
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_system_parts(message.get("content"), i))
        elif role == "user":
            _append(contents, "user", _parts(message.get("content"), i))
        elif role == "assistant":
            _append(contents, "model", _assistant_parts(message, i, call_names))
        elif role in ("tool", "function"):
            _append(contents, "user", [_function_response(message, i, call_names)])
        else:
            raise BadRequest(f"'messages[{i}].role' {role!r} is not a chat role", param=f"messages[{i}].role")

    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    tools = chat.get("tools")
    if tools:
        body["tools"] = [{"functionDeclarations": [_declaration(t, i) for i, t in enumerate(tools)]}]
    tool_choice = chat.get("tool_choice")
    if tool_choice is not None:
        body["toolConfig"] = {"functionCallingConfig": _tool_choice(tool_choice)}
    config = _generation_config(chat)
    if config:
        body["generationConfig"] = config
    return body


def _append(contents: list[dict[str, Any]], role: str, parts: list[dict[str, Any]]) -> None:
    """Add parts as a content of `role`, merged into the previous one when it has the same role."""
    if not parts:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def _system_parts(content: Any, i: int) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts = []
    for part in content or ():
        if isinstance(part, dict) and part.get("type") == "text":
            parts.append({"text": part.get("text", "")})
        else:
            raise neutral.unsupported("non-text parts in a system message", TARGET, f"messages[{i}].content")
    return parts


def _parts(content: Any, i: int) -> list[dict[str, Any]]:
    """Gemini parts of a user or assistant content (a string or neutral parts)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise BadRequest(f"'messages[{i}].content' must be a string or an array", param=f"messages[{i}].content")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        param = f"messages[{i}].content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if isinstance(text, str) and text:
                parts.append({"text": text})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise BadRequest(f"'{param}.image_url.url' must be a string", param=param)
            parts.append(_media(url, param))
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            data, fmt = audio.get("data"), audio.get("format")
            if not isinstance(data, str) or not isinstance(fmt, str):
                raise BadRequest(f"'{param}.input_audio' needs data and format", param=param)
            parts.append({"inlineData": {"mimeType": f"audio/{fmt}", "data": data}})
        elif kind == "file":
            file = part.get("file") or {}
            data_url = file.get("file_data")
            if not isinstance(data_url, str):
                raise neutral.unsupported("file parts without inline file_data (file ids)", TARGET, param)
            parts.append(_media(data_url, param))
        else:
            raise neutral.unsupported(f"content parts of type {kind!r}", TARGET, param)
    return parts


def _media(url: str, param: str) -> dict[str, Any]:
    """A data: URL as inlineData; an http(s) URL as fileData (Gemini fetches it)."""
    parsed = neutral.parse_data_url(url)
    if parsed is not None:
        return {"inlineData": {"mimeType": parsed[0], "data": parsed[1]}}
    if url.startswith(("https://", "http://")):
        file_data: dict[str, str] = {"fileUri": url}
        mime, _ = mimetypes.guess_type(urlsplit(url).path)
        if mime:
            file_data["mimeType"] = mime
        return {"fileData": file_data}
    raise neutral.unsupported("media URLs other than data: and http(s): URLs", TARGET, param)


def _assistant_parts(message: dict[str, Any], i: int, call_names: dict[str, str]) -> list[dict[str, Any]]:
    parts = _parts(message.get("content"), i)
    first_call: dict[str, Any] | None = None
    for j, tool_call in enumerate(message.get("tool_calls") or ()):
        param = f"messages[{i}].tool_calls[{j}]"
        fn = tool_call.get("function") if isinstance(tool_call, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or not name:
            raise BadRequest(f"'{param}.function.name' must be a non-empty string", param=param)
        assert isinstance(fn, dict)
        call_id = tool_call.get("id")
        if isinstance(call_id, str):
            call_names[call_id] = name
        part: dict[str, Any] = {"functionCall": {"name": name, "args": _arguments(fn.get("arguments"), param)}}
        if first_call is None:
            first_call = part
        parts.append(part)
    signature = message.get("reasoning_signature")
    if isinstance(signature, str) and signature and parts:
        (first_call or parts[0])["thoughtSignature"] = signature
    return parts


def _arguments(raw: Any, param: str) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str):
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            return value
    raise BadRequest(f"'{param}.function.arguments' must be a JSON object", param=param)


def _function_response(message: dict[str, Any], i: int, call_names: dict[str, str]) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    name = call_names.get(call_id) if isinstance(call_id, str) else None
    if name is None:
        name = message.get("name")  # legacy function messages name the function themselves
    if not isinstance(name, str) or not name:
        raise BadRequest(
            f"'messages[{i}]' answers tool call {call_id!r}, which no earlier assistant message made "
            f"({TARGET} needs the function's name)",
            param=f"messages[{i}].tool_call_id",
        )
    content = message.get("content")
    if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") != "text" for p in content):
        raise neutral.unsupported("non-text tool results", TARGET, f"messages[{i}].content")
    text = neutral.text_of(content)
    result: Any = text
    if text:
        try:
            result = orjson.loads(text)
        except orjson.JSONDecodeError:
            result = text
    return {"functionResponse": {"name": name, "response": {"result": result}}}


def _declaration(tool: Any, i: int) -> dict[str, Any]:
    kind = tool.get("type") if isinstance(tool, dict) else None
    if kind != "function":
        raise neutral.unsupported(f"tools of type {kind!r}", TARGET, f"tools[{i}]")
    fn = tool.get("function")
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise BadRequest(f"'tools[{i}].function.name' must be a string", param=f"tools[{i}].function")
    out: dict[str, Any] = {"name": fn["name"]}
    if isinstance(fn.get("description"), str):
        out["description"] = fn["description"]
    if fn.get("parameters") is not None:
        out["parametersJsonSchema"] = fn["parameters"]
    return out


def _tool_choice(choice: Any) -> dict[str, Any]:
    if isinstance(choice, str):
        mode = TOOL_MODES.get(choice)
        if mode is not None:
            return {"mode": mode}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if isinstance(name, str):
            return {"mode": "ANY", "allowedFunctionNames": [name]}
    raise neutral.unsupported(f"tool_choice {orjson.dumps(choice).decode()[:100]}", TARGET, "tool_choice")


def _generation_config(chat: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    max_tokens = chat.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = chat.get("max_tokens")
    if max_tokens is not None:
        config["maxOutputTokens"] = max_tokens
    for source, target in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        value = chat.get(source)
        if value is not None:
            config[target] = value
    n = chat.get("n")
    if n is not None and n != 1:
        config["candidateCount"] = n
    stop = chat.get("stop")
    if isinstance(stop, str):
        config["stopSequences"] = [stop]
    elif isinstance(stop, list) and stop:
        config["stopSequences"] = stop
    fmt = chat.get("response_format")
    if isinstance(fmt, dict):
        kind = fmt.get("type")
        if kind == "json_object":
            config["responseMimeType"] = "application/json"
        elif kind == "json_schema":
            config["responseMimeType"] = "application/json"
            spec = fmt.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if schema is not None:
                config["responseJsonSchema"] = schema
        elif kind != "text":
            raise neutral.unsupported(f"response_format {kind!r}", TARGET, "response_format")
    thinking = _thinking(chat)
    if thinking is not None:
        config["thinkingConfig"] = thinking
    return config


def _thinking(chat: dict[str, Any]) -> dict[str, Any] | None:
    budget = chat.get("thinking_budget")
    if budget is None:
        effort = chat.get("reasoning_effort")
        if effort is None:
            return None
        budget = EFFORT_BUDGETS.get(effort) if isinstance(effort, str) else None
        if budget is None:
            raise neutral.unsupported(f"reasoning_effort {effort!r}", TARGET, "reasoning_effort")
    out: dict[str, Any] = {"thinkingBudget": budget}
    if budget != 0:
        out["includeThoughts"] = True
    return out
