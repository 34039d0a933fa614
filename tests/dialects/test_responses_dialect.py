"""The OpenAI Responses dialect: parsing, translation to neutral chat, rendering back (JSON and stream).

Rendered answers and stream events are checked against the installed official `openai` SDK's own
models (`Response`, the `ResponseStreamEvent` union) and its stream accumulator.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest
from openai._types import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from sluicegate import neutral
from sluicegate.call import Call
from sluicegate.dialects import responses as rd
from sluicegate.dialects.openai import set_path
from sluicegate.errors import BadRequest, UpstreamError
from sluicegate.testing import FakeUpstream, Reply, serve_in_thread
from tests.conftest import RunningGateway, assert_openai_error

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def make_call(body: dict[str, Any]) -> Call:
    call = Call("req_abc123", "responses", None, {}, dialect="responses")  # type: ignore[arg-type]
    rd.parse_responses(call, body)
    call.body = body
    return call


def chat_of(body: dict[str, Any]) -> dict[str, Any]:
    make_call(body)
    return rd.to_chat(body)


def refused(body: dict[str, Any], through: str = "parse") -> BadRequest:
    with pytest.raises(BadRequest) as info:
        if through == "parse":
            make_call(body)
        else:
            chat_of(body)
    assert info.value.status == 400
    return info.value


# -- parsing --------------------------------------------------------------------------------------


def test_parse_fills_the_call() -> None:
    call = make_call({"model": "m", "input": "hi", "stream": True})
    assert call.model_requested == "m" and call.stream is True
    assert make_call({"model": "m", "input": "hi"}).stream is False


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"input": "hi"}, "model", "missing_required_parameter"),
        ({"model": "", "input": "hi"}, "model", "invalid_type"),
        ({"model": "m"}, "input", "missing_required_parameter"),
        ({"model": "m", "input": 3}, "input", "invalid_type"),
        ({"model": "m", "input": []}, "input", "invalid_value"),
        ({"model": "m", "input": ["x"]}, "input[0]", "invalid_type"),
        ({"model": "m", "input": [{"role": "robot", "content": "x"}]}, "input[0].role", "invalid_value"),
        ({"model": "m", "input": [{"role": "user", "content": 5}]}, "input[0].content", "invalid_type"),
        ({"model": "m", "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id",
         "invalid_type"),
        ({"model": "m", "input": [{"type": "function_call_output", "call_id": "c", "output": 1}]}, "input[0].output",
         "invalid_type"),
        ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image"}]}]},
         "input[0].content[0].image_url", "missing_required_parameter"),
        ({"model": "m", "input": "hi", "stream": "yes"}, "stream", "invalid_type"),
        ({"model": "m", "input": "hi", "max_output_tokens": 0}, "max_output_tokens", "invalid_value"),
        ({"model": "m", "input": "hi", "max_output_tokens": 1.5}, "max_output_tokens", "invalid_type"),
        ({"model": "m", "input": "hi", "temperature": 3}, "temperature", "invalid_value"),
        ({"model": "m", "input": "hi", "top_p": "1"}, "top_p", "invalid_type"),
        ({"model": "m", "input": "hi", "tools": {}}, "tools", "invalid_type"),
        ({"model": "m", "input": "hi", "tools": [{"type": "function"}]}, "tools[0].name", "missing_required_parameter"),
        ({"model": "m", "input": "hi", "tool_choice": "sometimes"}, "tool_choice", "invalid_value"),
        ({"model": "m", "input": "hi", "text": {"format": {"type": "yaml"}}}, "text.format.type", "invalid_value"),
        ({"model": "m", "input": "hi", "text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name",
         "missing_required_parameter"),
        ({"model": "m", "input": "hi", "reasoning": {"effort": "extreme"}}, "reasoning.effort", "invalid_value"),
        ({"model": "m", "input": "hi", "parallel_tool_calls": 1}, "parallel_tool_calls", "invalid_type"),
        ({"model": "m", "input": "hi", "metadata": {"k": 1}}, "metadata", "invalid_value"),
        ({"model": "m", "input": "hi", "store": "no"}, "store", "invalid_type"),
        ({"model": "m", "input": "hi", "include": ["everything"]}, "include[0]", "invalid_value"),
        ({"model": "m", "input": "hi", "truncation": "middle"}, "truncation", "invalid_value"),
        ({"model": "m", "input": "hi", "frobnicate": True}, "frobnicate", "unknown_parameter"),
    ],
)  # fmt: skip
def test_parse_rejects_malformed_bodies(body: dict[str, Any], param: str, code: str) -> None:
    error = refused(body)
    assert error.param == param and error.code == code, (error.param, error.code, error.message)
    assert param.split("[")[0].split(".")[0] in error.message


@pytest.mark.parametrize(
    ("extra", "feature"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"conversation": {"id": "conv_1"}}, "conversation"),
        ({"background": True}, "background"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"tools": [{"type": "web_search"}]}, "web_search"),
        ({"tools": [{"type": "web_search_preview"}]}, "web_search_preview"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["vs"]}]}, "file_search"),
        ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "code_interpreter"),
        ({"tools": [{"type": "computer_use_preview"}]}, "computer_use_preview"),
        ({"tools": [{"type": "image_generation"}]}, "image_generation"),
        ({"tools": [{"type": "mcp", "server_label": "x"}]}, "mcp"),
        ({"tools": [{"type": "local_shell"}]}, "local_shell"),
        ({"tool_choice": {"type": "file_search"}}, "tool_choice"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"include": ["message.output_text.logprobs"]}, "logprobs"),
        ({"text": {"verbosity": "low"}}, "verbosity"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]}, "file_id"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_data": "data:x", "filename": "a.pdf"}]}]},
         "input_file"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]}, "file_id"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "item_reference"),
        ({"input": [{"type": "computer_call_output", "call_id": "c", "output": {}}]}, "computer_call_output"),
        ({"input": [{"role": "system", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]},
         "input_image"),
    ],
)  # fmt: skip
def test_features_the_gateway_cannot_carry_are_refused_by_name(extra: dict[str, Any], feature: str) -> None:
    error = refused({"model": "m", "input": "hi", **extra}, through="to_chat")
    assert error.code == "unsupported_feature"
    assert feature in error.message, error.message


def test_store_and_truncation_and_hints_are_accepted() -> None:
    for extra in (
        {"store": True},
        {"store": False},
        {"truncation": "auto"},
        {"include": ["reasoning.encrypted_content"]},
        {"prompt_cache_key": "k", "service_tier": "auto", "max_tool_calls": 3},
        {"text": {"verbosity": "medium"}},
        {"stream_options": {"include_obfuscation": False}},
    ):
        chat = chat_of({"model": "m", "input": "hi", **extra})
        assert chat["messages"] == [{"role": "user", "content": "hi"}]
        assert set(chat) == {"messages"}, chat


# -- to_chat --------------------------------------------------------------------------------------


def test_string_input_and_instructions() -> None:
    chat = chat_of({"model": "m", "input": "what is 2+2?", "instructions": "be terse"})
    assert chat == {
        "messages": [{"role": "system", "content": "be terse"}, {"role": "user", "content": "what is 2+2?"}]
    }


def test_settings_map_to_neutral_fields() -> None:
    chat = chat_of(
        {
            "model": "m",
            "input": "hi",
            "max_output_tokens": 300,
            "temperature": 0.2,
            "top_p": 0.9,
            "parallel_tool_calls": False,
            "user": "u-1",
            "metadata": {"team": "a"},
            "reasoning": {"effort": "high", "summary": "auto"},
            "stream": True,
            "tool_choice": {"type": "function", "name": "lookup"},
            "tools": [
                {"type": "function", "name": "lookup", "description": "Look up", "strict": True,
                 "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}},
                {"type": "function", "name": "noargs", "parameters": None, "strict": None},
            ],
        }
    )  # fmt: skip
    assert chat["max_tokens"] == 300 and chat["temperature"] == 0.2 and chat["top_p"] == 0.9
    assert chat["parallel_tool_calls"] is False and chat["user"] == "u-1"
    assert chat["reasoning_effort"] == "high" and chat["stream"] is True
    assert "metadata" not in chat  # echoed on the answer, never sent upstream
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}
    assert chat["tools"] == [
        {"type": "function", "function": {"name": "lookup", "description": "Look up", "strict": True,
                                          "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}},
        {"type": "function", "function": {"name": "noargs"}},
    ]  # fmt: skip
    assert chat_of({"model": "m", "input": "x", "tool_choice": "required"})["tool_choice"] == "required"
    assert chat_of({"model": "m", "input": "x", "safety_identifier": "s"})["user"] == "s"


def test_multi_turn_with_function_calls_and_outputs() -> None:
    chat = chat_of(
        {
            "model": "m",
            "instructions": "sys",
            "input": [
                {"role": "developer", "content": "dev note"},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
                {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAA"},
                {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
                 "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]},
                {"type": "function_call", "id": "fc_1", "call_id": "call_a", "name": "weather",
                 "arguments": '{"city":"Paris"}', "status": "completed"},
                {"type": "function_call", "id": "fc_2", "call_id": "call_b", "name": "weather",
                 "arguments": '{"city":"Rome"}'},
                {"type": "function_call_output", "call_id": "call_a", "output": "sunny"},
                {"type": "function_call_output", "call_id": "call_b",
                 "output": [{"type": "input_text", "text": "rain"}]},
                {"type": "function_call", "call_id": "call_c", "name": "time", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_c", "output": "noon"},
                {"role": "assistant", "content": "Paris sunny, Rome rain."},
                {"role": "user", "content": "thanks"},
            ],
        }
    )  # fmt: skip
    assert chat["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "developer", "content": "dev note"},
        {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Rome"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_b", "content": "rain"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_c", "type": "function", "function": {"name": "time", "arguments": "{}"}},
        ]},
        {"role": "tool", "tool_call_id": "call_c", "content": "noon"},
        {"role": "assistant", "content": "Paris sunny, Rome rain."},
        {"role": "user", "content": "thanks"},
    ]  # fmt: skip


def test_images_become_image_url_parts() -> None:
    data_url = "data:image/png;base64,iVBORw0KGgo="
    chat = chat_of(
        {
            "model": "m",
            "input": [
                {"role": "user", "content": [
                    {"type": "input_text", "text": "compare"},
                    {"type": "input_image", "image_url": "https://example.com/a.jpg", "detail": "high"},
                    {"type": "input_image", "image_url": data_url, "detail": "auto"},
                ]},
            ],
        }
    )  # fmt: skip
    assert chat["messages"][0]["content"] == [
        {"type": "text", "text": "compare"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": data_url}},
    ]
    assert neutral.parse_data_url(chat["messages"][0]["content"][2]["image_url"]["url"]) == (
        "image/png",
        "iVBORw0KGgo=",
    )


def test_text_formats_become_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    chat = chat_of(
        {"model": "m", "input": "x",
         "text": {"format": {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}}}
    )  # fmt: skip
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "thing", "schema": schema, "strict": True},
    }
    chat = chat_of({"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}})
    assert chat["response_format"] == {"type": "json_object"}
    assert "response_format" not in chat_of({"model": "m", "input": "x", "text": {"format": {"type": "text"}}})


def test_to_chat_does_not_mutate_the_body() -> None:
    body = {
        "model": "m",
        "input": [
            {"role": "assistant", "content": "a"},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        ],
    }
    before = copy.deepcopy(body)
    chat_of(body)
    assert body == before


# -- render_response ------------------------------------------------------------------------------

REQUEST = {
    "model": "gpt-4o-mini",
    "input": "hi",
    "instructions": "be nice",
    "tools": [{"type": "function", "name": "weather", "parameters": {"type": "object", "properties": {}}}],
    "max_output_tokens": 50,
    "metadata": {"team": "a"},
    "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
    "reasoning": {"effort": "low"},
}


def test_render_text_answer_validates_with_the_sdk() -> None:
    call = make_call(REQUEST)
    usage = neutral.usage(20, 12, cached=5, reasoning=4)
    completion = neutral.completion(
        "chatcmpl-1", "gpt-4o-mini-2024", {"role": "assistant", "content": "Hello!", "reasoning_content": "thinking"},
        "stop", usage, created=1700000000,
    )  # fmt: skip
    data = rd.render_response(completion, call)
    response = Response.model_validate(data)
    assert response.id == "resp_abc123" and response.object == "response" and response.status == "completed"
    assert response.model == "gpt-4o-mini-2024" and response.created_at == 1700000000
    assert response.output_text == "Hello!"
    assert [item.type for item in response.output] == ["reasoning", "message"]
    reasoning = response.output[0]
    assert reasoning.type == "reasoning" and reasoning.content is not None
    assert reasoning.content[0].text == "thinking" and reasoning.summary == []
    assert response.output[1].id.startswith("msg_")
    assert response.usage is not None
    assert response.usage.input_tokens == 20 and response.usage.output_tokens == 12
    assert response.usage.total_tokens == 32
    assert response.usage.input_tokens_details.cached_tokens == 5
    assert response.usage.output_tokens_details.reasoning_tokens == 4
    assert response.instructions == "be nice" and response.max_output_tokens == 50
    assert response.metadata == {"team": "a"} and response.error is None and response.incomplete_details is None
    assert response.tools[0].type == "function" and response.tools[0].name == "weather"
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "json_schema"
    assert response.reasoning is not None and response.reasoning.effort == "low"
    assert response.parallel_tool_calls is True and response.tool_choice == "auto"
    assert data["store"] is False


def test_render_tool_calls() -> None:
    call = make_call({"model": "m", "input": "weather in Paris and Rome?"})
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Rome"}'}},
        ],
    }
    data = rd.render_response(neutral.completion("x", "m", message, "tool_calls", neutral.usage(3, 4)), call)
    response = Response.model_validate(data)
    assert response.status == "completed" and response.output_text == ""
    calls = [item for item in response.output if item.type == "function_call"]
    assert [(c.call_id, c.name, json.loads(c.arguments)) for c in calls] == [
        ("call_1", "weather", {"city": "Paris"}),
        ("call_2", "weather", {"city": "Rome"}),
    ]
    assert all(c.id and c.id.startswith("fc_") and c.status == "completed" for c in calls)
    assert len({c.id for c in calls}) == 2


@pytest.mark.parametrize(("finish", "reason"), [("length", "max_output_tokens"), ("content_filter", "content_filter")])
def test_render_incomplete(finish: str, reason: str) -> None:
    call = make_call({"model": "m", "input": "write a saga", "max_output_tokens": 5})
    completion = neutral.completion("x", "m", {"role": "assistant", "content": "Once upon"}, finish, None)
    response = Response.model_validate(rd.render_response(completion, call))
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == reason
    assert response.output[-1].type == "message" and response.output[-1].status == "incomplete"
    assert response.output_text == "Once upon" and response.usage is None


def test_render_refusal() -> None:
    call = make_call({"model": "m", "input": "x"})
    completion = neutral.completion("x", "m", {"role": "assistant", "content": None, "refusal": "No."}, "stop", None)
    response = Response.model_validate(rd.render_response(completion, call))
    message = response.output[0]
    assert message.type == "message" and message.content[0].type == "refusal"
    assert message.content[0].refusal == "No."


# -- streaming ------------------------------------------------------------------------------------


def parse_sse(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in raw.split(b"\n\n"):
        if not block:
            continue
        head, data = block.split(b"\n", 1)
        assert head.startswith(b"event: ") and data.startswith(b"data: "), block
        events.append((head[7:].decode(), orjson.loads(data[6:])))
    return events


def encode_all(call: Call, chunks: list[dict[str, Any]]) -> bytes:
    encoder = rd.ResponsesStreamEncoder(call)
    return b"".join(encoder.encode(copy.deepcopy(c)) for c in chunks) + encoder.finish()


def text_chunks(text_pieces: list[str], finish: str = "stop", reasoning: list[str] = ()) -> list[dict[str, Any]]:  # type: ignore[assignment]
    c = 1700000000
    out = [neutral.chunk("id", "gpt-x", c, {"role": "assistant"})]
    out += [neutral.chunk("id", "gpt-x", c, {"reasoning_content": r}) for r in reasoning]
    out += [neutral.chunk("id", "gpt-x", c, {"content": p}) for p in text_pieces]
    out.append(neutral.chunk("id", "gpt-x", c, {}, finish))
    out.append(neutral.usage_chunk("id", "gpt-x", c, neutral.usage(9, 7, cached=2, reasoning=3)))
    return out


def tool_chunks() -> list[dict[str, Any]]:
    c = 1700000000
    return [
        neutral.chunk("id", "gpt-x", c, {"role": "assistant", "content": "Let me check."}),
        neutral.chunk("id", "gpt-x", c, {"tool_calls": [neutral.tool_call_delta(0, id_="call_1", name="weather")]}),
        neutral.chunk("id", "gpt-x", c, {"tool_calls": [neutral.tool_call_delta(0, arguments='{"city":')]}),
        neutral.chunk("id", "gpt-x", c, {"tool_calls": [neutral.tool_call_delta(0, arguments='"Paris"}')]}),
        neutral.chunk("id", "gpt-x", c, {"tool_calls": [neutral.tool_call_delta(1, id_="call_2", name="time")]}),
        neutral.chunk("id", "gpt-x", c, {"tool_calls": [neutral.tool_call_delta(1, arguments="{}")]}),
        neutral.chunk("id", "gpt-x", c, {}, "tool_calls"),
        neutral.usage_chunk("id", "gpt-x", c, neutral.usage(30, 10)),
    ]


def accumulate(raw: bytes) -> tuple[list[Any], Any]:
    """Every event validated against the SDK's union, then fed to the SDK's own stream accumulator."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    events = []
    for n, (name, data) in enumerate(parse_sse(raw)):
        assert data["type"] == name and data["sequence_number"] == n
        event = EVENTS.validate_python(data)
        events.append(event)
        state.handle_event(event)
    return events, state._completed_response


def test_stream_text_with_reasoning() -> None:
    call = make_call({**REQUEST, "stream": True})
    raw = encode_all(call, text_chunks(["Hel", "lo", "!"], reasoning=["hmm ", "ok"]))
    events, final = accumulate(raw)
    assert [e.type for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.reasoning_text.delta", "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    assert events[0].response.status == "in_progress" and events[0].response.model == "gpt-x"
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert all(e.output_index == 1 and e.content_index == 0 and e.logprobs == [] for e in deltas)
    assert final is not None and final.output_text == "Hello!" and final.status == "completed"
    assert final.output[0].type == "reasoning" and final.output[0].content[0].text == "hmm ok"
    assert final.usage.input_tokens == 9 and final.usage.output_tokens == 7
    assert final.usage.input_tokens_details.cached_tokens == 2
    assert final.usage.output_tokens_details.reasoning_tokens == 3
    assert final.id == events[0].response.id == "resp_abc123"


def test_stream_tool_calls() -> None:
    call = make_call({"model": "m", "input": "x", "stream": True})
    events, final = accumulate(encode_all(call, tool_chunks()))
    types = [e.type for e in events]
    assert types.count("response.function_call_arguments.delta") == 3
    assert types.count("response.function_call_arguments.done") == 2
    assert types[-1] == "response.completed"
    added = [e.item for e in events if e.type == "response.output_item.added" and e.item.type == "function_call"]
    assert [(i.call_id, i.name, i.arguments) for i in added] == [("call_1", "weather", ""), ("call_2", "time", "")]
    assert final.output_text == "Let me check."
    calls = [item for item in final.output if item.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [
        ("call_1", "weather", '{"city":"Paris"}'),
        ("call_2", "time", "{}"),
    ]
    assert final.usage.total_tokens == 40


def test_stream_length_is_incomplete() -> None:
    call = make_call({"model": "m", "input": "x", "stream": True, "max_output_tokens": 3})
    raw = encode_all(call, text_chunks(["Once ", "upon"], finish="length"))
    events = [EVENTS.validate_python(d) for _, d in parse_sse(raw)]
    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.status == "incomplete" and last.response.incomplete_details.reason == "max_output_tokens"
    assert last.response.output[0].status == "incomplete" and last.response.output_text == "Once upon"
    assert last.response.usage.output_tokens == 7


def test_stream_without_any_output_still_completes() -> None:
    call = make_call({"model": "m", "input": "x", "stream": True})
    events, final = accumulate(rd.ResponsesStreamEncoder(call).finish())
    assert [e.type for e in events] == ["response.created", "response.in_progress", "response.completed"]
    assert final.output == [] and final.model == "m"


def test_stream_error_event() -> None:
    call = make_call({"model": "m", "input": "x", "stream": True})
    encoder = rd.ResponsesStreamEncoder(call)
    raw = encoder.encode(text_chunks(["a"])[1]) + encoder.error(UpstreamError("provider 'p' broke the connection"))
    (name, data), *_ = parse_sse(raw)[-1:]
    assert name == "error"
    event = EVENTS.validate_python(data)
    assert event.type == "error" and event.code == "upstream_error" and event.param is None
    assert "broke the connection" in event.message
    assert data["sequence_number"] == len(parse_sse(raw)) - 1


def test_the_sdk_consumes_the_stream_over_http() -> None:
    """`client.responses.stream(...)` of the official SDK reads the encoder's bytes off the wire."""
    body = {"model": "m", "input": "x", "stream": True}
    raw = encode_all(make_call(body), tool_chunks())

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for piece in _pieces(raw, 37):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    with serve_in_thread(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        with client.responses.stream(model="m", input="x") as stream:
            deltas = [e.delta for e in stream if e.type == "response.function_call_arguments.delta"]
            final = stream.get_final_response()
    assert "".join(deltas) == '{"city":"Paris"}{}'
    assert final.output_text == "Let me check."
    assert [o.type for o in final.output] == ["message", "function_call", "function_call"]


def _pieces(raw: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(raw), size):
        yield raw[i : i + size]


# -- texts for guards -----------------------------------------------------------------------------


def test_request_texts_cover_every_text_field_and_no_ids() -> None:
    body = {
        "model": "m",
        "instructions": "T-instructions",
        "input": [
            {"role": "user", "content": "T-user-string"},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "T-user-part"},
                {"type": "input_image", "image_url": "https://img.example/ID-url.png", "detail": "low"},
                {"type": "input_image", "image_url": "data:image/png;base64,ID-base64"},
            ]},
            {"type": "message", "role": "assistant", "id": "ID-msg", "status": "completed",
             "content": [{"type": "output_text", "text": "T-assistant", "annotations": []},
                         {"type": "refusal", "refusal": "T-refusal"}]},
            {"type": "function_call", "id": "ID-fc", "call_id": "ID-call", "name": "T-fn-name",
             "arguments": "T-arguments"},
            {"type": "function_call_output", "call_id": "ID-call2", "output": "T-output"},
            {"type": "function_call_output", "call_id": "ID-call3",
             "output": [{"type": "input_text", "text": "T-output-part"}]},
            {"type": "reasoning", "id": "ID-rs", "summary": [{"type": "summary_text", "text": "T-summary"}],
             "encrypted_content": "ID-enc"},
        ],
        "tools": [{"type": "function", "name": "T-tool-name", "description": "T-tool-desc", "strict": True,
                   "parameters": {"type": "object", "properties": {"q": {"type": "string",
                                                                        "description": "T-param-desc"}}}}],
    }  # fmt: skip
    texts = rd.request_texts("responses", body)
    found = {text for _, text in texts}
    expected = {
        "T-instructions", "T-user-string", "T-user-part", "T-assistant", "T-refusal", "T-fn-name", "T-arguments",
        "T-output", "T-output-part", "T-tool-name", "T-tool-desc", "T-param-desc", "T-summary",
    }  # fmt: skip
    assert expected <= found, expected - found
    # function schemas are user-defined JSON, read whole (keys too); ids, media and settings are not
    assert {"q", "object"} <= found
    assert not any(t.startswith("ID-") or "ID-" in t or t in ("low", "m", "completed") for t in found)
    # every path can be rewritten in place (what redaction does)
    copied = copy.deepcopy(body)
    for path, text in texts:
        set_path(copied, path, text.replace("T-", "R-"))
    assert "T-" not in json.dumps(copied)
    assert rd.request_texts("responses", {"model": "m", "input": "T-plain"}) == [(("input",), "T-plain")]


def test_response_texts() -> None:
    call = make_call({"model": "m", "input": "x"})
    message = {
        "role": "assistant",
        "content": "T-text",
        "reasoning_content": "T-reasoning",
        "tool_calls": [{"id": "ID-call", "type": "function", "function": {"name": "T-name", "arguments": "T-args"}}],
    }
    data = rd.render_response(neutral.completion("x", "m", message, "tool_calls", None), call)
    texts = rd.response_texts("responses", data)
    assert {t for _, t in texts} == {"T-text", "T-reasoning", "T-name", "T-args"}
    for path, _ in texts:
        set_path(data, path, "R")
    Response.model_validate(data)


# -- end to end: the official SDK's `responses` API through the gateway to an OpenAI chat upstream ----


def sdk(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys["alice"], max_retries=0)


def test_e2e_create(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    raw = sdk(gateway).responses.with_raw_response.create(
        model="gpt-4o-mini", instructions="be brief", input="echo: hello there", max_output_tokens=40, temperature=0.5
    )
    response = raw.parse()
    assert response.status == "completed" and response.output_text == "hello there"
    assert response.id.startswith("resp_") and response.model == "gpt-4o-mini"
    assert response.usage is not None and response.usage.total_tokens > 0
    sent = upstream.requests[-1]
    assert sent.path == "/v1/chat/completions"
    body = sent.json()
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "echo: hello there"},
    ]
    assert body["max_tokens"] == 40 and body["temperature"] == 0.5 and body["model"] == "gpt-4o-mini"
    event = gateway.last_audit()
    assert event["request_id"] == raw.headers["x-request-id"] and event["status"] == 200
    assert event["prompt_tokens"] == response.usage.input_tokens
    assert event["completion_tokens"] == response.usage.output_tokens


def test_e2e_tool_round_trip(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(tool_calls=[{"id": "call_9", "name": "weather", "arguments": {"city": "Paris"}}]))
    client = sdk(gateway)
    tools: Any = [{"type": "function", "name": "weather", "description": "Weather of a city", "strict": False,
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]  # fmt: skip
    first = client.responses.create(model="gpt-4o-mini", input="weather in Paris?", tools=tools)
    calls = [item for item in first.output if item.type == "function_call"]
    assert [(c.call_id, c.name, json.loads(c.arguments)) for c in calls] == [("call_9", "weather", {"city": "Paris"})]
    history: Any = [
        {"role": "user", "content": "weather in Paris?"},
        *[item.model_dump(exclude_none=True) for item in first.output],
        {"type": "function_call_output", "call_id": "call_9", "output": "echo: sunny"},
    ]
    second = client.responses.create(model="gpt-4o-mini", input=history, tools=tools)
    assert second.status == "completed" and second.output_text
    messages = upstream.requests[-1].json()["messages"]
    assert messages[1]["tool_calls"][0]["id"] == "call_9"
    assert messages[2] == {"role": "tool", "tool_call_id": "call_9", "content": "echo: sunny"}


def test_e2e_stream(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    with sdk(gateway).responses.stream(model="gpt-4o-mini", input="echo: one two three four") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "one two three four" and len(deltas) > 1
    assert final.output_text == "one two three four" and final.status == "completed"
    assert final.usage is not None and final.usage.output_tokens > 0
    assert upstream.requests[-1].json()["stream"] is True


def test_e2e_stream_cut_by_max_output_tokens(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    with sdk(gateway).responses.create(
        model="gpt-4o-mini", input="echo: one two three four five six", max_output_tokens=2, stream=True
    ) as stream:
        events = list(stream)
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details is not None
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"


def test_e2e_unsupported_feature_is_an_openai_400(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    with gateway.client() as client:
        resp = client.post("/v1/responses", json={"model": "gpt-4o-mini", "input": "hi", "previous_response_id": "r"})
        error = assert_openai_error(resp, 400, "unsupported_feature")
        assert "previous_response_id" in error["message"]
        resp = client.post(
            "/v1/responses", json={"model": "gpt-4o-mini", "input": "hi", "tools": [{"type": "web_search"}]}
        )
        assert "web_search" in assert_openai_error(resp, 400, "unsupported_feature")["message"]
        resp = client.post("/v1/responses", json={"model": "gpt-4o-mini"})
        assert assert_openai_error(resp, 400)["param"] == "input"
    assert upstream.requests == []


def test_e2e_upstream_cut_mid_stream_sends_an_error_event(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content="a b c d e f g", fault="reset", chunks_before_fault=3))
    with sdk(gateway).responses.create(model="gpt-4o-mini", input="x", stream=True) as stream:
        events = list(stream)
    assert events[-1].type == "error" and events[-1].code == "upstream_stream_cut"
    assert not any(e.type == "response.completed" for e in events)
