"""What every fake upstream wire format shares: the scripted `Reply`, the answer it plans, faults,
and the low-level ASGI helpers. Each format module (`fake_anthropic`, `fake_gemini` ...) renders a
planned answer in its provider's documented shape and registers its routes with `add_route`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import random
import re
import string
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from sluicegate.testing.upstream import FakeUpstream

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

DEFAULT_TEXT = "This is a mock response from the fake upstream."
ECHO_PREFIX = "echo:"
#: `reset` drops the connection (mid-stream after `chunks_before_fault` events); `hang` never
#: answers; `error_event` puts the format's in-band error event after `chunks_before_fault`
#: events and goes on streaming; `error_200` answers 200 with the format's error body;
#: `json_stream` answers a stream request with the whole JSON answer, as some servers do
FAULTS = (None, "reset", "hang", "error_event", "error_200", "json_stream")
#: framing quirks of a streamed answer (`Reply.sse`), as real servers write SSE:
#: `crlf` / `cr` line ends; `no_space` after the colon; `noise`: a comment, `id:` and `retry:`
#: lines before each event; `spaced_json`: JSON written with spaces (`"usage": {`); `multiline`:
#: each event's JSON over several `data:` lines; `no_separators`: no blank line between events
#: (one endless event); `bom` before the first event; `split`: sent in pieces of 7 bytes
SSE_QUIRKS = ("crlf", "cr", "no_space", "noise", "spaced_json", "multiline", "no_separators", "bom", "split")
#: garbage events (`Reply.garbage`), sent after `chunks_before_fault` events
GARBAGE = {"json": b'data: {"choices": [{"delta": {"content": "bro\n\n', "utf8": b'data: {"x": "\xff\xfe"}\n\n',
           "array": b"data: [1, 2, 3]\n\n"}  # fmt: skip
#: where an OpenAI stream puts its usage (`Reply.usage_shape`): in a last chunk with `"choices": []`
#: (`empty`, OpenAI's own), `[{"delta": {}}]` (`empty_delta`), `[{"index": 0, "delta": {},
#: "finish_reason": null}]` (`null_finish`), or on the chunk with the finish reason (`on_finish`)
USAGE_SHAPES = ("empty", "empty_delta", "null_finish", "on_finish")
#: the credential of the request being answered, for messages that echo it (`fill_key`)
RECEIVED_KEY: contextvars.ContextVar[str] = contextvars.ContextVar("RECEIVED_KEY", default="")
_KEY_FIELD = re.compile(r"\{key(?::\.(\d+))?\}")

# A stream piece is a run of whitespace plus the following word ("Hello", " world"); joining gives the text back.
PIECE = re.compile(r"\s*\S+|\s+")
# Tool-call arguments stream as alternating word / non-word fragments ('{"', 'city', '":"', 'Paris', '"}').
ARG_FRAGMENT = re.compile(r"\w+|\W+")
_ALNUM = string.ascii_letters + string.digits


@dataclass(slots=True)
class Progress:
    """How far the fake is in streaming a reply: a test reads it while the stream runs, to tell
    what the gateway forwarded before the fake sent more."""

    #: events sent so far, and of them the body's (one per piece of text, or tool-call fragment)
    events: int = 0
    body_events: int = 0


@dataclass(slots=True)
class Reply:
    """What the fake answers to one request (scripted by a test), in whichever wire format.

    `tool_calls` entries are `{"name", "arguments"}` (arguments a JSON string or an object), or
    OpenAI-shaped `{"id", "function": {...}}`. `cached_tokens` / `reasoning_tokens` are reported
    in the format's usage where it has a place for them; `reasoning` is thinking text, sent before
    the answer by formats that carry it. `body` (a JSON answer) and `events` (a stream) script the
    upstream's answer as sent, for shapes the planned answer does not make: each event a dict
    (sent as `data:`, after `event: <type>` when it has a "type", as Anthropic names its events),
    or bytes sent as they are (`b"data: [DONE]\n\n"`); `raw_body` is sent as it is to either.
    `error_message` may echo the credential the request carried: `{key}` is the whole of it,
    `{key:.N}` its first N characters (see `fill_key`).
    """

    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    status: int = 200
    error_message: str | None = None
    retry_after: float | None = None
    fault: str | None = None
    delay_s: float = 0.0
    chunk_interval_s: float = 0.0
    chunks_before_fault: int = 2
    usage: bool = True
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    reasoning: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    events: list[Any] | None = None
    #: framing quirks of a streamed answer (`SSE_QUIRKS`)
    sse: tuple[str, ...] = ()
    #: a garbage event in a stream (`GARBAGE`: `json`, `utf8`, `array`)
    garbage: str | None = None
    #: where an OpenAI stream carries its usage (`USAGE_SHAPES`)
    usage_shape: str = "empty"
    #: the prompt and completion counts the usage reports, written as given (any JSON value:
    #: 2**63, -1, 1.5, "7") instead of the planned ones
    usage_values: tuple[Any, Any] | None = None
    #: the answer's body exactly (with `status` and `raw_content_type`), instead of the planned one
    raw_body: bytes | None = None
    raw_content_type: str = "application/json"
    #: counts the stream's events as they are sent (kept by copies of the reply)
    progress: Progress | None = None

    def __post_init__(self) -> None:
        if self.fault not in FAULTS:
            raise ValueError(f"Reply.fault must be one of {FAULTS}, not {self.fault!r}")
        if unknown := set(self.sse) - set(SSE_QUIRKS):
            raise ValueError(f"Reply.sse takes {SSE_QUIRKS}, not {sorted(unknown)}")
        if self.garbage is not None and self.garbage not in GARBAGE:
            raise ValueError(f"Reply.garbage must be one of {tuple(GARBAGE)}, not {self.garbage!r}")
        if self.usage_shape not in USAGE_SHAPES:
            raise ValueError(f"Reply.usage_shape must be one of {USAGE_SHAPES}, not {self.usage_shape!r}")

    def counts(self, prompt: int, completion: int) -> tuple[Any, Any]:
        """The prompt and completion counts to report: `usage_values` when scripted."""
        return self.usage_values if self.usage_values is not None else (prompt, completion)

    def message(self, default: str = "") -> str:
        """`error_message` (or `default`) with the received credential filled in."""
        return fill_key(self.error_message if self.error_message is not None else default)


def fill_key(text: str) -> str:
    """`{key}` -> the credential of the request being answered, `{key:.N}` -> its first N characters."""
    key = RECEIVED_KEY.get()
    return _KEY_FIELD.sub(lambda m: key if m.group(1) is None else key[: int(m.group(1))], text)


def total(prompt: Any, completion: Any) -> Any:
    """A usage's total from its counts (the prompt as given when they are not both integers)."""
    return prompt + completion if type(prompt) is int and type(completion) is int else prompt


@dataclass(slots=True, frozen=True)
class ReceivedRequest:
    """One HTTP request as the fake received it (header names lower-cased)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return orjson.loads(self.body)


@dataclass(slots=True)
class ToolCall:
    """A planned tool call: id, name, JSON arguments text and how they stream."""

    id: str
    name: str
    arguments: str
    fragments: list[str]


@dataclass(slots=True)
class Answer:
    """What a format renders for one request: the same for every wire format, so tests can script
    any provider alike. Token counts: prompt = words of every message text + 3 per message
    (unless scripted); completion = stream pieces + per tool call its argument fragments + 1."""

    text: str | None
    pieces: list[str]
    tool_calls: list[ToolCall]
    finish: str  # stop | length | tool_calls
    prompt_tokens: int
    completion_tokens: int
    reply: Reply
    model: str

    @property
    def reasoning(self) -> str | None:
        return self.reply.reasoning


def plan_answer(
    reply: Reply,
    model: str,
    last_user_text: str,
    prompt_words: int,
    messages: int,
    max_tokens: int | None = None,
    id_prefix: str = "call_",
) -> Answer:
    """The answer to one request: the scripted content or tool calls, else an echo of the last
    user text (`"echo: X"` answers `X`), else `DEFAULT_TEXT`; cut to `max_tokens` pieces."""
    tool_calls = [tool_call(raw, id_prefix) for raw in reply.tool_calls or ()]
    text = reply.content
    if text is None and not tool_calls:
        echoed = echo(last_user_text)
        text = DEFAULT_TEXT if echoed is None else echoed
    pieces_ = pieces(text) if text is not None else []
    finish = "tool_calls" if tool_calls else "stop"
    if max_tokens is not None and len(pieces_) > max_tokens:
        pieces_ = pieces_[:max_tokens]
        text = "".join(pieces_)
        finish = "length"
    prompt = reply.prompt_tokens if reply.prompt_tokens is not None else prompt_words + 3 * messages
    completion = reply.completion_tokens
    if completion is None:
        completion = len(pieces_) + sum(len(tc.fragments) + 1 for tc in tool_calls)
    return Answer(text, pieces_, tool_calls, finish, prompt, completion, reply, reply.model or model)


def tool_call(raw: dict[str, Any], id_prefix: str = "call_") -> ToolCall:
    """A scripted tool call, normalised."""
    fn = raw.get("function", raw)
    arguments = fn.get("arguments", "")
    if not isinstance(arguments, str):
        arguments = orjson.dumps(arguments).decode()
    return ToolCall(raw.get("id") or f"{id_prefix}{rand(24)}", fn["name"], arguments, ARG_FRAGMENT.findall(arguments))


class InjectedFault(Exception):
    """Raised inside the app to make the server drop the connection mid-response."""


class _DropInjectedFaults(logging.Filter):
    """Keeps uvicorn from logging a traceback for faults injected on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info
        return not (exc and isinstance(exc[1], InjectedFault))


_log_filter_installed = False


def install_log_filter() -> None:
    global _log_filter_installed
    if not _log_filter_installed:
        logging.getLogger("uvicorn.error").addFilter(_DropInjectedFaults())
        _log_filter_installed = True


def rand(n: int) -> str:
    return "".join(random.choices(_ALNUM, k=n))


def pieces(text: str) -> list[str]:
    return PIECE.findall(text)


def words(text: str) -> int:
    return len(text.split())


def text_of(content: Any) -> str:
    """Text of a message content: a string, or the text parts of a multi-part list joined together."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") in ("text", "input_text") and isinstance(p.get("text"), str)
        )
    return ""


def echo(text: str) -> str | None:
    """``"echo: X"`` -> ``"X"`` (one space after the colon is eaten); None when the text is no echo request."""
    if not text.startswith(ECHO_PREFIX):
        return None
    rest = text[len(ECHO_PREFIX) :]
    return rest[1:] if rest.startswith(" ") else rest


def headers(content_type: bytes, extra: dict[str, str], length: int | None = None) -> list[tuple[bytes, bytes]]:
    out = [(b"content-type", content_type), (b"x-request-id", b"req_" + rand(32).encode())]
    if length is not None:
        out.append((b"content-length", b"%d" % length))
    for k, v in extra.items():
        out.append((k.lower().encode("latin-1"), v.encode("latin-1")))
    return out


async def send_bytes(
    send: Send,
    status: int,
    payload: bytes,
    extra: dict[str, str] | None = None,
    *,
    content_type: bytes = b"application/json",
) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": headers(content_type, extra or {}, len(payload))}
    )
    await send({"type": "http.response.body", "body": payload, "more_body": False})


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client went away first."""
    message = await receive()
    if message["type"] == "http.disconnect":
        return None
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def drop_connection(send: Send, receive: Receive) -> None:
    """Close the connection without any response (aborts the transport when the server exposes it, as uvicorn does)."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None or not hasattr(transport, "abort"):
        raise InjectedFault("connection reset by the fake upstream")
    transport.abort()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wait_disconnect(receive), 1.0)


#: sends a format's error body: (send, status, message or None for the format's default, extra headers)
ErrorSender = Callable[[Send, int, "str | None", dict[str, str]], Awaitable[None]]


async def begin(reply: Reply, stream: bool, receive: Receive, send: Send, send_error: ErrorSender) -> bool:
    """Apply delay, faults, raw bodies and error statuses; True when the normal answer should follow."""
    if reply.delay_s > 0:
        await asyncio.sleep(reply.delay_s)
    if reply.fault == "hang":
        await wait_disconnect(receive)
        return False
    if reply.fault == "reset" and (not stream or reply.status != 200):
        await drop_connection(send, receive)
        return False
    if reply.raw_body is not None:
        content_type = reply.raw_content_type.encode("latin-1")
        await send_bytes(send, reply.status, reply.raw_body, reply.headers, content_type=content_type)
        return False
    if reply.status != 200 or reply.fault == "error_200":
        extra = dict(reply.headers)
        if reply.retry_after is not None:
            ra = reply.retry_after
            extra["retry-after"] = str(int(ra)) if float(ra).is_integer() else str(ra)
        message = fill_key(reply.error_message) if reply.error_message is not None else None
        await send_error(send, reply.status, message, extra)
        return False
    if stream and reply.events is not None:
        await stream_events(reply, [], [_scripted_event(e) for e in reply.events], [], send)
        return False
    if not stream and reply.body is not None:
        await send_bytes(send, 200, orjson.dumps(reply.body), reply.headers)
        return False
    return True


def _scripted_event(event: Any) -> bytes:
    if isinstance(event, bytes):
        return event
    kind = event.get("type") if isinstance(event, dict) else None
    return sse(event, kind if isinstance(kind, str) else None)


async def stream_events(
    reply: Reply,
    head: list[bytes],
    body: list[bytes],
    tail: list[bytes],
    send: Send,
    content_type: bytes = b"text/event-stream; charset=utf-8",
    error_event: bytes | None = None,
) -> None:
    """Send stream frames one ASGI message each; with fault="reset", drop the connection inside
    ``body``. After ``chunks_before_fault`` body frames come the garbage event and (fault
    "error_event") the format's ``error_event``, then the rest; ``Reply.sse`` quirks re-frame it all."""
    hdrs = headers(content_type, reply.headers)
    hdrs.append((b"cache-control", b"no-cache"))
    await send({"type": "http.response.start", "status": 200, "headers": hdrs})
    reset = reply.fault == "reset"
    at = reply.chunks_before_fault
    inserted = [GARBAGE[reply.garbage]] if reply.garbage is not None else []
    if reply.fault == "error_event" and error_event is not None:
        inserted.append(error_event)
    events = head + body[:at] + inserted + ([] if reset else body[at:] + tail)
    if reply.sse:
        events = reframe(events, reply.sse)
    interval = reply.chunk_interval_s
    progress = reply.progress
    for i, event in enumerate(events):
        if interval > 0 and i:
            await asyncio.sleep(interval)
        await send({"type": "http.response.body", "body": event, "more_body": True})
        if progress is not None:
            progress.events += 1
            progress.body_events += len(head) <= i < len(head) + len(body)
    if reset:
        if interval > 0:
            await asyncio.sleep(interval)
        raise InjectedFault("stream reset by the fake upstream")
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _frame_fields(frame: bytes) -> tuple[bytes | None, list[bytes]]:
    """(event name, data lines) of one SSE frame as the fake formats write them."""
    name = None
    data = []
    for line in frame.replace(b"\r\n", b"\n").split(b"\n"):
        if line.startswith(b"event: "):
            name = line[7:]
        elif line.startswith(b"data: "):
            data.append(line[6:])
    return name, data


def reframe(frames: list[bytes], quirks: tuple[str, ...]) -> list[bytes]:
    """SSE frames written again with the framing quirks of real servers (`SSE_QUIRKS`)."""
    end = b"\r\n" if "crlf" in quirks else b"\r" if "cr" in quirks else b"\n"
    colon = b":" if "no_space" in quirks else b": "
    out = []
    for n, raw in enumerate(frames):
        name, data = _frame_fields(raw)
        if len(data) == 1 and ("spaced_json" in quirks or "multiline" in quirks):
            try:
                obj = json.loads(data[0])
            except ValueError:
                obj = None  # garbage stays garbage
            if obj is not None:
                text = json.dumps(obj, indent=1 if "multiline" in quirks else None)
                data = [line.encode() for line in text.split("\n")]
        lines = []
        if "noise" in quirks:
            lines += [b": keep-alive", b"id" + colon + b"%d" % n, b"retry" + colon + b"3000"]
        if name is not None:
            lines.append(b"event" + colon + name)
        lines += [b"data" + colon + d for d in data]
        frame = end.join(lines) + end + (b"" if "no_separators" in quirks else end)
        out.append(frame)
    if "bom" in quirks and out:
        out[0] = b"\xef\xbb\xbf" + out[0]
    if "split" in quirks:
        joined = b"".join(out)
        out = [joined[i : i + 7] for i in range(0, len(joined), 7)]
    return out


def dumps(data: Any) -> bytes:
    """Compact JSON, numbers beyond 64 bits included (a scripted `usage_values` of 2**63)."""
    try:
        return orjson.dumps(data)
    except TypeError:
        return json.dumps(data, separators=(",", ":")).encode()


def sse(data: Any, event: str | None = None) -> bytes:
    """One SSE frame: optional `event:` line, then `data:` with compact JSON (or the bytes given)."""
    payload = data if isinstance(data, bytes) else dumps(data)
    return (b"event: " + event.encode() + b"\n" if event else b"") + b"data: " + payload + b"\n\n"


@dataclass(slots=True, frozen=True)
class Request:
    """One request handed to a format route."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    match: re.Match[str]
    #: the path as sent, percent-escapes kept (`path` is decoded)
    raw_path: str = ""


#: a format route's handler: (fake, request, receive, send)
Handler = Callable[["FakeUpstream", Request, Receive, Send], Awaitable[None]]

#: routes of the non-OpenAI formats, tried in order before the OpenAI ones
FORMAT_ROUTES: list[tuple[re.Pattern[str], Handler]] = []


def add_route(pattern: str, handler: Handler) -> None:
    """Serve paths matching `pattern` (a full-match regex) with `handler`."""
    FORMAT_ROUTES.append((re.compile(pattern), handler))
