"""AWS Bedrock through its model-neutral Converse API (`converse` and `converse-stream`).

Converse (https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html) and
ConverseStream (https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ConverseStream.html)
serve every Bedrock chat model with one request shape, so this provider only translates: no client
dialect is Bedrock's own. The upstream model of a route is the Bedrock model id or inference
profile id (`anthropic.claude-3-5-sonnet-20240620-v1:0`, `us.anthropic.claude-sonnet-4-...`).

Credentials: the provider's `api_key` reference holds one of
- `ACCESS_KEY_ID:SECRET_ACCESS_KEY` or `ACCESS_KEY_ID:SECRET_ACCESS_KEY:SESSION_TOKEN`, or a JSON
  object `{"access_key_id", "secret_access_key", "session_token"?}`: every request is signed with
  AWS Signature Version 4 (service `bedrock`, the region of `options.region`);
- anything else: a Bedrock API key (https://docs.aws.amazon.com/bedrock/latest/userguide/api-keys.html),
  sent as `Authorization: Bearer`.

botocore (`pip install 'sluicegate[aws]'`) signs the requests and parses the AWS event-stream
framing of streamed answers; it is imported on first use, so the gateway runs without it when no
Bedrock provider is configured.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import secrets as _secrets
import time
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator
from yarl import URL

from sluicegate import neutral
from sluicegate.errors import (
    BadRequest,
    RateLimited,
    SluicegateError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from sluicegate.providers.base import Preset, Provider, StreamDecoder, json_error_message, register_provider_type

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.config.model import ProviderConfig

TARGET = "AWS Bedrock (Converse)"
BOTOCORE_MISSING = (
    "the bedrock provider type needs botocore (AWS request signing and event-stream decoding): "
    "install it with `pip install 'sluicegate[aws]'`"
)
EVENT_STREAM = "application/vnd.amazon.eventstream"
#: an AWS access key id (https://docs.aws.amazon.com/STS/latest/APIReference/API_Credentials.html)
_KEY_ID = re.compile(r"\w{1,128}", re.ASCII)


def botocore_available() -> bool:
    return importlib.util.find_spec("botocore") is not None


class BedrockOptions(BaseModel):
    """`options:` of a `bedrock` provider."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the AWS region requests are signed for (and, without `base_url`, sent to)
    region: str = Field("us-east-1", pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$")

    @model_validator(mode="after")
    def _needs_botocore(self) -> BedrockOptions:
        if not botocore_available():
            raise ValueError(BOTOCORE_MISSING)
        return self


def endpoint_for(region: str) -> str:
    """The Bedrock runtime endpoint of a region (https://docs.aws.amazon.com/general/latest/gr/bedrock.html)."""
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://bedrock-runtime.{region}.{suffix}"


# --------------------------------------------------------------------------------------------- credentials


class _QuietSigner(logging.Filter):
    """botocore's signer logs the canonical request at DEBUG, session token included: never that."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


_QUIET = _QuietSigner()


class _Signer:
    """SigV4 for one set of AWS credentials (botocore's signer, built once)."""

    __slots__ = ("auth", "request_cls")

    def __init__(self, access_key: str, secret_key: str, token: str | None, region: str) -> None:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        signer_log = logging.getLogger("botocore.auth")
        if _QUIET not in signer_log.filters:
            signer_log.addFilter(_QUIET)
        self.auth = SigV4Auth(Credentials(access_key, secret_key, token), "bedrock", region)
        self.request_cls = AWSRequest

    def headers(self, url: str, body: bytes, base: dict[str, str]) -> dict[str, str]:
        request = self.request_cls(method="POST", url=url, data=body, headers=dict(base))
        self.auth.add_auth(request)
        return dict(request.headers.items())


def parse_credentials(secret: str) -> tuple[str, str, str | None] | None:
    """(access key id, secret access key, session token) of a SigV4 secret; None for an API key.

    Raises `ValueError` (naming no part of the secret) for a JSON object that lacks a field."""
    text = secret.strip()
    if text.startswith("{"):
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise ValueError("its AWS credentials are not valid JSON") from None
        if not isinstance(data, dict):
            raise ValueError("its AWS credentials are not a JSON object")
        key_id = data.get("access_key_id", data.get("AccessKeyId"))
        secret_key = data.get("secret_access_key", data.get("SecretAccessKey"))
        token = data.get("session_token", data.get("SessionToken"))
        if not isinstance(key_id, str) or not key_id or not isinstance(secret_key, str) or not secret_key:
            raise ValueError("its AWS credentials JSON needs string fields access_key_id and secret_access_key")
        if token is not None and not isinstance(token, str):
            raise ValueError("its AWS credentials JSON has a session_token that is not a string")
        return key_id, secret_key, token or None
    parts = text.split(":", 2)
    # An access key id is word characters (AKIA..., ASIA...); Bedrock API keys never hold a ':'.
    if len(parts) >= 2 and parts[1] and _KEY_ID.fullmatch(parts[0]):
        return parts[0], parts[1], (parts[2] or None) if len(parts) == 3 else None
    return None


# --------------------------------------------------------------------------------------------- provider

#: Converse stop reasons (https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html#API_runtime_Converse_ResponseSyntax)
FINISH: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
    "malformed_model_output": "stop",
    "malformed_tool_use": "stop",
}

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


class BedrockProvider(Provider):
    """AWS Bedrock's Converse API: translated calls only, SigV4 or API-key auth."""

    Options: ClassVar[type[BedrockOptions]] = BedrockOptions
    native_dialect = "bedrock"
    label = "AWS Bedrock"

    def __init__(self, config: ProviderConfig, preset: Preset) -> None:
        super().__init__(config, preset)
        self.options = BedrockOptions.model_validate(config.options)
        if not config.base_url:
            self.base_url = endpoint_for(self.options.region)
        self._urls: dict[tuple[str, bool], str] = {}
        self._extra_headers = dict(config.headers)
        # secret -> a signer (SigV4) or the headers of an API key; a handful of distinct secrets at most
        self._auth: dict[str, _Signer | tuple[dict[str, str], dict[str, str]]] = {}
        self._base = (
            {"Content-Type": "application/json", "Accept": "application/json", **self._extra_headers},
            {"Content-Type": "application/json", "Accept": EVENT_STREAM, **self._extra_headers},
        )

    # ----------------------------------------------------------------------------------------- request

    def url_for(self, endpoint: str, model: str, stream: bool = False) -> str:
        key = (model, stream)
        url = self._urls.get(key)
        if url is None:
            if endpoint != "chat":
                raise neutral.unsupported(f"The '{endpoint}' endpoint", TARGET)
            raw = f"{self.base_url}/model/{quote(model, safe='')}/{'converse-stream' if stream else 'converse'}"
            # The URL exactly as the HTTP client will send it (yarl keeps ':' unescaped in a path):
            # SigV4 signs the path that goes on the wire.
            url = str(URL(raw))
            if len(self._urls) > 10_000:
                self._urls.clear()
            self._urls[key] = url
        return url

    def request_headers(self, call: Call, secret: str | None, url: str, body: bytes) -> dict[str, str]:
        base = self._base[1 if call.stream else 0]
        if not secret:
            return base
        auth = self._auth.get(secret)
        if auth is None:
            auth = self._credentials(secret)
        if isinstance(auth, _Signer):
            return auth.headers(url, body, base)
        return auth[1 if call.stream else 0]

    def _credentials(self, secret: str) -> _Signer | tuple[dict[str, str], dict[str, str]]:
        try:
            creds = parse_credentials(secret)
        except ValueError as exc:
            raise UpstreamError(f"provider '{self.name}' cannot use its credential: {exc}") from None
        auth: _Signer | tuple[dict[str, str], dict[str, str]]
        if creds is None:
            bearer = f"Bearer {secret.strip()}"
            auth = ({**self._base[0], "Authorization": bearer}, {**self._base[1], "Authorization": bearer})
        else:
            if not botocore_available():
                raise UpstreamError(f"provider '{self.name}': {BOTOCORE_MISSING}")
            auth = _Signer(*creds, self.options.region)
        if len(self._auth) > 64:
            self._auth.clear()
        self._auth[secret] = auth
        return auth

    def build_request(self, call: Call, chat: dict[str, Any]) -> bytes:
        return orjson.dumps(converse_request(chat))

    # ----------------------------------------------------------------------------------------- answers

    def parse_response(self, data: Any, call: Call) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise UpstreamError(f"provider '{self.name}' answered with a body that is not a Converse response")
        output = data.get("output")
        message = output.get("message") if isinstance(output, dict) else None
        if not isinstance(message, dict) or not isinstance(message.get("content"), list):
            raise UpstreamError(f"provider '{self.name}' answered with a body that is not a Converse response")
        texts: list[str] = []
        reasoning: list[str] = []
        signature: str | None = None
        tool_calls: list[dict[str, Any]] = []
        for block in message["content"]:
            if not isinstance(block, dict):
                continue
            if isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif isinstance(block.get("toolUse"), dict):
                use = block["toolUse"]
                tool_calls.append(
                    {
                        "id": use.get("toolUseId") or "",
                        "type": "function",
                        "function": {
                            "name": use.get("name") or "",
                            "arguments": orjson.dumps(use.get("input", {})).decode(),
                        },
                    }
                )
            elif isinstance(block.get("reasoningContent"), dict):
                text = block["reasoningContent"].get("reasoningText")
                if isinstance(text, dict):
                    if isinstance(text.get("text"), str):
                        reasoning.append(text["text"])
                    if isinstance(text.get("signature"), str):
                        signature = text["signature"]
        out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not tool_calls else None}
        if reasoning:
            out["reasoning_content"] = "".join(reasoning)
        if signature is not None:
            out["reasoning_signature"] = signature
        if tool_calls:
            out["tool_calls"] = tool_calls
        stop = data.get("stopReason")
        finish = FINISH.get(stop, "stop") if isinstance(stop, str) else "stop"
        assert call.route is not None
        model = call.route.upstream_model or call.model_requested or ""
        return neutral.completion(new_id(), model, out, finish, converse_usage(data.get("usage")))

    def stream_decoder(self, call: Call) -> StreamDecoder:
        assert call.route is not None
        if not botocore_available():
            raise UpstreamError(f"provider '{self.name}': {BOTOCORE_MISSING}")
        return BedrockStreamDecoder(self.name, call.route.upstream_model or call.model_requested or "")

    def error_message(self, body: bytes) -> str:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body[:300].decode("utf-8", "replace").strip()
        return json_error_message(data, ("message",), ("Message",))

    def parse_error(self, status: int, body: bytes, retry_after: float | None, secret: str | None) -> SluicegateError:
        # 408 ModelTimeoutException and 424 ModelErrorException are the model failing, not the
        # client's request (https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html#API_runtime_Converse_Errors).
        if status == 408:
            return UpstreamTimeout(f"provider '{self.name}' timed out: {self.error_message(body) or 'model timeout'}")
        if status == 424:
            return UpstreamError(f"provider '{self.name}' failed: {self.error_message(body) or 'model error'}")
        return super().parse_error(status, body, retry_after, secret)


def new_id() -> str:
    """Converse answers carry no id: one for the neutral completion."""
    return "chatcmpl-" + _secrets.token_hex(12)


def converse_usage(value: Any) -> dict[str, Any] | None:
    """Neutral usage of a Converse TokenUsage. `inputTokens` excludes the tokens read from or
    written to the prompt cache (reported beside it), so the neutral prompt count adds them."""
    if not isinstance(value, dict):
        return None
    read = value.get("cacheReadInputTokens")
    write = value.get("cacheWriteInputTokens")
    prompt = _int(value.get("inputTokens")) + _int(read) + _int(write)
    return neutral.usage(
        prompt,
        _int(value.get("outputTokens")),
        cached=_int(read) if read is not None else None,
        cache_creation=_int(write) if write is not None else None,
    )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# --------------------------------------------------------------------------------------------- chat -> Converse


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
    """A message's `cache_control` marks the end of a cached prefix: Converse's cachePoint block."""
    if item.get("cache_control") and blocks:
        blocks.append({"cachePoint": {"type": "default"}})


def _blocks(content: Any, i: int, *, system: bool = False) -> list[dict[str, Any]]:
    """Converse content blocks of a user or system message content."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}]
    if not isinstance(content, list):
        raise BadRequest(f"messages[{i}].content must be a string or an array", param=f"messages[{i}].content")
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
        if part.get("cache_control"):
            out.append({"cachePoint": {"type": "default"}})
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
        raise BadRequest(f"messages[{i}].content must be a string or an array", param=f"messages[{i}].content")
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
    if message.get("cache_control") and out:
        out.append({"cachePoint": {"type": "default"}})
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
        raise BadRequest(f"messages[{i}].content must be a string or an array", param=f"messages[{i}].content")
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


# --------------------------------------------------------------------------------------------- stream


class BedrockStreamDecoder(StreamDecoder):
    """ConverseStream: AWS event-stream frames (binary, CRC-checked), one JSON event each
    (https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ConverseStreamOutput.html).

    messageStart -> the role chunk; contentBlockStart(toolUse) -> a tool call's id and name;
    contentBlockDelta -> text, tool input JSON or reasoning; messageStop -> the finish chunk;
    metadata -> the usage chunk, and the end of the stream."""

    def __init__(self, provider: str, model: str) -> None:
        from botocore.eventstream import EventStreamBuffer

        self.provider = provider
        self.model = model
        self.id = new_id()
        self.created = int(time.time())
        self.buffer = EventStreamBuffer()
        self.done = False
        #: contentBlockIndex -> index of the tool call among the answer's tool calls
        self.tools: dict[int, int] = {}

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        from botocore.eventstream import ParserError

        self.buffer.add_data(data)
        out: list[dict[str, Any]] = []
        try:
            for message in self.buffer:
                self._message(message.headers, message.payload, out)
        except ParserError:
            raise UpstreamError(f"provider '{self.provider}' sent a corrupted event-stream frame") from None
        return out

    def _message(self, headers: dict[str, Any], payload: bytes, out: list[dict[str, Any]]) -> None:
        kind = headers.get(":message-type")
        if kind == "exception":
            raise self._exception(str(headers.get(":exception-type") or ""), payload)
        if kind == "error":
            code = headers.get(":error-code") or "error"
            detail = str(headers.get(":error-message") or "")[:1000]
            raise UpstreamError(f"provider '{self.provider}' reported an error in the stream: {code}: {detail}")
        if kind != "event":
            return
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"provider '{self.provider}' sent a stream event that is not JSON") from None
        if not isinstance(event, dict):
            raise UpstreamError(f"provider '{self.provider}' sent a stream event that is not a JSON object")
        name = headers.get(":event-type")
        if name == "contentBlockDelta":
            self._delta(event, out)
        elif name == "messageStart":
            out.append(self._chunk({"role": event.get("role") or "assistant", "content": ""}))
        elif name == "contentBlockStart":
            start = event.get("start")
            use = start.get("toolUse") if isinstance(start, dict) else None
            if isinstance(use, dict):
                index = self._tool_index(event)
                call = neutral.tool_call_delta(
                    index, id_=str(use.get("toolUseId") or ""), name=str(use.get("name") or ""), arguments=""
                )
                out.append(self._chunk({"tool_calls": [call]}))
        elif name == "messageStop":
            stop = event.get("stopReason")
            finish = FINISH.get(stop, "stop") if isinstance(stop, str) else "stop"
            out.append(neutral.chunk(self.id, self.model, self.created, {}, finish))
        elif name == "metadata":
            usage = converse_usage(event.get("usage"))
            if usage is not None:
                out.append(neutral.usage_chunk(self.id, self.model, self.created, usage))
            self.done = True
        # contentBlockStop and events this decoder does not know carry nothing neutral

    def _delta(self, event: dict[str, Any], out: list[dict[str, Any]]) -> None:
        delta = event.get("delta")
        if not isinstance(delta, dict):
            return
        if isinstance(delta.get("text"), str):
            out.append(self._chunk({"content": delta["text"]}))
        elif isinstance(delta.get("toolUse"), dict):
            arguments = delta["toolUse"].get("input")
            if isinstance(arguments, str):
                call = neutral.tool_call_delta(self._tool_index(event), arguments=arguments)
                out.append(self._chunk({"tool_calls": [call]}))
        elif isinstance(delta.get("reasoningContent"), dict):
            reasoning = delta["reasoningContent"]
            if isinstance(reasoning.get("text"), str):
                out.append(self._chunk({"reasoning_content": reasoning["text"]}))
            if isinstance(reasoning.get("signature"), str):
                out.append(self._chunk({"reasoning_signature": reasoning["signature"]}))

    def _tool_index(self, event: dict[str, Any]) -> int:
        block = event.get("contentBlockIndex")
        key = block if isinstance(block, int) else -1
        index = self.tools.get(key)
        if index is None:
            index = self.tools[key] = len(self.tools)
        return index

    def _chunk(self, delta: dict[str, Any]) -> dict[str, Any]:
        return neutral.chunk(self.id, self.model, self.created, delta)

    def _exception(self, kind: str, payload: bytes) -> SluicegateError:
        try:
            detail = json_error_message(orjson.loads(payload), ("message",), ("Message",))
        except orjson.JSONDecodeError:
            detail = payload[:300].decode("utf-8", "replace")
        where = f"provider '{self.provider}'"
        if kind == "throttlingException":
            return RateLimited(
                f"{where} is rate limiting: {detail or 'too many requests'}", code="upstream_rate_limited"
            )
        if kind == "serviceUnavailableException":
            return UpstreamUnavailable(f"{where} is unavailable: {detail or 'service unavailable'}")
        return UpstreamError(f"{where} reported an error in the stream ({kind or 'exception'}): {detail}")


register_provider_type(
    "bedrock",
    BedrockProvider,
    Preset(
        endpoint_for("us-east-1"),
        docs="https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html",
    ),
)
