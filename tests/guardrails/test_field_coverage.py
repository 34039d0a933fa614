"""Every field the official SDKs can send or receive is either read by the guards or on a reviewed
list of fields that are not text (with its reason). Bodies are built from the SDKs' own types
(`sdk_shapes`), a unique marker in every string and every dictionary key: when an SDK release
adds a field, it is read (the walk reads what it does not know) or this test says where it is
left out. An exclusion that hides a marker must be one of the listed patterns."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic.types as at
import openai.types as ot
import openai.types.chat as oc
import pytest
from anthropic.types import message_count_tokens_params, message_create_params
from openai.types import completion_create_params, embedding_create_params
from openai.types.chat import completion_create_params as chat_create_params
from openai.types.responses import Response, response_create_params

from sluicegate import dialects
from sluicegate.dialects import openai_texts
from sluicegate.dialects.anthropic import texts as anthropic_texts
from sluicegate.dialects.fields import Fields
from sluicegate.dialects.paths import JSON, USER, Key, Path, TokenIds
from sluicegate.dialects.responses import texts as responses_texts
from tests.guardrails import field_docs, sdk_shapes

#: (endpoint, the SDK's request params type, the dialect's reading of it)
REQUESTS = [
    ("chat", chat_create_params.CompletionCreateParamsBase, openai_texts.CHAT_REQUEST),
    ("completions", completion_create_params.CompletionCreateParamsBase, openai_texts.COMPLETIONS_REQUEST),
    ("embeddings", embedding_create_params.EmbeddingCreateParams, openai_texts.EMBEDDINGS_REQUEST),
    ("responses", response_create_params.ResponseCreateParamsBase, responses_texts.REQUEST),
    ("messages", message_create_params.MessageCreateParamsBase, anthropic_texts.REQUEST),
    ("count_tokens", message_count_tokens_params.MessageCountTokensParams, anthropic_texts.REQUEST),
]

#: (name, the SDK's answer or stream event model, the reading of it, what the gateway calls)
ANSWERS: list[tuple[str, Any, Fields, Callable[[dict[str, Any]], list[Any]]]] = [
    ("chat", oc.ChatCompletion, openai_texts.ANSWER, lambda d: dialects.response_texts("chat", d)),
    ("completions", ot.Completion, openai_texts.ANSWER, lambda d: dialects.response_texts("completions", d)),
    ("chat-chunk", oc.ChatCompletionChunk, openai_texts.CHUNK, openai_texts.chunk_texts),
    ("completions-chunk", ot.Completion, openai_texts.CHUNK, openai_texts.chunk_texts),
    ("messages", at.Message, anthropic_texts.ANSWER, lambda d: dialects.response_texts("messages", d)),
    ("messages-event", at.RawMessageStreamEvent, anthropic_texts.EVENT, anthropic_texts.stream_event_texts),
    ("responses", Response, responses_texts.ANSWER, lambda d: dialects.response_texts("responses", d)),
]


def _plain(path: Path) -> tuple[Any, ...]:
    """A walk's path as body steps only (markers of keys, JSON text and token ids dropped)."""
    out: list[Any] = []
    for step in path:
        if step is USER or step is JSON or isinstance(step, TokenIds):
            continue
        out.append(step.name if isinstance(step, Key) else step)
    return tuple(out)


def unaccounted(body: dict[str, Any], fields: Fields, texts: list[str], **kwargs: Any) -> set[str]:
    """Shapes of markers in `body` that no text holds and no listed exclusion covers."""
    skipped: list[tuple[Path, str]] = []
    walked = fields.texts(body, skipped=skipped, **kwargs)
    assert [t for _, t in walked] == texts, "the dialect's extractor and its field list disagree"
    excluded = [_plain(path) for path, _ in skipped]
    missing = set()
    for marker, path, is_key in sdk_shapes.markers(body):
        if any(marker in text for text in texts):
            continue
        if any(path[: len(prefix)] == prefix for prefix in excluded):
            continue
        missing.add(sdk_shapes.shape(path) + (" (key)" if is_key else ""))
    return missing


@pytest.mark.parametrize(("endpoint", "params", "fields"), REQUESTS, ids=[r[0] for r in REQUESTS])
def test_every_request_field_is_read_or_listed(endpoint: str, params: Any, fields: Fields) -> None:
    bodies = sdk_shapes.bodies(params)
    missing: set[str] = set()
    n_markers = 0
    for body in bodies:
        texts = [text for _, text in dialects.request_texts(endpoint, body)]
        missing |= unaccounted(body, fields, texts, model=body.get("model"))
        n_markers += sum(1 for _ in sdk_shapes.markers(body))
    assert n_markers > 3, "the SDK type yielded no fields: the walk over its types is broken"
    assert not missing, f"{endpoint}: fields neither read nor on the reviewed list: {sorted(missing)}"


@pytest.mark.parametrize(("name", "model", "fields", "extract"), ANSWERS, ids=[a[0] for a in ANSWERS])
def test_every_answer_field_is_read_or_listed(
    name: str, model: Any, fields: Fields, extract: Callable[[dict[str, Any]], list[Any]]
) -> None:
    missing: set[str] = set()
    for body in sdk_shapes.bodies(model):
        texts = [item[-1] for item in extract(body)]
        missing |= unaccounted(body, fields, texts)
    assert not missing, f"{name}: fields neither read nor on the reviewed list: {sorted(missing)}"


# What the lists leave out is what they say: the texts a model reads are never among them.
MUST_READ = {
    "chat": [
        "messages.*.content", "messages.*.content.*.text", "messages.*.name", "messages.*.refusal",
        "messages.*.tool_calls.*.function.arguments", "messages.*.tool_calls.*.function.name",
        "messages.*.function_call.arguments", "messages.*.tool_calls.*.custom.input",
        "messages.*.content.*.file.filename", "tools.*.function.description", "tools.*.function.parameters.*",
        "tools.*.function.parameters.* (key)", "response_format.json_schema.schema.*",
        "response_format.json_schema.schema.* (key)", "response_format.json_schema.description",
        "prediction.content", "prediction.content.*.text", "tool_choice.function.name",
        "tools.*.custom.format.grammar.definition",
    ],
    "responses": [
        "instructions", "input", "input.*.content", "input.*.content.*.text", "input.*.arguments",
        "input.*.output", "input.*.summary.*.text", "tools.*.parameters.*", "tools.*.parameters.* (key)",
        "text.format.schema.*", "text.format.schema.* (key)", "text.format.description", "prompt.variables.*",
    ],
    "messages": [
        "system", "system.*.text", "messages.*.content", "messages.*.content.*.text",
        "messages.*.content.*.thinking", "messages.*.content.*.input.*", "messages.*.content.*.input.* (key)",
        "messages.*.content.*.content", "messages.*.content.*.content.*.text", "messages.*.content.*.source.data",
        "messages.*.content.*.title", "messages.*.content.*.context", "tools.*.input_schema.*",
        "tools.*.input_schema.* (key)", "tools.*.description", "output_config.format.schema.*",
        "messages.*.content.*.citations.*.cited_text",
    ],
}  # fmt: skip


@pytest.mark.parametrize("endpoint", list(MUST_READ))
def test_text_fields_are_read(endpoint: str) -> None:
    params = next(p for e, p, _ in REQUESTS if e == endpoint)
    read: set[str] = set()
    for body in sdk_shapes.bodies(params):
        texts = [text for _, text in dialects.request_texts(endpoint, body)]
        for marker, path, is_key in sdk_shapes.markers(body):
            if any(marker in text for text in texts):
                read.add(sdk_shapes.shape(path) + (" (key)" if is_key else ""))
    assert not set(MUST_READ[endpoint]) - read


def test_token_id_prompts_are_read_as_text() -> None:
    """A completions prompt of token ids (or lists of them) is read as the text it stands for."""
    from sluicegate import tokens

    ids = tokens.encode_ids("Project Nightingale", "o200k_base")
    body = {"model": "gpt-4o-mini", "prompt": ids}
    assert [t for _, t in dialects.request_texts("completions", body)] == ["Project Nightingale"]
    body = {"model": "gpt-4o-mini", "prompt": [ids, ids[:1]]}
    assert [t for _, t in dialects.request_texts("completions", body)] == ["Project Nightingale", "Project"]
    cl = tokens.encode_ids("Project Nightingale", "cl100k_base")
    body = {"model": "text-embedding-3-small", "input": cl}
    assert [t for _, t in dialects.request_texts("embeddings", body)] == ["Project Nightingale"]


def _found(texts: list[str], body: Any) -> set[str]:
    return {m for m, _, _ in sdk_shapes.markers(body) if any(m in t for t in texts)}


def _chunk_of(completion: dict[str, Any]) -> dict[str, Any]:
    """The same answer as one stream chunk: each choice's message becomes its delta."""
    chunk = {k: v for k, v in completion.items() if k != "choices"}
    chunk["object"] = "chat.completion.chunk"
    choices = []
    for i, choice in enumerate(completion.get("choices") or ()):
        delta = dict(choice.get("message") or {})
        if isinstance(delta.get("tool_calls"), list):
            delta["tool_calls"] = [{**call, "index": k} for k, call in enumerate(delta["tool_calls"])]
        text = {"text": choice["text"]} if "text" in choice else {}
        choices.append({**text, "index": i, "delta": delta, "finish_reason": choice.get("finish_reason")})
    chunk["choices"] = choices
    return chunk


@pytest.mark.parametrize("model", [oc.ChatCompletion, ot.Completion], ids=["chat", "completions"])
def test_stream_reads_what_the_json_answer_reads(model: Any) -> None:
    """Every text guards read in a JSON answer, they read in the same answer streamed."""
    for body in sdk_shapes.bodies(model):
        json_found = _found([t for _, t in dialects.response_texts("chat", body)], body)
        chunk = _chunk_of(body)
        stream_found = _found([t for _, _, t in openai_texts.chunk_texts(chunk)], chunk)
        assert json_found <= stream_found, sorted(json_found - stream_found)


def test_anthropic_stream_reads_what_the_message_reads() -> None:
    """Every text guards read in a message, they read in its stream: whole blocks given in
    `content_block_start` (a tool's name and input, a server tool's result) included."""
    for body in sdk_shapes.bodies(at.Message):
        json_found = _found([t for _, t in dialects.response_texts("messages", body)], body)
        events = [{"type": "message_start", "message": {**body, "content": []}}]
        events += [
            {"type": "content_block_start", "index": i, "content_block": block}
            for i, block in enumerate(body.get("content") or ())
        ]
        stream_found: set[str] = set()
        for event in events:
            stream_found |= _found([t for _, _, t in anthropic_texts.stream_event_texts(event)], event)
        assert json_found <= stream_found, sorted(json_found - stream_found)


def test_the_docs_list_what_the_code_leaves_out() -> None:
    """docs/guardrails-fields.md shows the lists as they are (regenerate it with
    `python -m tests.guardrails.field_docs`)."""
    page = field_docs.PAGE.read_text()
    assert field_docs.page_with(field_docs.render(), page) == page
