"""Ollama's native API: `POST /api/chat` (https://github.com/ollama/ollama/blob/main/docs/api.md).

(The `ollama` provider type is Ollama's OpenAI-compatible `/v1` API; this one speaks the native
protocol, which carries thinking and Ollama's own options.) No client dialect speaks it, so every
call is translated; answers stream as newline-delimited JSON (`application/x-ndjson`), one object
per line, the last one `done: true` with the token counts.

Choices made where the two shapes differ (the README lists them for operators):
- `stream` is always sent: Ollama streams unless told `false`;
- images: `data:` URLs become the message's `images` (base64); web URLs are refused (Ollama
  fetches nothing);
- tool calls have no ids in Ollama: answers get generated ids; tool results are sent with the
  `tool_name` of the call they answer, looked up by `tool_call_id`;
- `tool_choice` `none` sends no tools; `required` or a named function is refused;
- `reasoning_effort` `none` is `think: false`, `low`/`medium`/`high` pass as `think` levels
  (`minimal` as `low`); a `thinking_budget` turns thinking on (`think: true`), its size is not
  enforced (Ollama has no budget);
- `response_format` `json_object` is `format: "json"`, `json_schema` passes its schema as `format`;
- `cache_control` hints, a message's `name` and Anthropic's `reasoning_signature` are not carried.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any

import orjson

from sluicegate import neutral
from sluicegate.errors import BadRequest, UpstreamError
from sluicegate.providers.base import (
    Preset,
    Provider,
    StreamDecoder,
    capped,
    json_error_message,
    register_provider_type,
    reported_error,
)
from sluicegate.providers.framing import MAX_EVENT_BYTES, NDJSONParser

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.config.model import ProviderConfig

DOCS = "https://github.com/ollama/ollama/blob/main/docs/api.md"

#: neutral keys carried as Ollama `options` of the same name
OPTIONS = ("temperature", "top_p", "top_k", "seed", "presence_penalty", "frequency_penalty")

#: neutral `reasoning_effort` -> Ollama `think` (a boolean, or a level for models that take one)
THINK: dict[str, bool | str] = {"none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high"}

#: neutral keys that change nothing in the answer: not sent, nothing lost
IGNORED = neutral.INERT_KEYS

#: neutral keys this translation reads (the rest of a body is refused by name)
HANDLED = frozenset(
    {
        *OPTIONS,
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "response_format",
        "reasoning_effort",
        "thinking_budget",
        "n",
        "modalities",
        "logprobs",
        "top_logprobs",
        "logit_bias",
    }
)


class OllamaNativeProvider(Provider):
    """An Ollama server's native chat endpoint; a key, when configured, goes as a Bearer token."""

    native_dialect = "ollama"
    stream_framing = "ndjson"
    translated_endpoints = frozenset({"chat"})
    label = "Ollama"

    def __init__(self, config: ProviderConfig, preset: Preset) -> None:
        super().__init__(config, preset)
        self._chat_url = f"{self.base_url}/api/chat"

    # ------------------------------------------------------------------------------ HTTP

    def url_for(self, endpoint: str, model: str, stream: bool = False) -> str:
        if endpoint != "chat":
            raise neutral.unsupported(f"The '{endpoint}' endpoint", self.target)
        return self._chat_url

    # ------------------------------------------------------------------------------ request

    def build_request(self, call: Call, chat: dict[str, Any]) -> bytes:
        assert call.route is not None
        chat = capped(chat, call)
        for key, value in chat.items():
            if key not in HANDLED and key not in IGNORED and value is not None:
                raise neutral.unsupported(f"The '{key}' parameter", self.target, key)
        self._refuse_unsupported(chat)
        out: dict[str, Any] = {
            "model": call.route.upstream_model or call.model_requested,
            "messages": self._messages(chat.get("messages")),
            "stream": bool(call.stream),  # always explicit: Ollama streams by default
        }
        tools = chat.get("tools")
        choice = chat.get("tool_choice")
        if choice not in (None, "auto", "none"):
            raise neutral.unsupported("Forcing a tool call (tool_choice)", self.target, "tool_choice")
        if tools and choice != "none":
            out["tools"] = self._tools(tools)
        fmt = self._format(chat.get("response_format"))
        if fmt is not None:
            out["format"] = fmt
        options: dict[str, Any] = {key: chat[key] for key in OPTIONS if chat.get(key) is not None}
        max_tokens = chat.get("max_completion_tokens", chat.get("max_tokens"))
        if max_tokens is not None:
            options["num_predict"] = max_tokens
        stop = chat.get("stop")
        if stop is not None:
            options["stop"] = [stop] if isinstance(stop, str) else list(stop)
        if options:
            out["options"] = options
        think = self._think(chat.get("reasoning_effort"), chat.get("thinking_budget"))
        if think is not None:
            out["think"] = think
        return orjson.dumps(out)

    def _refuse_unsupported(self, chat: dict[str, Any]) -> None:
        n = chat.get("n")
        if n is not None and n != 1:
            raise neutral.unsupported("Several choices (n > 1)", self.target, "n")
        if chat.get("parallel_tool_calls") is False:
            raise neutral.unsupported("Turning off parallel tool calls", self.target, "parallel_tool_calls")
        modalities = chat.get("modalities")
        if modalities is not None and list(modalities) != ["text"]:
            raise neutral.unsupported("Output modalities other than text", self.target, "modalities")
        if chat.get("logprobs") or chat.get("top_logprobs") is not None:
            raise neutral.unsupported("Log probabilities", self.target, "logprobs")
        if chat.get("logit_bias"):
            raise neutral.unsupported("Logit bias", self.target, "logit_bias")

    def _messages(self, messages: Any) -> list[dict[str, Any]]:
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty array", param="messages")
        names: dict[str, str] = {}  # tool call id -> function name, for the tool results
        out: list[dict[str, Any]] = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise BadRequest(f"messages[{i}] must be an object", param=f"messages[{i}]")
            role = m.get("role")
            if role in ("system", "developer"):
                out.append({"role": "system", "content": self._content(m.get("content"), "System messages")[0]})
            elif role == "user":
                text, images = self._content(m.get("content"), "User messages", images=True)
                msg: dict[str, Any] = {"role": "user", "content": text}
                if images:
                    msg["images"] = images
                out.append(msg)
            elif role == "assistant":
                out.append(self._assistant(m, names))
            elif role == "tool":
                msg = {"role": "tool", "content": self._content(m.get("content"), "Tool results")[0]}
                name = names.get(m.get("tool_call_id") or "")
                if name is not None:
                    msg["tool_name"] = name
                out.append(msg)
            else:
                raise neutral.unsupported(f"Messages with the role {role!r}", self.target, f"messages[{i}].role")
        return out

    def _content(self, content: Any, what: str, images: bool = False) -> tuple[str, list[str]]:
        """(text, base64 images) of a neutral content."""
        if content is None or isinstance(content, str):
            return content or "", []
        if not isinstance(content, list):
            raise BadRequest("a message content must be a string or an array of parts")
        texts: list[str] = []
        found: list[str] = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(part.get("text") or "")
            elif kind == "image_url" and images:
                image = part.get("image_url")
                url = image.get("url") if isinstance(image, dict) else image
                parsed = neutral.parse_data_url(url) if isinstance(url, str) else None
                if parsed is None:
                    raise neutral.unsupported("Image URLs (only base64 data: URLs)", self.target)
                found.append(parsed[1])
            else:
                raise neutral.unsupported(f"{what} with {kind or 'unknown'} content", self.target)
        return "".join(texts), found

    def _assistant(self, m: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
        out: dict[str, Any] = {"role": "assistant", "content": self._content(m.get("content"), "Assistant messages")[0]}
        reasoning = m.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            out["thinking"] = reasoning
        calls = []
        for tc in m.get("tool_calls") or ():
            fn = tc.get("function") if isinstance(tc, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise BadRequest("an assistant tool call needs a function name")
            arguments = fn.get("arguments")
            if isinstance(arguments, str):
                try:
                    arguments = orjson.loads(arguments) if arguments.strip() else {}
                except orjson.JSONDecodeError:
                    raise BadRequest("tool call arguments must be JSON") from None
            if not isinstance(arguments, dict):
                raise neutral.unsupported("Tool call arguments that are not a JSON object", self.target)
            if isinstance(tc.get("id"), str):
                names[tc["id"]] = fn["name"]
            calls.append({"function": {"name": fn["name"], "arguments": arguments}})
        if calls:
            out["tool_calls"] = calls
        return out

    def _tools(self, tools: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for tool in tools:
            fn = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
                kind = tool.get("type") if isinstance(tool, dict) else None
                raise neutral.unsupported(f"Tools of type {kind!r}", self.target, "tools")
            entry: dict[str, Any] = {"name": fn.get("name")}
            if fn.get("description") is not None:
                entry["description"] = fn["description"]
            entry["parameters"] = fn.get("parameters") or {"type": "object", "properties": {}}
            out.append({"type": "function", "function": entry})
        return out

    def _format(self, fmt: Any) -> str | dict[str, Any] | None:
        if fmt is None:
            return None
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind == "text":
            return None
        if kind == "json_object":
            return "json"
        if kind == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema")
            return schema if isinstance(schema, dict) else "json"
        raise neutral.unsupported(f"response_format {kind!r}", self.target, "response_format")

    def _think(self, effort: Any, budget: Any) -> bool | str | None:
        if isinstance(budget, int) and not isinstance(budget, bool):
            return budget > 0
        if effort is None:
            return None
        if effort not in THINK:
            raise neutral.unsupported(f"reasoning_effort {effort!r}", self.target, "reasoning_effort")
        return THINK[effort]

    # ------------------------------------------------------------------------------ answer

    def parse_response(self, data: Any, call: Call) -> dict[str, Any]:
        if not isinstance(data, dict) or not isinstance(data.get("message"), dict):
            if isinstance(data, dict) and isinstance(data.get("error"), str):
                raise reported_error(self.name, None, json_error_message(data, ("error",)))
            raise UpstreamError(f"provider '{self.name}' answered with a body that is not an Ollama chat response")
        raw = data["message"]
        calls = [_tool_call(tc) for tc in raw.get("tool_calls") or () if isinstance(tc, dict)]
        content = raw.get("content") if isinstance(raw.get("content"), str) else ""
        message: dict[str, Any] = {"role": "assistant", "content": content if content or not calls else None}
        if isinstance(raw.get("thinking"), str) and raw["thinking"]:
            message["reasoning_content"] = raw["thinking"]
        if calls:
            message["tool_calls"] = calls
        model = data["model"] if isinstance(data.get("model"), str) else self._model(call)
        return neutral.completion(
            "chatcmpl-" + _rand_id(),
            model,
            message,
            _finish(data.get("done_reason"), bool(calls)),
            _usage(data, self.name),
        )

    @staticmethod
    def _model(call: Call) -> str:
        assert call.route is not None
        return call.route.upstream_model or call.model_requested or ""

    def stream_decoder(self, call: Call) -> StreamDecoder:
        return OllamaStreamDecoder(self.name, self._model(call), call.snapshot.server.max_stream_event_bytes)

    # ------------------------------------------------------------------------------ errors

    def error_message(self, body: bytes) -> str:
        # https://github.com/ollama/ollama/blob/main/docs/api/errors.mdx: `{"error": "..."}`
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return super().error_message(body)
        return json_error_message(data, ("error",), ("error", "message"), ("message",))


def _obj(value: Any) -> dict[str, Any]:
    """`value` when it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def _rand_id() -> str:
    return secrets.token_hex(12)


def _tool_call(tc: dict[str, Any]) -> dict[str, Any]:
    fn = _obj(tc.get("function"))
    arguments = fn.get("arguments")
    text = (
        arguments if isinstance(arguments, str) else orjson.dumps(arguments if arguments is not None else {}).decode()
    )
    # Ollama's tool calls carry no id (newer servers may): the neutral shape needs one.
    call_id = tc.get("id") if isinstance(tc.get("id"), str) and tc.get("id") else "call_" + _rand_id()
    return {"id": call_id, "type": "function", "function": {"name": fn.get("name") or "", "arguments": text}}


def _finish(reason: Any, tool_calls: bool) -> str:
    """Ollama `done_reason` (`stop`, `length`, `load`, `unload`) -> neutral; a stop with tool calls
    is a tool-call finish."""
    if reason == "length":
        return "length"
    return "tool_calls" if tool_calls else "stop"


def _usage(data: dict[str, Any], provider: str | None = None) -> dict[str, Any] | None:
    """`prompt_eval_count` / `eval_count` of the final object (Ollama omits a count of zero)."""
    return neutral.checked_usage((data.get("prompt_eval_count"),), (data.get("eval_count"),), provider=provider)


class OllamaStreamDecoder(StreamDecoder):
    """Ollama NDJSON: each line a partial `message`; the `done: true` line ends the stream with the
    finish reason and counts; a line `{"error": ...}` is an error the server hit mid-stream
    (https://github.com/ollama/ollama/blob/main/docs/api/errors.mdx)."""

    def __init__(self, provider: str, model: str, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.provider = provider
        self.lines = NDJSONParser(provider, max_event_bytes)
        self.done = False
        self.id = "chatcmpl-" + _rand_id()
        self.model = model
        self.created = int(time.time())
        self.started = False
        self.tools = 0

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for obj in self.lines.feed(data):
            self._line(obj, out)
        return out

    def close(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for obj in self.lines.close():
            self._line(obj, out)
        return out

    def _chunk(self, delta: dict[str, Any] | None = None, finish: str | None = None) -> dict[str, Any]:
        return neutral.chunk(self.id, self.model, self.created, delta, finish)

    def _line(self, obj: dict[str, Any], out: list[dict[str, Any]]) -> None:
        if self.done:
            return
        if obj.get("error"):
            detail = json_error_message(obj, ("error",), ("error", "message"))
            raise reported_error(self.provider, None, detail)
        if isinstance(obj.get("model"), str) and obj["model"]:
            self.model = obj["model"]
        message = _obj(obj.get("message"))
        delta: dict[str, Any] = {}
        if not self.started:
            self.started = True
            delta["role"] = "assistant"
        thinking = message.get("thinking")
        if isinstance(thinking, str) and thinking:
            delta["reasoning_content"] = thinking
        content = message.get("content")
        if isinstance(content, str) and (content or "role" in delta):
            delta["content"] = content
        calls = []
        for tc in message.get("tool_calls") or ():
            if isinstance(tc, dict):
                call = _tool_call(tc)
                fn = call["function"]
                calls.append(
                    neutral.tool_call_delta(self.tools, id_=call["id"], name=fn["name"], arguments=fn["arguments"])
                )
                self.tools += 1
        if calls:
            delta["tool_calls"] = calls
        if delta:
            out.append(self._chunk(delta))
        if obj.get("done") is True:
            out.append(self._chunk(None, _finish(obj.get("done_reason"), self.tools > 0)))
            usage = _usage(obj, self.provider)
            if usage is not None:
                out.append(neutral.usage_chunk(self.id, self.model, self.created, usage))
            self.done = True


register_provider_type(
    "ollama_native", OllamaNativeProvider, Preset("http://127.0.0.1:11434", needs_key=False, docs=DOCS)
)
