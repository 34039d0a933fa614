"""Cache keys: a digest of everything that shapes an answer, and nothing that does not.

The key is taken from the neutral chat body (the OpenAI chat shape every dialect translates to),
so the same question asked through the OpenAI, Anthropic or Responses API reaches one entry when
it goes to the same target. It holds the scope (who may share the entry), the target (provider,
its address and the upstream model, after routing), the output cap the gateway adds, and the body with what does
not change the answer left out: `stream`, `stream_options`, `user`, `metadata`, `store` and the
like, prompt-cache markers (`cache_control`), null values. Keys are serialised sorted, so key
order and whitespace never matter, and integral floats are written as integers (`0.0` is `0`).

The digest is keyed (SHA-256 of the cache's secret and the material, see `Keyed`): who can read
the keys of a shared store cannot test them against guessed prompts.

The semantic cache partitions its vectors by the same digest taken with the last user turn left
out (`context_key`): a semantic hit needs everything but that turn to be equal.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

#: body keys that never change what the model answers
IGNORED_KEYS = frozenset(
    {"model", "stream", "stream_options", "user", "metadata", "store", "service_tier", "prompt_cache_key",
     "safety_identifier"}
)  # fmt: skip
#: keys dropped wherever they appear: a prompt-cache marker changes the price, not the answer
_MARKERS = frozenset({"cache_control"})
#: stands for the last user turn in a context key
_TURN = "\x00turn"


def canonical(chat: dict[str, Any]) -> dict[str, Any]:
    """The parts of a neutral chat body that shape the answer, in a normal form.

    Messages, the bulk of a body, are copied only where one needs it (a null field, a marker, one
    text part); the rest is normalised whole. orjson sorts every level when the key is digested."""
    out = {}
    for key, value in chat.items():
        if key in IGNORED_KEYS or value is None:
            continue
        if key == "messages" and type(value) is list:
            out[key] = [_message(m) for m in value]
            continue
        if key == "max_completion_tokens":
            key = "max_tokens"
        elif key == "stop" and isinstance(value, str):
            value = [value]
        out[key] = _normal(value)
    return out


def _normal(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items() if v is not None and k not in _MARKERS}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _message(message: Any) -> Any:
    """A message in normal form: no null field or marker, and content that is one text part
    read as that text (`[{"type": "text", ...}]` is the string it holds: both dialects say the
    same thing both ways)."""
    if type(message) is not dict:
        return message
    if None in message.values() or "cache_control" in message:
        message = {k: v for k, v in message.items() if v is not None and k not in _MARKERS}
    content = message.get("content")
    if type(content) is list:
        if len(content) == 1:
            part = content[0]
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                if part.keys() <= {"type", "text", "cache_control"}:
                    return {**message, "content": part["text"]}
        if any(isinstance(part, dict) and "cache_control" in part for part in content):
            return {**message, "content": _normal(content)}
    return message


class Keyed:
    """SHA-256 of the cache's secret, ready to take a key's material: a key is the digest of the
    secret followed by the material, computed from a copy of this state (the secret is not hashed
    again per call). The material's format is fixed (two JSON texts), so a digest's extension by
    what follows it names nothing the gateway would ever look up."""

    __slots__ = ("state",)

    def __init__(self, secret: bytes) -> None:
        self.state = hashlib.sha256(secret)

    def digest(self, head: list[Any], body: dict[str, Any]) -> str:
        """The digest (hex) of a key's head (version, scope, target, cap ...) and body, each
        serialised on its own (the head is a JSON array, so the two cannot run into each other)."""
        mac = self.state.copy()
        mac.update(orjson.dumps(head))
        mac.update(b"\n")
        mac.update(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
        return mac.hexdigest()


def exact_key(keyed: Keyed, scope: str, target: tuple[str, ...], body: dict[str, Any], cap: int | None) -> str:
    """The key of an entry: scope, target, the canonical body and the gateway's output cap."""
    return keyed.digest([1, scope, target, cap], body)


def last_turn(body: dict[str, Any]) -> str | None:
    """The text of the last message when it is the user's and only text (None otherwise: a
    tool result, an image, an assistant prefill is not compared by meaning)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return None
    content = last.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                return None
            texts.append(part["text"])
        return "\n".join(texts)
    return None


def context_key(
    keyed: Keyed, scope: str, target: tuple[str, ...], body: dict[str, Any], cap: int | None, model_id: str
) -> str:
    """The semantic partition of a call: its exact key's material with the last user turn left
    out, and the embedding model (vectors of different models are never compared)."""
    messages = list(body["messages"])
    messages[-1] = {**messages[-1], "content": _TURN}
    return keyed.digest([1, scope, target, cap, model_id], {**body, "messages": messages})
