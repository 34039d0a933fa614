"""Fake Google Gemini upstream: `models/{model}:generateContent` and `:streamGenerateContent`.

Follows the Gemini API reference (https://ai.google.dev/api/generate-content): a
`GenerateContentRequest` in (contents with roles user / model, systemInstruction, tools,
toolConfig, generationConfig), a `GenerateContentResponse` out (candidates with content parts,
finishReason and index; usageMetadata; modelVersion; responseId). Streaming
(https://ai.google.dev/gemini-api/docs/text-generation#streaming-responses) with `?alt=sse` sends
one `data:` event per `GenerateContentResponse`, CRLF-framed as Google does, and simply ends after
the event that carries `finishReason`; without `alt=sse` the same objects go out as one JSON
array, sent piece by piece. Errors are `{"error": {"code", "message", "status", "details"?}}`
with the statuses of https://ai.google.dev/gemini-api/docs/troubleshooting.

The key comes in `x-goog-api-key` (or the `key` query parameter). None at all: 403
PERMISSION_DENIED ("Method doesn't allow unregistered callers ..."); a wrong one: 400
INVALID_ARGUMENT with reason API_KEY_INVALID, as Google answers (neither quotes the key).
The answer is `plan_answer`'s, like every fake format: thought parts (`"thought": true`) for
`Reply.reasoning`, then the text, then one `functionCall` part per tool call (Gemini gives no
call ids); a `thoughtSignature` rides on the first function call (else the text) when there
is reasoning. `Reply.completion_tokens` counts the thoughts too (as the neutral model does):
`candidatesTokenCount` is the rest, `thoughtsTokenCount` is `Reply.reasoning_tokens`.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson

from sluicegate.testing.wire import (
    Answer,
    Receive,
    Reply,
    Request,
    Send,
    add_route,
    begin,
    dumps,
    pieces,
    plan_answer,
    rand,
    send_bytes,
    stream_events,
    total,
    words,
)

if TYPE_CHECKING:
    from sluicegate.testing.upstream import FakeUpstream

#: HTTP status -> google.rpc status name (https://ai.google.dev/gemini-api/docs/troubleshooting)
STATUSES: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

#: default messages by status, worded as the Gemini API words them
MESSAGES: dict[int, str] = {
    400: "Request contains an invalid argument.",
    403: "The caller does not have permission",
    404: "Requested entity was not found.",
    429: (
        "You exceeded your current quota, please check your plan and billing details. For more information "
        "on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits."
    ),
    500: "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
    504: "The request timed out. Please try again.",
}

NO_KEY = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)
BAD_KEY = "API key not valid. Please pass a valid API key."

#: fields of GenerateContentRequest (https://ai.google.dev/api/generate-content#request-body)
REQUEST_FIELDS = frozenset(
    {"contents", "tools", "toolConfig", "safetySettings", "systemInstruction", "generationConfig", "cachedContent"}
)
#: fields of GenerationConfig (https://ai.google.dev/api/generate-content#generationconfig)
GENERATION_FIELDS = frozenset(
    {"stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema", "responseModalities",
     "candidateCount", "maxOutputTokens", "temperature", "topP", "topK", "seed", "presencePenalty",
     "frequencyPenalty", "responseLogprobs", "logprobs", "enableEnhancedCivicAnswers", "speechConfig",
     "thinkingConfig", "imageConfig", "mediaResolution"}
)  # fmt: skip
#: fields of Part (https://ai.google.dev/api/caching#Part)
PART_FIELDS = frozenset(
    {"text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode",
     "codeExecutionResult", "thought", "thoughtSignature", "videoMetadata", "partMetadata", "mediaResolution"}
)  # fmt: skip
#: fields of FunctionDeclaration (https://ai.google.dev/api/caching#FunctionDeclaration)
DECLARATION_FIELDS = frozenset(
    {"name", "description", "behavior", "parameters", "parametersJsonSchema", "response", "responseJsonSchema"}
)
FUNCTION_MODES = frozenset({"MODE_UNSPECIFIED", "AUTO", "ANY", "NONE", "VALIDATED"})

SSE_TYPE = b"text/event-stream"
FINISH = {"stop": "STOP", "tool_calls": "STOP", "length": "MAX_TOKENS"}


class _Invalid(Exception):
    """A request Google would refuse with 400 INVALID_ARGUMENT."""


def error_body(status: int, message: str | None = None, details: list[dict[str, Any]] | None = None) -> bytes:
    """A Google error body (https://ai.google.dev/gemini-api/docs/troubleshooting)."""
    default = MESSAGES.get(status, "Internal error encountered." if status >= 500 else "Bad request.")
    error: dict[str, Any] = {
        "code": status,
        "message": default if message is None else message,
        "status": STATUSES.get(status, "UNKNOWN" if status >= 500 else "FAILED_PRECONDITION"),
    }
    if details:
        error["details"] = details
    return orjson.dumps({"error": error}, option=orjson.OPT_INDENT_2)


async def send_error(send: Send, status: int, message: str | None, extra: dict[str, str]) -> None:
    """The ErrorSender of this format: Google puts a 429's wait in a RetryInfo detail, not a header."""
    extra = dict(extra)
    details: list[dict[str, Any]] | None = None
    retry = extra.pop("retry-after", None)
    if status == 429 and retry is not None:
        details = [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                    }
                ],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry}s"},
        ]
    await send_bytes(send, status, error_body(status, message, details), extra)


def _bad_key_details() -> list[dict[str, Any]]:
    # As Google answers a wrong key: ErrorInfo reason API_KEY_INVALID, plus a LocalizedMessage.
    return [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"},
        },
        {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US", "message": BAD_KEY},
    ]


def _unknown(name: str, where: str) -> _Invalid:
    at = f" at '{where}'" if where else ""
    return _Invalid(f'Invalid JSON payload received. Unknown name "{name}"{at}: Cannot find field.')


def _validate(data: Any) -> None:
    """The checks Google makes that a translation can get wrong (field names, roles, empty parts)."""
    if not isinstance(data, dict):
        raise _Invalid("Invalid JSON payload received. Expected an object.")
    for key in data:
        if key not in REQUEST_FIELDS:
            raise _unknown(key, "")
    contents = data.get("contents")
    if not isinstance(contents, list) or not contents:
        raise _Invalid("* GenerateContentRequest.contents: contents is not specified\n")
    for i, content in enumerate(contents):
        if not isinstance(content, dict):
            raise _Invalid(f"Invalid value at 'contents[{i}]', expected an object.")
        if content.get("role") not in ("user", "model"):
            raise _Invalid("Please use a valid role: user, model.")
        _validate_parts(content.get("parts"), f"contents[{i}]")
    system = data.get("systemInstruction")
    if system is not None:
        if not isinstance(system, dict):
            raise _Invalid("Invalid value at 'system_instruction', expected an object.")
        _validate_parts(system.get("parts"), "system_instruction")
    config = data.get("generationConfig")
    if config is not None:
        if not isinstance(config, dict):
            raise _Invalid("Invalid value at 'generation_config', expected an object.")
        for key in config:
            if key not in GENERATION_FIELDS:
                raise _unknown(key, "generation_config")
        count = config.get("candidateCount")
        if count is not None and (not isinstance(count, int) or not 1 <= count <= 8):
            raise _Invalid("* GenerateContentRequest.generation_config.candidate_count: must be between 1 and 8\n")
        if config.get("responseJsonSchema") is not None and config.get("responseMimeType") != "application/json":
            raise _Invalid("responseJsonSchema requires responseMimeType 'application/json'.")
    for i, tool in enumerate(data.get("tools") or ()):
        for j, decl in enumerate(tool.get("functionDeclarations") or () if isinstance(tool, dict) else ()):
            for key in decl:
                if key not in DECLARATION_FIELDS:
                    raise _unknown(key, f"tools[{i}].function_declarations[{j}]")
            if "parameters" in decl and "parametersJsonSchema" in decl:
                raise _Invalid("parameters and parametersJsonSchema are mutually exclusive.")
    tool_config = data.get("toolConfig")
    if tool_config is not None:
        mode = (tool_config.get("functionCallingConfig") or {}).get("mode", "AUTO")
        if mode not in FUNCTION_MODES:
            raise _Invalid(f"Invalid value at 'tool_config.function_calling_config.mode', \"{mode}\"")


def _validate_parts(parts: Any, where: str) -> None:
    if not isinstance(parts, list) or not parts:
        raise _Invalid(f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.\n")
    for j, part in enumerate(parts):
        if not isinstance(part, dict) or not part:
            raise _Invalid(
                f"* GenerateContentRequest.{where}.parts[{j}].data: "
                "required oneof field 'data' must have one initialized field\n"
            )
        for key in part:
            if key not in PART_FIELDS:
                raise _unknown(key, f"{where}.parts[{j}]")


def _texts(parts: Any) -> list[str]:
    return [p["text"] for p in parts or () if isinstance(p, dict) and isinstance(p.get("text"), str)]


def _plan(data: dict[str, Any], model: str, fake: FakeUpstream) -> tuple[Answer, int]:
    contents: list[dict[str, Any]] = data["contents"]
    system = data.get("systemInstruction")
    system_texts = _texts(system.get("parts")) if isinstance(system, dict) else []
    prompt_words = sum(words(t) for c in contents for t in _texts(c.get("parts"))) + sum(words(t) for t in system_texts)
    messages = len(contents) + (1 if system_texts else 0)
    last_user = next((c for c in reversed(contents) if c.get("role") == "user"), None)
    last_text = "".join(_texts(last_user.get("parts"))) if last_user is not None else ""
    config = data.get("generationConfig") or {}
    max_tokens = config.get("maxOutputTokens")
    n = config.get("candidateCount") or 1
    reply = fake._next_reply()
    answer = plan_answer(
        reply, model, last_text, prompt_words, messages, max_tokens if isinstance(max_tokens, int) else None
    )
    return answer, n


def _usage(answer: Answer, n: int, candidates_so_far: int | None = None) -> dict[str, Any]:
    reply = answer.reply
    prompt = answer.prompt_tokens
    completion = reply.completion_tokens if reply.completion_tokens is not None else answer.completion_tokens * n
    thoughts = reply.reasoning_tokens or 0
    candidates = max(completion - thoughts, 0) if candidates_so_far is None else candidates_so_far
    reported = reply.counts(prompt, candidates)
    out: dict[str, Any] = {
        "promptTokenCount": reported[0],
        "candidatesTokenCount": reported[1],
        "totalTokenCount": total(total(*reported), thoughts if candidates_so_far is None else 0),
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    }
    if candidates_so_far is None:
        if reply.cached_tokens is not None:
            out["cachedContentTokenCount"] = reply.cached_tokens
            out["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": reply.cached_tokens}]
        if reply.reasoning_tokens is not None:
            out["thoughtsTokenCount"] = reply.reasoning_tokens
    return out


def _function_calls(answer: Answer) -> list[dict[str, Any]]:
    calls = []
    for tc in answer.tool_calls:
        try:
            args = orjson.loads(tc.arguments) if tc.arguments else {}
        except orjson.JSONDecodeError:
            args = {}
        calls.append({"functionCall": {"name": tc.name, "args": args if isinstance(args, dict) else {}}})
    return calls


def _signature() -> str:
    return base64.b64encode(b"fake-thought-signature:" + rand(24).encode()).decode()


def _candidate(parts: list[dict[str, Any]], index: int, finish: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
    if finish is not None:
        out["finishReason"] = finish
    out["index"] = index
    return out


def _response(
    answer: Answer, response_id: str, candidates: list[dict[str, Any]], usage: dict[str, Any] | None
) -> bytes:
    obj: dict[str, Any] = {"candidates": candidates}
    if usage is not None:
        obj["usageMetadata"] = usage
    obj["modelVersion"] = answer.model
    obj["responseId"] = response_id
    return dumps(obj)


def _stream_error(reply: Reply) -> bytes:
    """An error event mid-stream: the error body as one SSE event."""
    error = {"code": 500, "message": reply.message("An internal error has occurred."), "status": "INTERNAL"}
    return b"data: " + orjson.dumps({"error": error}) + b"\r\n\r\n"


async def _generate(fake: FakeUpstream, request: Request, receive: Receive, send: Send) -> None:
    # https://ai.google.dev/api/generate-content#method:-models.generatecontent
    if request.method != "POST":
        await send_error(send, 404, f"Method not found: {request.method} {request.path}", {})
        return
    query = parse_qs(request.query)
    key = request.headers.get("x-goog-api-key") or (query.get("key") or [""])[0]
    if not key and fake.require_auth:
        await send_error(send, 403, NO_KEY, {})
        return
    if fake.required_key is not None and key and key != fake.required_key:
        await send_bytes(send, 400, error_body(400, BAD_KEY, _bad_key_details()))
        return
    try:
        data = orjson.loads(request.body)
        _validate(data)
    except orjson.JSONDecodeError:
        await send_error(send, 400, "Invalid JSON payload received. Unexpected token.", {})
        return
    except _Invalid as exc:
        await send_error(send, 400, str(exc), {})
        return
    answer, n = _plan(data, request.match.group("model"), fake)
    stream = request.match.group("method") == "streamGenerateContent" and answer.reply.fault != "json_stream"
    if not await begin(answer.reply, stream, receive, send, send_error):
        return
    response_id = rand(22)
    finish = FINISH[answer.finish]
    thought = answer.reasoning
    calls = _function_calls(answer)
    signed = calls[0] if calls else None
    if stream:
        await _stream(answer, n, response_id, finish, calls, "sse" in query.get("alt", ()), send)
        return
    parts: list[dict[str, Any]] = []
    if thought:
        parts.append({"text": thought, "thought": True})
    if answer.text is not None and (answer.text or not calls):
        parts.append({"text": answer.text})
        signed = signed or parts[-1]
    if thought and signed is not None:
        signed["thoughtSignature"] = _signature()
    parts.extend(calls)
    candidates = [_candidate([dict(p) for p in parts], i, finish) for i in range(n)]
    usage = _usage(answer, n) if answer.reply.usage else None
    await send_bytes(send, 200, _response(answer, response_id, candidates, usage), answer.reply.headers)


async def _stream(
    answer: Answer, n: int, response_id: str, finish: str, calls: list[dict[str, Any]], sse: bool, send: Send
) -> None:
    """Each event holds the next parts of every candidate; the last one carries finishReason and the full usage."""
    steps: list[dict[str, Any]] = [{"text": p, "thought": True} for p in pieces(answer.reasoning or "")]
    steps += [{"text": p} for p in answer.pieces]
    first_answer_part = len(steps) - len(answer.pieces)
    steps += calls
    if not steps or (len(steps) == first_answer_part and answer.text is not None):
        steps.append({"text": ""})
    if answer.reasoning:
        at = first_answer_part + len(answer.pieces) if calls else first_answer_part
        steps[min(at, len(steps) - 1)]["thoughtSignature"] = _signature()
    usage = answer.reply.usage
    frames: list[bytes] = []
    for k, part in enumerate(steps):
        last = k == len(steps) - 1
        candidates = [_candidate([part], i, finish if last else None) for i in range(n)]
        meta = _usage(answer, n, None if last else k + 1) if usage else None
        payload = _response(answer, response_id, candidates, meta)
        frames.append(b"data: " + payload + b"\r\n\r\n" if sse else payload)
    if sse:
        await stream_events(answer.reply, [], frames[:-1], frames[-1:], send, SSE_TYPE, _stream_error(answer.reply))
        return
    # Without alt=sse Google streams one JSON array, element by element.
    body = [(b"[" if k == 0 else b",\r\n") + f for k, f in enumerate(frames)]
    await stream_events(answer.reply, [], body[:-1], [body[-1] + b"]"], send, b"application/json; charset=UTF-8")


add_route(r"/v1beta/models/(?P<model>[^/:]+):(?P<method>generateContent|streamGenerateContent)", _generate)
