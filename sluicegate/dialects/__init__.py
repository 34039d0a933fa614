"""Client-facing wire formats: each parses requests into a `Call` and renders results and errors.

`request_texts` / `response_texts` give the guardrails every text of a request or answer in the
shape of its endpoint (OpenAI `chat`, `completions`, `embeddings`; Anthropic `messages`,
`count_tokens`; `responses`); translated answers are neutral, so `chat`-shaped. Each dialect
reads its bodies whole except a reviewed list of fields that are not model text
(`sluicegate.dialects.fields`; the lists are in each dialect's `texts` module).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from sluicegate.dialects import anthropic, openai, responses
from sluicegate.dialects.paths import Path

Texts = Callable[[str, dict[str, Any]], list[tuple[Path, str]]]


class RequestTexts(Protocol):
    def __call__(self, endpoint: str, body: dict[str, Any], model: str | None = None) -> list[tuple[Path, str]]: ...


#: (channel, path, text) of one stream event: a channel is one text growing across events
EventTexts = Callable[[dict[str, Any]], list[tuple[str, Path, str]]]

_BY_ENDPOINT: dict[str, tuple[RequestTexts, Texts]] = {
    "chat": (openai.request_texts, openai.response_texts),
    "completions": (openai.request_texts, openai.response_texts),
    "embeddings": (openai.request_texts, openai.response_texts),
    "messages": (anthropic.request_texts, anthropic.response_texts),
    "count_tokens": (anthropic.request_texts, anthropic.response_texts),
    "responses": (responses.request_texts, responses.response_texts),
}


#: the texts of one stream event, per dialect whose streams pass through as sent; OpenAI's
#: chunks are also the neutral chunks of every translated stream
STREAM_EVENT_TEXTS: dict[str, EventTexts] = {
    "openai": openai.chunk_texts,
    "anthropic": anthropic.stream_event_texts,
}


#: the neutral chat body of a request, per endpoint whose body is not one already (the cache keys
#: what the model is asked in one form, whatever the dialect it was asked in)
TO_CHAT: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "messages": anthropic.to_chat,
    "responses": responses.to_chat,
}


def request_texts(endpoint: str, body: dict[str, Any], model: str | None = None) -> list[tuple[Path, str]]:
    """Every text of a request the model will read, with its path in the body.

    `model` is the upstream's name for the model (its encoding decodes token ids; the body's
    `model` when not given). Raises `BadRequest` when token ids in a prompt do not decode (the
    guards could not read them)."""
    pair = _BY_ENDPOINT.get(endpoint)
    return pair[0](endpoint, body, model) if pair is not None else []


def holds_token_ids(endpoint: str, body: dict[str, Any]) -> bool:
    """Whether `request_texts` decodes token ids in this request (OpenAI's completions and
    embeddings take them), which needs the model's encoding."""
    return openai.holds_token_ids(endpoint, body)


def response_texts(endpoint: str, data: dict[str, Any]) -> list[tuple[Path, str]]:
    """Every text of a complete answer, with its path."""
    pair = _BY_ENDPOINT.get(endpoint)
    return pair[1](endpoint, data) if pair is not None else []
