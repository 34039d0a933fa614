"""Cohere: the v2 Chat API (https://docs.cohere.com/reference/chat), streamed or not.

No client dialect speaks Cohere, so every call is translated: a neutral chat body becomes a v2
chat body (`build_request`), the answer comes back as a neutral completion (`parse_response`) or
neutral chunks decoded from Cohere's typed SSE events (`CohereStreamDecoder`).

Choices made where the two shapes differ (the README lists them for operators):
- reasoning: Cohere's `thinking` content and its `tool_plan` (the text a model writes before its
  tool calls) both come back as `reasoning_content`; going up, an assistant turn's
  `reasoning_content` becomes its `tool_plan` when it has tool calls, a `thinking` item otherwise;
- `reasoning_effort` `none` turns thinking off, any other effort turns it on; `thinking_budget`
  becomes `thinking.token_budget`; Anthropic's `reasoning_signature` has no Cohere counterpart;
- `tool_choice` maps `none`/`required` to `NONE`/`REQUIRED`; naming a function is carried only
  when it is the only tool; tools marked `strict` set `strict_tools` (all or none of them);
- citations (`citation-start`/`citation-end`) have no neutral place and are not relayed;
- `cache_control` hints are not carried (Cohere has no caching controls); a message's `name` neither.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

from sluicegate import neutral
from sluicegate.errors import BadRequest, SluicegateError, UpstreamError, UpstreamTimeout
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

DOCS = "https://docs.cohere.com/reference/chat"

#: Cohere `finish_reason` (upper case since 2024; older answers are lower case) -> neutral
#: (https://docs.cohere.com/reference/chat, response `finish_reason`)
FINISH_REASONS = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "TOOL_CALL": "tool_calls",
}

#: neutral `tool_choice` strings -> Cohere's (absent means the model decides)
TOOL_CHOICES = {"none": "NONE", "required": "REQUIRED"}

#: neutral keys carried under the same name
SAME_NAME = ("temperature", "seed", "frequency_penalty", "presence_penalty")

#: neutral keys that change nothing in the answer: not sent, nothing lost
IGNORED = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "user",
        "metadata",
        "store",
        "service_tier",
        "prompt_cache_key",
        "safety_identifier",
    }
)

#: neutral keys this translation reads (the rest of a body is refused by name)
HANDLED = frozenset(
    {
        *SAME_NAME,
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "max_tokens",
        "max_completion_tokens",
        "top_p",
        "top_k",
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


class CohereProvider(Provider):
    """Cohere's v2 chat endpoint; the key goes in `Authorization: Bearer`."""

    native_dialect = "cohere"
    translated_endpoints = frozenset({"chat"})
    label = "Cohere"

    def __init__(self, config: ProviderConfig, preset: Preset) -> None:
        super().__init__(config, preset)
        self._chat_url = f"{self.base_url}/v2/chat"

    # ------------------------------------------------------------------------------ HTTP

    def url_for(self, endpoint: str, model: str, stream: bool = False) -> str:
        if endpoint != "chat":
            raise neutral.unsupported(f"The '{endpoint}' endpoint", self.target)
        return self._chat_url  # streaming is the body's `stream` flag

    # ------------------------------------------------------------------------------ request

    def build_request(self, call: Call, chat: dict[str, Any]) -> bytes:
        assert call.route is not None
        for key, value in chat.items():
            if key not in HANDLED and key not in IGNORED and value is not None:
                raise neutral.unsupported(f"The '{key}' parameter", self.target, key)
        out: dict[str, Any] = {
            "model": call.route.upstream_model or call.model_requested,
            "messages": self._messages(chat.get("messages")),
            "stream": bool(call.stream),
        }
        self._refuse_unsupported(chat)
        for key in SAME_NAME:
            if chat.get(key) is not None:
                out[key] = chat[key]
        max_tokens = chat.get("max_completion_tokens", chat.get("max_tokens"))
        if max_tokens is not None:
            out["max_tokens"] = max_tokens
        if chat.get("top_p") is not None:
            out["p"] = chat["top_p"]
        if chat.get("top_k") is not None:
            out["k"] = chat["top_k"]
        stop = chat.get("stop")
        if stop is not None:
            out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        tools = chat.get("tools")
        if tools:
            out["tools"], strict = self._tools(tools)
            if strict:
                out["strict_tools"] = True
        choice = self._tool_choice(chat.get("tool_choice"), tools)
        if choice is not None:
            out["tool_choice"] = choice
        response_format = self._response_format(chat.get("response_format"))
        if response_format is not None:
            out["response_format"] = response_format
        thinking = self._thinking(chat.get("reasoning_effort"), chat.get("thinking_budget"))
        if thinking is not None:
            out["thinking"] = thinking
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
        out: list[dict[str, Any]] = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise BadRequest(f"messages[{i}] must be an object", param=f"messages[{i}]")
            role = m.get("role")
            content = m.get("content")
            if role in ("system", "developer"):
                out.append({"role": "system", "content": self._text(content, "System messages")})
            elif role == "user":
                out.append({"role": "user", "content": self._user_content(content)})
            elif role == "assistant":
                out.append(self._assistant(m))
            elif role == "tool":
                call_id = m.get("tool_call_id")
                if not isinstance(call_id, str) or not call_id:
                    raise BadRequest(f"messages[{i}].tool_call_id is required", param=f"messages[{i}].tool_call_id")
                out.append({"role": "tool", "tool_call_id": call_id, "content": self._text(content, "Tool results")})
            else:
                raise neutral.unsupported(f"Messages with the role {role!r}", self.target, f"messages[{i}].role")
        return out

    def _text(self, content: Any, what: str) -> str:
        """Text of a content that may hold only text parts."""
        if content is None or isinstance(content, str):
            return content or ""
        if isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind != "text":
                    raise neutral.unsupported(f"{what} with {kind or 'non-text'} content", self.target)
        return neutral.text_of(content)

    def _user_content(self, content: Any) -> str | list[dict[str, Any]]:
        if content is None or isinstance(content, str):
            return content or ""
        if not isinstance(content, list):
            raise BadRequest("a message content must be a string or an array of parts")
        parts: list[dict[str, Any]] = []
        images = False
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                parts.append({"type": "text", "text": part.get("text") or ""})
            elif kind == "image_url":
                # v2 vision models take `image_url` parts: a web URL or a base64 data URI
                # (https://docs.cohere.com/docs/image-inputs)
                image = part.get("image_url")
                url = image.get("url") if isinstance(image, dict) else image
                if not isinstance(url, str) or not url:
                    raise BadRequest("an image_url part needs a url")
                entry: dict[str, Any] = {"url": url}
                if isinstance(image, dict) and image.get("detail"):
                    entry["detail"] = image["detail"]
                parts.append({"type": "image_url", "image_url": entry})
                images = True
            else:
                raise neutral.unsupported(f"User messages with {kind or 'unknown'} content", self.target)
        if not images:
            return "".join(p["text"] for p in parts)
        return parts

    def _assistant(self, m: dict[str, Any]) -> dict[str, Any]:
        text = self._text(m.get("content"), "Assistant messages")
        reasoning = m.get("reasoning_content")
        out: dict[str, Any] = {"role": "assistant"}
        calls = m.get("tool_calls")
        if calls:
            out["tool_calls"] = [self._tool_call(tc) for tc in calls]
            if reasoning:
                out["tool_plan"] = reasoning
            if text:
                out["content"] = text
            return out
        if reasoning:
            out["content"] = [{"type": "thinking", "thinking": reasoning}, {"type": "text", "text": text}]
        else:
            out["content"] = text
        return out

    @staticmethod
    def _tool_call(tc: Any) -> dict[str, Any]:
        fn = tc.get("function") if isinstance(tc, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BadRequest("an assistant tool call needs a function name")
        arguments = fn.get("arguments")
        if not isinstance(arguments, str):
            arguments = orjson.dumps(arguments if arguments is not None else {}).decode()
        return {"id": tc.get("id") or "", "type": "function", "function": {"name": fn["name"], "arguments": arguments}}

    def _tools(self, tools: Any) -> tuple[list[dict[str, Any]], bool]:
        out: list[dict[str, Any]] = []
        stricts: set[bool] = set()
        for tool in tools:
            fn = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
                kind = tool.get("type") if isinstance(tool, dict) else None
                raise neutral.unsupported(f"Tools of type {kind!r}", self.target, "tools")
            entry: dict[str, Any] = {"name": fn.get("name")}
            if fn.get("description") is not None:
                entry["description"] = fn["description"]
            entry["parameters"] = fn.get("parameters") or {"type": "object", "properties": {}}
            stricts.add(bool(fn.get("strict")))
            out.append({"type": "function", "function": entry})
        if len(stricts) > 1:
            raise neutral.unsupported("Mixing strict and non-strict tools", self.target, "tools")
        return out, stricts == {True}

    def _tool_choice(self, choice: Any, tools: Any) -> str | None:
        if choice is None or choice == "auto":
            return None
        if isinstance(choice, str) and choice in TOOL_CHOICES:
            return TOOL_CHOICES[choice]
        if isinstance(choice, dict) and choice.get("type") == "function":
            name = (choice.get("function") or {}).get("name")
            names = [t.get("function", {}).get("name") for t in tools or () if isinstance(t, dict)]
            if names == [name]:
                return "REQUIRED"  # the only tool: requiring a call is requiring this one
            raise neutral.unsupported("A tool_choice naming one of several functions", self.target, "tool_choice")
        raise neutral.unsupported(f"tool_choice {choice!r}", self.target, "tool_choice")

    def _response_format(self, fmt: Any) -> dict[str, Any] | None:
        if fmt is None:
            return None
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind == "text":
            return None
        if kind == "json_object":
            return {"type": "json_object"}
        if kind == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema")
            return {"type": "json_object", "json_schema": schema} if schema else {"type": "json_object"}
        raise neutral.unsupported(f"response_format {kind!r}", self.target, "response_format")

    @staticmethod
    def _thinking(effort: Any, budget: Any) -> dict[str, Any] | None:
        if isinstance(budget, int) and not isinstance(budget, bool):
            return {"type": "enabled", "token_budget": budget} if budget > 0 else {"type": "disabled"}
        if effort is None:
            return None
        return {"type": "disabled"} if effort == "none" else {"type": "enabled"}

    # ------------------------------------------------------------------------------ answer

    def parse_response(self, data: Any, call: Call) -> dict[str, Any]:
        message = data.get("message") if isinstance(data, dict) else None
        if not isinstance(message, dict):
            raise UpstreamError(f"provider '{self.name}' answered with a body that is not a Cohere chat response")
        finish = self._finish(data.get("finish_reason"), data.get("error"))
        texts: list[str] = []
        thoughts: list[str] = []
        for item in message.get("content") or ():
            if not isinstance(item, dict):
                continue
            if item.get("type") == "text" and isinstance(item.get("text"), str):
                texts.append(item["text"])
            elif item.get("type") == "thinking" and isinstance(item.get("thinking"), str):
                thoughts.append(item["thinking"])
        plan = message.get("tool_plan")
        if isinstance(plan, str) and plan:
            thoughts.append(plan)
        calls = [
            {
                "id": tc.get("id") or "",
                "type": "function",
                "function": {
                    "name": (tc.get("function") or {}).get("name", ""),
                    "arguments": _arguments((tc.get("function") or {}).get("arguments")),
                },
            }
            for tc in message.get("tool_calls") or ()
            if isinstance(tc, dict)
        ]
        out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
        if thoughts:
            out["reasoning_content"] = "\n\n".join(thoughts)
        if calls:
            out["tool_calls"] = calls
        assert call.route is not None
        model = call.route.upstream_model or call.model_requested or ""
        return neutral.completion(str(data.get("id") or ""), model, out, finish, _usage(data.get("usage")))

    def _finish(self, reason: Any, detail: Any = None) -> str:
        value = reason.upper() if isinstance(reason, str) else "COMPLETE"
        mapped = FINISH_REASONS.get(value)
        if mapped is not None:
            return mapped
        text = detail if isinstance(detail, str) and detail else "no detail"
        if value == "TIMEOUT":
            raise UpstreamTimeout(f"provider '{self.name}' timed out while generating: {text[:300]}")
        if value == "ERROR":
            raise UpstreamError(f"provider '{self.name}' failed while generating: {text[:300]}")
        return "stop"  # a finish reason newer than this code: the answer itself is complete

    def stream_decoder(self, call: Call) -> StreamDecoder:
        assert call.route is not None
        return CohereStreamDecoder(self, call.route.upstream_model or call.model_requested or "")

    # ------------------------------------------------------------------------------ errors

    def error_message(self, body: bytes) -> str:
        # https://docs.cohere.com/reference/errors: `{"message": ...}` (v2 answers add an `id`)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body[:300].decode("utf-8", "replace").strip()
        return json_error_message(data, ("message",), ("data",), ("error",))

    def parse_error(self, status: int, body: bytes, retry_after: float | None, secret: str | None) -> SluicegateError:
        detail = self.error_message(body)
        if secret and detail:
            detail = detail.replace(secret, "[redacted]")
        where = f"provider '{self.name}'"
        if status == 402:
            # The account cannot pay: an operator's problem, not the client's request.
            return UpstreamError(
                f"{where} refused the call for billing reasons (HTTP 402): {detail or 'payment required'}",
                code="upstream_payment_required",
            )
        if status == 498:
            # A deny-listed token in the request or the answer: the request's content is refused.
            return UpstreamError(
                f"{where} rejected the request: {detail or 'blocked token (HTTP 498)'}",
                code="upstream_bad_request",
                status=400,
            )
        if status == 499:
            return UpstreamError(f"{where} cancelled the request (HTTP 499): {detail or 'request cancelled'}")
        if status == 504:
            return UpstreamTimeout(f"{where} timed out (HTTP 504): {detail or 'gateway timeout'}")
        return upstream_error(self.name, status, detail, retry_after, secret)


def _obj(value: Any) -> dict[str, Any]:
    """`value` when it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def _arguments(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value if value is not None else {}).decode()


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _usage(raw: Any) -> dict[str, Any] | None:
    """Cohere `usage` -> neutral: `tokens` counts everything the model read and wrote (what the
    neutral counts mean); `billed_units` only the part billed, used when `tokens` is absent."""
    if not isinstance(raw, dict):
        return None
    tokens = _obj(raw.get("tokens"))
    billed = _obj(raw.get("billed_units"))
    prompt = _int(tokens.get("input_tokens"))
    completion = _int(tokens.get("output_tokens"))
    if prompt is None:
        prompt = _int(billed.get("input_tokens"))
    if completion is None:
        completion = _int(billed.get("output_tokens"))
    if prompt is None and completion is None:
        return None
    return neutral.usage(prompt or 0, completion or 0, cached=_int(raw.get("cached_tokens")))


class CohereStreamDecoder(StreamDecoder):
    """Cohere v2 SSE (https://docs.cohere.com/reference/chat-stream): each `data:` is a JSON event
    whose `type` names it; `message-end` carries the finish reason and usage and ends the stream."""

    def __init__(self, provider: CohereProvider, model: str) -> None:
        self.provider = provider
        self.sse = SSEParser()
        self.done = False
        self.id = ""
        self.model = model
        self.created = int(time.time())
        self.started = False
        self.tools = 0

    def _chunk(self, delta: dict[str, Any] | None = None, finish: str | None = None) -> dict[str, Any]:
        return neutral.chunk(self.id, self.model, self.created, delta, finish)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for name, payload in self.sse.feed(data):
            if self.done:
                break
            if not payload:
                continue
            event = event_json(self.provider.name, payload)
            self._event(event.get("type") or name, event, out)
        return out

    def _event(self, kind: Any, event: dict[str, Any], out: list[dict[str, Any]]) -> None:
        delta = _obj(event.get("delta"))
        message = _obj(delta.get("message"))
        if kind == "message-start":
            self.id = str(event.get("id") or self.id)
            self.started = True
            out.append(self._chunk({"role": "assistant", "content": ""}))
            return
        if not self.started and kind != "message-end":
            # Cohere always opens with message-start; be lenient if it did not.
            self.started = True
            out.append(self._chunk({"role": "assistant", "content": ""}))
        if kind == "content-delta":
            content = _obj(message.get("content"))
            if isinstance(content.get("thinking"), str) and content["thinking"]:
                out.append(self._chunk({"reasoning_content": content["thinking"]}))
            if isinstance(content.get("text"), str) and content["text"]:
                out.append(self._chunk({"content": content["text"]}))
        elif kind == "tool-plan-delta":
            plan = message.get("tool_plan")
            if isinstance(plan, str) and plan:
                out.append(self._chunk({"reasoning_content": plan}))
        elif kind == "tool-call-start":
            tc = _obj(message.get("tool_calls"))
            fn = _obj(tc.get("function"))
            index = self._tool_index(event)
            delta_call = neutral.tool_call_delta(
                index, id_=str(tc.get("id") or ""), name=str(fn.get("name") or ""), arguments=fn.get("arguments") or ""
            )
            out.append(self._chunk({"tool_calls": [delta_call]}))
        elif kind == "tool-call-delta":
            tc = _obj(message.get("tool_calls"))
            fn = _obj(tc.get("function"))
            arguments = fn.get("arguments")
            if isinstance(arguments, str) and arguments:
                at = event.get("index")
                index = at if isinstance(at, int) else max(self.tools - 1, 0)
                out.append(self._chunk({"tool_calls": [neutral.tool_call_delta(index, arguments=arguments)]}))
        elif kind == "message-end":
            finish = self.provider._finish(delta.get("finish_reason"), delta.get("error"))
            out.append(self._chunk(None, finish))
            usage = _usage(delta.get("usage"))
            if usage is not None:
                out.append(neutral.usage_chunk(self.id, self.model, self.created, usage))
            self.done = True
        # content-start/-end, tool-call-end, citation-start/-end, debug: nothing to relay

    def _tool_index(self, event: dict[str, Any]) -> int:
        index = event.get("index")
        if not isinstance(index, int):
            index = self.tools
        self.tools = max(self.tools, index + 1)
        return index


register_provider_type("cohere", CohereProvider, Preset("https://api.cohere.com", docs=DOCS))
