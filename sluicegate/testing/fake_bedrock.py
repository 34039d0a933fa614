"""Fake AWS Bedrock runtime: Converse and ConverseStream, as the documented wire format.

Routes: `POST /model/{modelId}/converse` (JSON answer) and `/model/{modelId}/converse-stream`
(AWS event-stream binary frames), https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html
and https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ConverseStream.html.

Auth, when `fake.required_key` is set: `AKID:SECRET` (or `AKID:SECRET:SESSION_TOKEN`) demands a
SigV4 signature, verified for real by recomputing it with botocore from the received method, path,
query, signed headers and body; a key without ':' is a Bedrock API key demanded as
`Authorization: Bearer`. Failures answer 403 with AWS's messages and `x-amzn-ErrorType`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hmac
import struct
import uuid
import zlib
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from sluicegate.testing.wire import (
    Answer,
    Receive,
    Request,
    Send,
    add_route,
    begin,
    plan_answer,
    rand,
    send_bytes,
    stream_events,
    words,
)

if TYPE_CHECKING:
    from sluicegate.testing.upstream import FakeUpstream

EVENT_STREAM = b"application/vnd.amazon.eventstream"

# (x-amzn-ErrorType, default message) by status, as the Converse errors are documented
# (https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html#API_runtime_Converse_Errors).
ERRORS: dict[int, tuple[str, str]] = {
    400: ("ValidationException", "The provided request is not valid."),
    403: ("AccessDeniedException", "You don't have access to the model with the specified model ID."),
    404: ("ResourceNotFoundException", "The specified resource ARN was not found. Check the ARN and try again."),
    408: ("ModelTimeoutException", "The request took too long to process. Processing time exceeded the model timeout."),
    424: ("ModelErrorException", "The request failed due to an error while processing the model."),
    429: ("ThrottlingException", "Too many requests, please wait before trying again."),
    500: ("InternalServerException", "The server encountered an internal error while processing the request."),
    503: ("ServiceUnavailableException", "Bedrock is unable to process your request."),
}

# SigV4 failures (https://docs.aws.amazon.com/IAM/latest/UserGuide/signature-v4-troubleshooting.html)
SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access "
    "Key and signing method. Consult the service documentation for details."
)
UNRECOGNIZED_CLIENT = "The security token included in the request is invalid."
# A wrong Bedrock API key (https://docs.aws.amazon.com/bedrock/latest/userguide/api-keys.html): AWS
# answers with a capitalised "Message".
BAD_API_KEY = "Authentication failed: Please make sure your API Key is valid."
MISSING_AUTH = "Authorization header is missing"
MAX_SKEW = timedelta(minutes=5)

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
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
_PAD = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


START_WITH_USER = (
    "A conversation must start with a user message. Try again with a conversation that starts with a user message."
)


def _null(where: str) -> str:
    return f"1 validation error detected: Value null at '{where}' failed to satisfy constraint: Member must not be null"


class _Invalid(Exception):
    """A 400 ValidationException with AWS's message."""


# --------------------------------------------------------------------------------------------- event-stream framing


def event_frame(headers: list[tuple[str, str]], payload: bytes) -> bytes:
    """One AWS event-stream message (https://docs.aws.amazon.com/AmazonS3/latest/API/RESTSelectObjectAppendix.html,
    the framing every AWS streaming API shares): prelude (total length, headers length, both
    uint32 big endian, then the prelude's CRC32), headers (name length byte, name, value type 7 =
    string, value length uint16, value), payload, and the CRC32 of everything before it."""
    raw = b"".join(
        struct.pack(">B", len(n)) + n + b"\x07" + struct.pack(">H", len(v)) + v
        for n, v in ((name.encode(), value.encode()) for name, value in headers)
    )
    prelude = struct.pack(">II", 16 + len(raw) + len(payload), len(raw))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + raw + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(name: str, data: dict[str, Any]) -> bytes:
    """A ConverseStream event: JSON payload with the random-length padding field `p` Bedrock adds."""
    payload = {**data, "p": _PAD[: 1 + len(name) * 3 % len(_PAD)]}
    return event_frame(
        [(":event-type", name), (":content-type", "application/json"), (":message-type", "event")],
        orjson.dumps(payload),
    )


def exception_frame(kind: str, message: str) -> bytes:
    """An in-stream exception (ConverseStreamOutput's throttlingException, modelStreamErrorException ...)."""
    return event_frame(
        [(":exception-type", kind), (":content-type", "application/json"), (":message-type", "exception")],
        orjson.dumps({"message": message}),
    )


# --------------------------------------------------------------------------------------------- errors and auth


async def send_error(send: Send, status: int, message: str | None, extra: dict[str, str]) -> None:
    """A Bedrock error: `{"message"}` and the exception name in `x-amzn-ErrorType`."""
    kind, default = ERRORS.get(status, ("InternalServerException" if status >= 500 else "ValidationException", "Error"))
    await _error(send, status, kind, default if message is None else message, extra)


async def _error(
    send: Send, status: int, kind: str, message: str, extra: dict[str, str] | None = None, *, key: str = "message"
) -> None:
    headers = {"x-amzn-ErrorType": kind, "x-amzn-RequestId": str(uuid.uuid4()), **(extra or {})}
    await send_bytes(send, status, orjson.dumps({key: message}), headers)


def _required(key: str) -> tuple[str, str, str | None] | None:
    """(key id, secret, session token) of a SigV4 `required_key`; None for a Bedrock API key."""
    if key.startswith("{"):
        data = orjson.loads(key)
        return data["access_key_id"], data["secret_access_key"], data.get("session_token")
    if ":" not in key:
        return None
    parts = key.split(":", 2)
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def _parse_authorization(value: str) -> dict[str, str] | None:
    """Credential, SignedHeaders and Signature of a SigV4 Authorization header."""
    algorithm, _, rest = value.partition(" ")
    if algorithm != "AWS4-HMAC-SHA256":
        return None
    fields = {}
    for item in rest.split(","):
        name, sep, val = item.strip().partition("=")
        if sep:
            fields[name] = val
    if not {"Credential", "SignedHeaders", "Signature"} <= fields.keys():
        return None
    return fields


def _expected_signature(
    request: Request, signed: list[str], key_id: str, secret: str, token: str | None, region: str, service: str
) -> str:
    """The signature AWS computes for the request as received (botocore's SigV4 algorithm)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    path = getattr(request, "raw_path", None) or request.path
    url = f"http://{request.headers.get('host', 'localhost')}{path}" + (f"?{request.query}" if request.query else "")
    headers = {name: request.headers.get(name, "") for name in signed}
    aws = AWSRequest(method=request.method, url=url, data=request.body, headers=headers)
    aws.context["timestamp"] = request.headers.get("x-amz-date", "")
    auth = SigV4Auth(Credentials(key_id, secret, token), service, region)
    canonical = auth.canonical_request(aws)
    return str(auth.signature(auth.string_to_sign(aws, canonical), aws))


async def _check_auth(fake: FakeUpstream, request: Request, send: Send) -> bool:
    """AWS's authentication, in its order: a credential at all, a known key, a valid signature."""
    auth = request.headers.get("authorization", "")
    if not auth:
        if not fake.require_auth:
            return True
        await _error(send, 403, "MissingAuthenticationTokenException", MISSING_AUTH)
        return False
    required = fake.required_key
    expected = _required(required) if required is not None else None
    if auth.startswith("Bearer "):
        if required is not None and (expected is not None or not hmac.compare_digest(auth[7:].strip(), required)):
            await _error(send, 403, "AccessDeniedException", BAD_API_KEY, key="Message")
            return False
        return True
    fields = _parse_authorization(auth)
    if fields is None:
        await _error(
            send,
            403,
            "IncompleteSignatureException",
            f"Authorization header requires existence of "
            f"either a 'X-Amz-Date' or a 'Date' header. Authorization={auth.split(' ')[0]}",
        )
        return False
    scope = fields["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        await _error(send, 403, "IncompleteSignatureException", "Credential is malformed.")
        return False
    key_id, day, region, service, _ = scope
    if required is None:
        return True
    if expected is None or key_id != expected[0]:
        await _error(send, 403, "UnrecognizedClientException", UNRECOGNIZED_CLIENT)
        return False
    if expected[2] is not None and request.headers.get("x-amz-security-token") != expected[2]:
        await _error(send, 403, "UnrecognizedClientException", UNRECOGNIZED_CLIENT)
        return False
    stamp = request.headers.get("x-amz-date", "")
    try:
        when = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        await _error(send, 403, "IncompleteSignatureException", "Date must be in ISO-8601 'basic format'.")
        return False
    now = datetime.now(UTC)
    if now - when > MAX_SKEW:
        fmt = "%Y%m%dT%H%M%SZ"
        await _error(
            send,
            403,
            "InvalidSignatureException",
            f"Signature expired: {stamp} is now earlier than {(now - MAX_SKEW).strftime(fmt)} "
            f"({now.strftime(fmt)} - 5 min.)",
        )
        return False
    if day != stamp[:8]:
        await _error(
            send,
            403,
            "InvalidSignatureException",
            f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
            f"'{day}' != '{stamp[:8]}', from '{stamp}'.",
        )
        return False
    if service != "bedrock":
        await _error(
            send, 403, "InvalidSignatureException", "Credential should be scoped to correct service: 'bedrock'."
        )
        return False
    signed = fields["SignedHeaders"].split(";")
    if "host" not in signed:
        await _error(
            send,
            403,
            "InvalidSignatureException",
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
        )
        return False
    signature = _expected_signature(request, signed, key_id, expected[1], expected[2], region, service)
    if not hmac.compare_digest(signature, fields["Signature"]):
        await _error(send, 403, "InvalidSignatureException", SIGNATURE_MISMATCH)
        return False
    return True


# --------------------------------------------------------------------------------------------- validation


def _validate(data: Any) -> tuple[str, int, int, int | None]:
    """Check a Converse request like Bedrock does; (last user text, prompt words, messages, maxTokens)."""
    if not isinstance(data, dict):
        raise _Invalid("1 validation error detected: the request body must be a JSON object")
    messages = data.get("messages")
    if messages is None:
        raise _Invalid(_null("messages"))
    if not isinstance(messages, list) or not messages:
        raise _Invalid(START_WITH_USER)
    tool_config = data.get("toolConfig")
    prompt_words = 0
    used_tools = False
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise _Invalid(
                f"1 validation error detected: Value '{role}' at 'messages.{i + 1}.member.role' failed to satisfy "
                "constraint: Member must satisfy enum value set: [user, assistant]"
            )
        if i == 0 and role != "user":
            raise _Invalid(START_WITH_USER)
        if i and messages[i - 1].get("role") == role:
            raise _Invalid(
                "A conversation must alternate between user and assistant roles. Make sure the conversation "
                "alternates between user and assistant roles and try again."
            )
        content = message.get("content")
        if not isinstance(content, list) or not content:
            raise _Invalid(
                f"1 validation error detected: Value at 'messages.{i + 1}.member.content' failed to satisfy "
                "constraint: Member must have length greater than or equal to 1"
            )
        for j, block in enumerate(content):
            prompt_words += _check_block(block, i, j, role)
            used_tools = used_tools or "toolUse" in block or "toolResult" in block
    if used_tools and not (isinstance(tool_config, dict) and tool_config.get("tools")):
        raise _Invalid("The toolConfig field must be defined when using toolUse and toolResult content blocks.")
    _check_tool_results(messages)
    system = data.get("system")
    system_messages = 0
    if system is not None:
        if not isinstance(system, list):
            raise _Invalid("1 validation error detected: 'system' must be a list of SystemContentBlock")
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
                raise _Invalid(
                    f"1 validation error detected: Value at 'toolConfig.tools.{k + 1}.member.toolSpec' failed to "
                    "satisfy constraint: Member must have a name and an inputSchema"
                )
    inference = data.get("inferenceConfig") or {}
    max_tokens = inference.get("maxTokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise _Invalid(
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
        raise _Invalid(
            f"1 validation error detected: Value at 'messages.{i + 1}.member.content.{j + 1}.member' failed to "
            "satisfy constraint: Member must be a ContentBlock with exactly one member set"
        )
    kind, value = next(iter(block.items()))
    where = f"messages.{i + 1}.member.content.{j + 1}.member"
    if kind == "text":
        if not isinstance(value, str) or not value.strip():
            raise _Invalid(
                f"The text field in the ContentBlock object at messages.{i}.content.{j} is blank. "
                "Add text to the text field, and try again."
            )
        return words(value)
    if kind == "image":
        if not isinstance(value, dict) or value.get("format") not in IMAGE_FORMATS:
            raise _Invalid(
                f"1 validation error detected: Value at '{where}.image.format' failed to satisfy constraint: "
                "Member must satisfy enum value set: [png, jpeg, gif, webp]"
            )
        _check_bytes(value.get("source"), f"{where}.image.source.bytes")
    elif kind == "document":
        if not isinstance(value, dict) or not value.get("name") or not value.get("format"):
            raise _Invalid(_null(f"{where}.document.name"))
        _check_bytes(value.get("source"), f"{where}.document.source.bytes")
    elif kind == "toolUse":
        if role != "assistant":
            raise _Invalid(f"messages.{i}.content.{j}: toolUse blocks can only be sent by the assistant.")
        for name in ("toolUseId", "name", "input"):
            if not isinstance(value, dict) or value.get(name) in (None, ""):
                raise _Invalid(_null(f"{where}.toolUse.{name}"))
    elif kind == "toolResult":
        if not isinstance(value, dict) or not value.get("toolUseId"):
            raise _Invalid(_null(f"{where}.toolResult.toolUseId"))
        if value.get("status") not in (None, "success", "error"):
            raise _Invalid(
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
            raise _Invalid(f"1 validation error detected: Value at '{where}.reasoningContent' is not valid")
    return 0


def _check_bytes(source: Any, where: str) -> None:
    data = source.get("bytes") if isinstance(source, dict) else None
    try:
        if not isinstance(data, str) or not base64.b64decode(data, validate=True):
            raise ValueError
    except (ValueError, binascii.Error):
        raise _Invalid(
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
            raise _Invalid(
                f"The number of toolResult blocks at messages.{i}.content exceeds the number of toolUse blocks of "
                "previous turn."
            )
        missing = [u for u in uses if u not in results]
        if missing:
            raise _Invalid(
                f"Expected toolResult blocks at messages.{i}.content for the following Ids: {', '.join(missing)}"
            )


# --------------------------------------------------------------------------------------------- answers


def _usage(answer: Answer) -> dict[str, Any]:
    """Converse TokenUsage: `inputTokens` leaves out the tokens read from the cache."""
    cached = answer.reply.cached_tokens or 0
    out: dict[str, Any] = {
        "inputTokens": answer.prompt_tokens - cached,
        "outputTokens": answer.completion_tokens,
        "totalTokens": answer.prompt_tokens + answer.completion_tokens,
    }
    if answer.reply.cached_tokens is not None:
        out["cacheReadInputTokens"] = cached
        out["cacheWriteInputTokens"] = 0
    return out


def _signature() -> str:
    return base64.b64encode(rand(48).encode()).decode()


def converse_body(answer: Answer) -> dict[str, Any]:
    """A Converse response (https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html#API_runtime_Converse_ResponseSyntax)."""
    content: list[dict[str, Any]] = []
    if answer.reasoning:
        content.append({"reasoningContent": {"reasoningText": {"text": answer.reasoning, "signature": _signature()}}})
    if answer.text:
        content.append({"text": answer.text})
    for tc in answer.tool_calls:
        content.append({"toolUse": {"toolUseId": tc.id, "name": tc.name, "input": orjson.loads(tc.arguments or "{}")}})
    return {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": STOP_REASONS[answer.finish],
        "usage": _usage(answer),
        "metrics": {"latencyMs": 42},
    }


def stream_frames(answer: Answer) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """ConverseStream events (https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ConverseStreamOutput.html):
    messageStart; per content block its deltas (toolUse blocks open with contentBlockStart) and
    contentBlockStop; messageStop; metadata."""
    head = [event("messageStart", {"role": "assistant"})]
    body: list[bytes] = []
    index = 0
    if answer.reasoning:
        for piece in answer.reasoning.split(" "):
            body.append(
                event(
                    "contentBlockDelta",
                    {"contentBlockIndex": index, "delta": {"reasoningContent": {"text": piece + " "}}},
                )
            )
        body.append(
            event(
                "contentBlockDelta",
                {"contentBlockIndex": index, "delta": {"reasoningContent": {"signature": _signature()}}},
            )
        )
        body.append(event("contentBlockStop", {"contentBlockIndex": index}))
        index += 1
    if answer.pieces:
        for piece in answer.pieces:
            body.append(event("contentBlockDelta", {"contentBlockIndex": index, "delta": {"text": piece}}))
        body.append(event("contentBlockStop", {"contentBlockIndex": index}))
        index += 1
    for tc in answer.tool_calls:
        start = {"toolUse": {"toolUseId": tc.id, "name": tc.name}}
        body.append(event("contentBlockStart", {"contentBlockIndex": index, "start": start}))
        for fragment in tc.fragments:
            body.append(
                event("contentBlockDelta", {"contentBlockIndex": index, "delta": {"toolUse": {"input": fragment}}})
            )
        body.append(event("contentBlockStop", {"contentBlockIndex": index}))
        index += 1
    tail = [
        event("messageStop", {"stopReason": STOP_REASONS[answer.finish]}),
        event("metadata", {"usage": _usage(answer), "metrics": {"latencyMs": 42}}),
    ]
    return head, body, tail


async def _converse(fake: FakeUpstream, request: Request, receive: Receive, send: Send) -> None:
    if request.method != "POST":
        await _error(send, 405, "UnknownOperationException", "Method not allowed")  # AWS's unknown-operation answer
        return
    if not await _check_auth(fake, request, send):
        return
    try:
        data = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        await _error(send, 400, "SerializationException", "Failed to parse the request body as JSON.")
        return
    try:
        last_user, prompt_words, messages, max_tokens = _validate(data)
    except _Invalid as exc:
        await _error(send, 400, "ValidationException", str(exc))
        return
    stream = request.match.group("op") == "converse-stream"
    reply = fake._next_reply()
    if not await begin(reply, stream, receive, send, send_error):
        return
    answer = plan_answer(reply, request.match.group("model"), last_user, prompt_words, messages, max_tokens, "tooluse_")
    request_id = {"x-amzn-RequestId": str(uuid.uuid4())}
    if stream:
        head, body, tail = stream_frames(answer)
        tagged = dataclasses.replace(reply, headers={**request_id, **reply.headers})
        await stream_events(tagged, head, body, tail, send, content_type=EVENT_STREAM)
    else:
        await send_bytes(send, 200, orjson.dumps(converse_body(answer)), {**request_id, **reply.headers})


add_route(r"/model/(?P<model>[^/]+)/(?P<op>converse|converse-stream)", _converse)
