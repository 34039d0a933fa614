"""Google Gemini (the Gemini Developer API, `generativelanguage.googleapis.com/v1beta`).

No client speaks Gemini's protocol, so every call is translated: the neutral chat body becomes a
`GenerateContentRequest` (https://ai.google.dev/api/generate-content), the answer
(`GenerateContentResponse`) a neutral completion, and the `alt=sse` stream neutral chunks. The
key goes in the `x-goog-api-key` header (https://ai.google.dev/gemini-api/docs/api-key), never
in the `?key=` query, so it stays out of URLs and logs.

Request mapping (neutral -> Gemini):
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

from __future__ import annotations

import mimetypes
import secrets
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import orjson

from sluicegate import neutral
from sluicegate.errors import BadRequest, NotFound, SluicegateError, UpstreamError
from sluicegate.providers.base import (
    Preset,
    Provider,
    StreamDecoder,
    json_error_message,
    register_provider_type,
    upstream_error,
)
from sluicegate.providers.framing import SSEParser, event_json

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.config.model import ProviderConfig

TARGET = "Google Gemini"

#: Candidate.finishReason -> neutral finish reason (https://ai.google.dev/api/generate-content#FinishReason);
#: anything else (OTHER, MALFORMED_FUNCTION_CALL, LANGUAGE ...) is "stop"
FINISH_REASONS: dict[str, str] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}

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


class GeminiProvider(Provider):
    """The Gemini Developer API, reached through translation only."""

    native_dialect = "gemini"
    translated_endpoints = frozenset({"chat"})
    label = "Google Gemini"

    def __init__(self, config: ProviderConfig, preset: Preset) -> None:
        super().__init__(config, preset)
        self._urls: dict[tuple[str, bool], str] = {}

    def url_for(self, endpoint: str, model: str, stream: bool = False) -> str:
        if endpoint != "chat":
            raise NotFound(f"provider '{self.name}' ({TARGET}) has no '{endpoint}' endpoint", code="not_found")
        key = (model, stream)
        url = self._urls.get(key)
        if url is None:
            if len(self._urls) > 1024:
                self._urls.clear()
            name = quote(model, safe="")
            if stream:
                url = f"{self.base_url}/models/{name}:streamGenerateContent?alt=sse"
            else:
                url = f"{self.base_url}/models/{name}:generateContent"
            self._urls[key] = url
        return url

    def credential_header(self, secret: str) -> tuple[str, str]:
        return "x-goog-api-key", secret  # never the `?key=` query: URLs end up in logs

    # ------------------------------------------------------------------------------- request

    def build_request(self, call: Call, chat: dict[str, Any]) -> bytes:
        return orjson.dumps(build_body(chat))

    # ------------------------------------------------------------------------------- answers

    def parse_response(self, data: Any, call: Call) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise UpstreamError(f"provider '{self.name}' answered with a body that is not a Gemini response")
        if isinstance(data.get("error"), dict):
            detail = json_error_message(data, ("error", "message"))
            raise UpstreamError(f"provider '{self.name}' reported an error: {detail}")
        model = _model_name(data, call)
        choices = []
        candidates = data.get("candidates")
        if isinstance(candidates, list) and candidates:
            for position, candidate in enumerate(candidates):
                if not isinstance(candidate, dict):
                    continue
                index = candidate.get("index")
                choices.append(_choice(candidate, index if isinstance(index, int) else position))
            choices.sort(key=lambda c: c["index"])
        else:
            # No candidates: the prompt itself was blocked (promptFeedback.blockReason).
            feedback = data.get("promptFeedback")
            blocked = isinstance(feedback, dict) and bool(feedback.get("blockReason"))
            choices.append(
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": ""},
                    "finish_reason": "content_filter" if blocked else "stop",
                }
            )
        out = neutral.completion(_completion_id(data), model, choices[0]["message"], None, _usage(data))
        out["choices"] = choices
        return out

    def stream_decoder(self, call: Call) -> StreamDecoder:
        expected = 1
        body = call.body
        if call.dialect == "openai" and isinstance(body, dict):
            n = body.get("n")
            if isinstance(n, int) and not isinstance(n, bool) and n > 1:
                expected = n
        return GeminiStreamDecoder(self.name, _requested_model(call), expected)

    def error_message(self, body: bytes) -> str:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body[:300].decode("utf-8", "replace").strip()
        if isinstance(data, list) and data:  # the JSON-array stream framing wraps errors too
            data = data[0]
        return json_error_message(data, ("error", "message"), ("error",), ("message",))

    def parse_error(self, status: int, body: bytes, retry_after: float | None, secret: str | None) -> SluicegateError:
        # A bad key is a 400 INVALID_ARGUMENT with reason API_KEY_INVALID, not a 401
        # (https://ai.google.dev/gemini-api/docs/troubleshooting): report it as the auth failure it is.
        # A 429 carries its wait in a RetryInfo detail (`"retryDelay": "37s"`), not in Retry-After.
        error = _error_object(body)
        if error is not None:
            reasons = {d.get("reason") for d in error.get("details") or () if isinstance(d, dict)}
            if "API_KEY_INVALID" in reasons or error.get("status") == "UNAUTHENTICATED":
                status = 401
            if retry_after is None:
                retry_after = _retry_delay(error)
        return upstream_error(self.name, status, self.error_message(body), retry_after, secret)


# ----------------------------------------------------------------------------------- request


def build_body(chat: dict[str, Any]) -> dict[str, Any]:
    """The `GenerateContentRequest` for a neutral chat body (raises `unsupported` for what has no place)."""
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


# ----------------------------------------------------------------------------------- answers


def _requested_model(call: Call) -> str:
    route = call.route
    return (route.upstream_model if route is not None else None) or call.model_requested or ""


def _model_name(data: dict[str, Any], call: Call) -> str:
    version = data.get("modelVersion")
    return version if isinstance(version, str) and version else _requested_model(call)


def _completion_id(data: dict[str, Any]) -> str:
    response_id = data.get("responseId")
    return (
        f"chatcmpl-{response_id}"
        if isinstance(response_id, str) and response_id
        else f"chatcmpl-{secrets.token_hex(12)}"
    )


def _call_id(call: dict[str, Any]) -> str:
    """Gemini's own id for a function call when it sent one, else a new one (clients need ids)."""
    call_id = call.get("id")
    return call_id if isinstance(call_id, str) and call_id else f"call_{secrets.token_hex(12)}"


def _finish(reason: Any, has_calls: bool) -> str:
    finish = FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"
    return "tool_calls" if finish == "stop" and has_calls else finish


def _candidate_parts(candidate: dict[str, Any]) -> list[dict[str, Any]]:
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def _choice(candidate: dict[str, Any], index: int) -> dict[str, Any]:
    texts: list[str] = []
    thoughts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    signature: str | None = None
    for part in _candidate_parts(candidate):
        sig = part.get("thoughtSignature")
        if signature is None and isinstance(sig, str) and sig:
            signature = sig
        text = part.get("text")
        if isinstance(text, str):
            (thoughts if part.get("thought") is True else texts).append(text)
        call = part.get("functionCall")
        if isinstance(call, dict):
            tool_calls.append(
                {
                    "id": _call_id(call),
                    "type": "function",
                    "function": {
                        "name": call.get("name", ""),
                        "arguments": orjson.dumps(call.get("args") or {}).decode(),
                    },
                }
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not tool_calls else None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if thoughts:
        message["reasoning_content"] = "".join(thoughts)
    if signature is not None:
        message["reasoning_signature"] = signature
    return {
        "index": index,
        "message": message,
        "finish_reason": _finish(candidate.get("finishReason"), bool(tool_calls)),
    }


def _count(meta: dict[str, Any], key: str) -> int | None:
    value = meta.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _usage(data: dict[str, Any]) -> dict[str, Any] | None:
    """Neutral usage from `usageMetadata`: output counts the thoughts, which Gemini reports apart."""
    meta = data.get("usageMetadata")
    if not isinstance(meta, dict):
        return None
    prompt = (_count(meta, "promptTokenCount") or 0) + (_count(meta, "toolUsePromptTokenCount") or 0)
    thoughts = _count(meta, "thoughtsTokenCount")
    completion = (_count(meta, "candidatesTokenCount") or 0) + (thoughts or 0)
    return neutral.usage(prompt, completion, cached=_count(meta, "cachedContentTokenCount"), reasoning=thoughts)


def _error_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, list) and data:
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else None


def _retry_delay(error: dict[str, Any]) -> float | None:
    for detail in error.get("details") or ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = detail.get("retryDelay")
            if isinstance(delay, str) and delay.endswith("s"):
                try:
                    return float(delay[:-1])
                except ValueError:
                    return None
    return None


class GeminiStreamDecoder(StreamDecoder):
    """`streamGenerateContent?alt=sse`: each `data:` event is a whole `GenerateContentResponse`
    holding the next parts of each candidate; the stream ends after the event that carries the
    last candidate's `finishReason` (no end marker). Each functionCall part arrives whole."""

    def __init__(self, provider: str, model: str, expected: int = 1) -> None:
        self.provider = provider
        self.model = model
        self.expected = expected
        self.sse = SSEParser()
        self.done = False
        self.id = f"chatcmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.started: set[int] = set()
        self.finished: set[int] = set()
        self.calls: dict[int, int] = {}  # candidate index -> function calls so far
        self.usage: dict[str, Any] | None = None
        self._first = True

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for _, payload in self.sse.feed(data):
            if self.done:
                break
            event = event_json(self.provider, payload)
            if "error" in event:
                detail = json_error_message(event, ("error", "message"))
                raise UpstreamError(f"provider '{self.provider}' reported an error in the stream: {detail}")
            self._event(event, out)
        return out

    def close(self) -> list[dict[str, Any]]:
        # The body ended: complete when every candidate that appeared has finished.
        out: list[dict[str, Any]] = []
        if not self.done and self.finished and self.finished >= self.started:
            self._end(out)
        return out

    def _chunk(self, index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return neutral.chunk(self.id, self.model, self.created, delta, finish, index=index)

    def _open(self, index: int, out: list[dict[str, Any]]) -> None:
        if index not in self.started:
            self.started.add(index)
            out.append(self._chunk(index, {"role": "assistant", "content": ""}))

    def _event(self, event: dict[str, Any], out: list[dict[str, Any]]) -> None:
        if self._first:
            self._first = False
            version = event.get("modelVersion")
            if isinstance(version, str) and version:
                self.model = version
            response_id = event.get("responseId")
            if isinstance(response_id, str) and response_id:
                self.id = f"chatcmpl-{response_id}"
        if isinstance(event.get("usageMetadata"), dict):
            self.usage = _usage(event)
        candidates = event.get("candidates")
        if not isinstance(candidates, list) or not candidates:
            feedback = event.get("promptFeedback")
            if isinstance(feedback, dict) and feedback.get("blockReason"):
                self._open(0, out)
                out.append(self._chunk(0, {}, "content_filter"))
                self.finished.add(0)
                self._end(out)
            return
        for position, candidate in enumerate(candidates):
            if not isinstance(candidate, dict):
                continue
            index = candidate.get("index")
            index = index if isinstance(index, int) else position
            if index in self.finished:
                continue
            self._open(index, out)
            for part in _candidate_parts(candidate):
                delta: dict[str, Any] = {}
                text = part.get("text")
                if isinstance(text, str) and text:
                    delta["reasoning_content" if part.get("thought") is True else "content"] = text
                call = part.get("functionCall")
                if isinstance(call, dict):
                    n = self.calls.get(index, 0)
                    self.calls[index] = n + 1
                    arguments = orjson.dumps(call.get("args") or {}).decode()
                    delta["tool_calls"] = [
                        neutral.tool_call_delta(n, id_=_call_id(call), name=call.get("name", ""), arguments=arguments)
                    ]
                signature = part.get("thoughtSignature")
                if isinstance(signature, str) and signature:
                    delta["reasoning_signature"] = signature
                if delta:
                    out.append(self._chunk(index, delta))
            reason = candidate.get("finishReason")
            if reason:
                self.finished.add(index)
                out.append(self._chunk(index, {}, _finish(reason, index in self.calls)))
        if len(self.finished) >= self.expected and self.finished >= self.started:
            self._end(out)

    def _end(self, out: list[dict[str, Any]]) -> None:
        self.done = True
        if self.usage is not None:
            out.append(neutral.usage_chunk(self.id, self.model, self.created, self.usage))


register_provider_type(
    "gemini",
    GeminiProvider,
    Preset("https://generativelanguage.googleapis.com/v1beta", docs="https://ai.google.dev/api/generate-content"),
)
