"""Traces end to end: real SDKs call the gateway over HTTP, the gateway calls the fake upstream and
exports its spans over OTLP/HTTP to a real receiver (`oteltap`) on loopback."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from sluicegate.config.loader import parse_config
from sluicegate.testing import FakeUpstream, Reply
from tests.conftest import CANARY_KEY, RunningGateway, free_port, run_gateway, wait_for, with_claude
from tests.observability.otlp import CLIENT, INTERNAL, SERVER, OtlpReceiver, all_values, attrs

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


def tracing(endpoint: str, **settings: object) -> str:
    lines = "".join(f"    {key}: {value}\n" for key, value in settings.items())
    return (
        f"observability:\n  tracing:\n    enabled: true\n    endpoint: {endpoint}\n    export_interval_s: 0.05\n{lines}"
    )


#: a flagging guard on both sides (its spans, never its matches) and a rate limit (the limits span)
EXTRA = """\
guards:
  - name: watch
    kind: regex
    action: flag
    applies_to: both
    settings:
      deny: ["zebra"]
limits:
  rate_limits:
    - {name: calls, scope: consumer, requests: 100000, window: minute}
    - {name: bob-once, scope: consumer, match: [bob], requests: 1, window: minute}
"""


def watched(text: str, upstream_url: str) -> str:
    text = text.replace("  - name: alice\n", "  - name: alice\n    guards: [watch]\n")
    return with_claude(text, upstream_url, "claude")


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as rx:
        yield rx


@pytest.fixture(scope="module")
def gw(upstream_url: str, receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    extra = EXTRA + tracing(receiver.url, service_name="gw-under-test", resource_attributes="{team: llm-platform}")
    with run_gateway(tmp_path_factory.mktemp("traced"), upstream_url, extra) as gw:
        before = gw.app.services.tracing
        gw.reconfigure(lambda text: watched(text, upstream_url))
        # The tracing settings did not change: the same provider serves on.
        assert gw.app.services.tracing is before is not None
        yield gw


def openai_client(gw: RunningGateway, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys["alice"], max_retries=0, default_headers=headers)


def chat(gw: RunningGateway, stream: bool = False, **headers: str) -> tuple[str, dict[str, int]]:
    """One chat call through the OpenAI SDK; its request id and the usage the client was told."""
    client = openai_client(gw, **headers)
    message = [{"role": "user", "content": "hello zebra"}]
    if not stream:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=message,
            max_tokens=40,
            temperature=0.5,  # type: ignore[arg-type]
        )
        usage = raw.parse().usage
    else:
        raw = client.chat.completions.with_raw_response.create(  # type: ignore[call-overload]
            model="gpt-4o-mini", messages=message, max_tokens=40, stream=True, stream_options={"include_usage": True}
        )
        usage = [chunk.usage for chunk in raw.parse() if chunk.usage][-1]
    assert usage is not None
    return raw.headers["x-request-id"], {"input": usage.prompt_tokens, "output": usage.completion_tokens}


def claude_call(gw: RunningGateway, stream: bool = False) -> tuple[str, dict[str, int]]:
    client = anthropic.Anthropic(base_url=gw.url, api_key=gw.keys["alice"], max_retries=0)
    message = [{"role": "user", "content": "hello zebra"}]
    if not stream:
        raw = client.messages.with_raw_response.create(model="claude", max_tokens=60, messages=message)  # type: ignore[arg-type]
        got = raw.parse().usage
        return raw.headers["x-request-id"], {"input": got.input_tokens, "output": got.output_tokens}
    raw = client.messages.with_raw_response.create(model="claude", max_tokens=60, messages=message, stream=True)  # type: ignore[arg-type]
    usage: dict[str, int] = {}
    for event in raw.parse():
        if event.type == "message_start":
            usage["input"] = event.message.usage.input_tokens
        elif event.type == "message_delta":
            usage["output"] = event.usage.output_tokens
    return raw.headers["x-request-id"], usage


def upstream_traceparent(upstream: FakeUpstream) -> tuple[str, str, str]:
    """The trace id, parent span id and flags of the `traceparent` the upstream last received."""
    match = TRACEPARENT.match(upstream.requests[-1].headers.get("traceparent", ""))
    assert match is not None, upstream.requests[-1].headers
    return match[1], match[2], match[3]


CHILDREN = {"limits", "guardrails.input", "upstream", "guardrails.output"}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_openai_chat_span_has_genai_attributes_and_children(
    gw: RunningGateway, receiver: OtlpReceiver, upstream: FakeUpstream, stream: bool
) -> None:
    upstream.enqueue(Reply(content="a zebra, striped"))
    request_id, usage = chat(gw, stream)
    root = receiver.call_span(request_id)
    assert root.name == "chat gpt-4o-mini"
    assert root.kind == SERVER
    assert root.parent_span_id == b""
    a = attrs(root)
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "gpt-4o-mini"
    assert a["gen_ai.response.model"] == "gpt-4o-mini"
    assert a["gen_ai.provider.name"] == "openai_compatible"
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (usage["input"], usage["output"])
    assert a["gen_ai.request.max_tokens"] == 40
    assert a["gen_ai.request.stream"] is stream
    assert a["http.response.status_code"] == 200
    assert (a["sluicegate.consumer"], a["sluicegate.decision"], a["sluicegate.outcome"]) == ("alice", "allowed", "ok")
    assert a["sluicegate.guard_verdicts"] == ["watch:flag:input", "watch:flag:output"]
    if stream:
        assert a["gen_ai.response.time_to_first_chunk"] > 0
    else:
        assert a["gen_ai.request.temperature"] == 0.5
    assert "error.type" not in a

    spans = receiver.trace(root, CHILDREN)
    # Stages that decide from memory get no span of their own (they cost less than one).
    assert set(spans) == CHILDREN | {root.name}
    for name in CHILDREN:
        child = spans[name]
        assert child.parent_span_id == root.span_id, name
        assert child.kind == (CLIENT if name == "upstream" else INTERNAL), name
        # Every child lies within the call's span.
        assert root.start_time_unix_nano <= child.start_time_unix_nano <= child.end_time_unix_nano, name
        assert child.end_time_unix_nano <= root.end_time_unix_nano, name
    if not stream:
        # The upstream span ends when its answer was read, before the output guards read it.
        assert spans["upstream"].end_time_unix_nano <= spans["guardrails.output"].start_time_unix_nano
    up = attrs(spans["upstream"])
    assert up["server.address"] == "127.0.0.1"
    assert up["server.port"] == int(gw.app.snapshot.providers["mock"].base_url.rsplit(":", 1)[1].split("/")[0])
    assert up["http.response.status_code"] == 200
    assert up["url.full"].endswith("/v1/chat/completions")

    # The upstream was told the trace, with the upstream span as its parent.
    trace_id, parent, flags = upstream_traceparent(upstream)
    assert (trace_id, parent) == (root.trace_id.hex(), spans["upstream"].span_id.hex())
    assert int(flags, 16) & 1


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_anthropic_messages_span(
    gw: RunningGateway, receiver: OtlpReceiver, upstream: FakeUpstream, stream: bool
) -> None:
    request_id, usage = claude_call(gw, stream)
    root = receiver.call_span(request_id)
    assert root.name == "chat claude"
    a = attrs(root)
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "anthropic"
    assert a["gen_ai.request.model"] == "claude"
    assert a["gen_ai.response.model"] == "claude-sonnet-4-5"
    assert a["gen_ai.request.max_tokens"] == 60
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (usage["input"], usage["output"])
    assert a["sluicegate.endpoint"] == "messages"
    spans = receiver.trace(root, CHILDREN)
    assert spans["upstream"].parent_span_id == root.span_id
    assert attrs(spans["upstream"])["url.full"].endswith("/v1/messages")
    trace_id, parent, _ = upstream_traceparent(upstream)
    assert (trace_id, parent) == (root.trace_id.hex(), spans["upstream"].span_id.hex())


def test_client_trace_is_continued_and_its_state_propagated(
    gw: RunningGateway, receiver: OtlpReceiver, upstream: FakeUpstream
) -> None:
    request_id, _ = chat(gw, traceparent=f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01", tracestate="vendor=abc,other=x")
    root = receiver.call_span(request_id)
    assert root.trace_id.hex() == CLIENT_TRACE
    assert root.parent_span_id.hex() == CLIENT_SPAN
    upstream_span = receiver.trace(root, {"upstream"})["upstream"]
    trace_id, parent, flags = upstream_traceparent(upstream)
    assert (trace_id, parent, flags) == (CLIENT_TRACE, upstream_span.span_id.hex(), "01")
    assert upstream.requests[-1].headers["tracestate"] == "vendor=abc,other=x"


@pytest.mark.parametrize(
    "traceparent",
    [
        f"00-{CLIENT_TRACE}-{CLIENT_SPAN}",  # no flags
        f"00-{'0' * 32}-{CLIENT_SPAN}-01",  # an all-zero trace id
        f"00-{CLIENT_TRACE}-{'0' * 16}-01",  # an all-zero parent
        f"ff-{CLIENT_TRACE}-{CLIENT_SPAN}-01",  # a forbidden version
        f"00-{CLIENT_TRACE.upper()}-{CLIENT_SPAN}-01",  # upper case
        "00-zzzz-yyyy-01",
        "garbage",
    ],
    ids=["no-flags", "zero-trace", "zero-parent", "version-ff", "upper-case", "not-hex", "garbage"],
)
def test_malformed_client_traceparent_is_ignored(
    gw: RunningGateway, receiver: OtlpReceiver, upstream: FakeUpstream, traceparent: str
) -> None:
    request_id, _ = chat(gw, traceparent=traceparent, tracestate="vendor=abc")
    root = receiver.call_span(request_id)
    assert root.parent_span_id == b""
    assert root.trace_id.hex() not in (CLIENT_TRACE, "0" * 32)
    trace_id, _, _ = upstream_traceparent(upstream)
    assert trace_id == root.trace_id.hex()
    # The state of a trace that was not continued is not passed on either.
    assert "tracestate" not in upstream.requests[-1].headers


def test_refused_calls_carry_their_error_and_have_no_upstream(gw: RunningGateway, receiver: OtlpReceiver) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        unknown = client.post("/v1/chat/completions", headers={"Authorization": "Bearer sg-not-a-key"}, json=body)
        bob = {"Authorization": f"Bearer {gw.keys['bob']}"}
        allowed = client.post("/v1/chat/completions", headers=bob, json=body)
        limited = client.post("/v1/chat/completions", headers=bob, json=body)
    assert allowed.status_code == 200
    # bob has no guard: the guard stage had nothing to do for his call, and made no span.
    root = receiver.call_span(allowed.headers["x-request-id"])
    names = set(receiver.trace(root, {"limits", "upstream"}))
    assert names == {root.name, "limits", "upstream"}
    assert (unknown.status_code, limited.status_code) == (401, 429)

    # Refused by identity, before the body was read: the operation alone names the span.
    root = receiver.call_span(unknown.headers["x-request-id"])
    a = attrs(root)
    assert root.name == "chat"
    assert (a["http.response.status_code"], a["sluicegate.decision"], a["error.type"]) == (
        401,
        "denied",
        "invalid_api_key",
    )
    assert root.status.code != root.status.STATUS_CODE_ERROR  # a refusal is the client's error, not ours

    # Refused by a rate limit: the limits span says so.
    root = receiver.call_span(limited.headers["x-request-id"])
    assert root.name == "chat gpt-4o-mini"
    assert attrs(root)["error.type"] == "rate_limit_exceeded"
    limits = receiver.trace(root, {"limits"})["limits"]
    assert attrs(limits)["error.type"] == "rate_limit_exceeded"
    assert limits.status.code == limits.status.STATUS_CODE_ERROR
    for refused in (unknown, limited):
        trace_id = receiver.call_span(refused.headers["x-request-id"]).trace_id
        assert not any(s.name == "upstream" and s.trace_id == trace_id for s in receiver.received())


def test_upstream_error_marks_both_spans(gw: RunningGateway, receiver: OtlpReceiver, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(status=500, error_message="the upstream broke"))
    with pytest.raises(openai.APIStatusError) as failed:
        openai_client(gw).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    root = receiver.call_span(failed.value.response.headers["x-request-id"])
    a = attrs(root)
    assert a["http.response.status_code"] == failed.value.status_code >= 500
    assert a["error.type"] == failed.value.body["code"]  # type: ignore[index]
    assert root.status.code == root.status.STATUS_CODE_ERROR
    up = receiver.trace(root, {"upstream"})["upstream"]
    assert (attrs(up)["http.response.status_code"], attrs(up)["error.type"]) == (500, "500")
    assert up.status.code == up.status.STATUS_CODE_ERROR


def test_no_secret_in_any_span(gw: RunningGateway, receiver: OtlpReceiver) -> None:
    chat(gw)
    chat(gw, stream=True)
    claude_call(gw)
    values = list(all_values(receiver.received()))
    assert len(values) > 100
    secrets = [CANARY_KEY, *gw.keys.values()]
    for text in values:
        for secret in secrets:
            assert secret not in text
            assert secret[:16] not in text
        assert "Bearer" not in text and "x-api-key" not in text.lower()
        assert "zebra" not in text  # nor a prompt or answer


def test_service_name_and_resource_attributes(gw: RunningGateway) -> None:
    tracing = gw.app.services.tracing
    assert tracing is not None
    resource = tracing.provider.resource.attributes
    assert (resource["service.name"], resource["team"]) == ("gw-under-test", "llm-platform")


def test_propagation_and_continuation_off(
    upstream_url: str, receiver: OtlpReceiver, upstream: FakeUpstream, tmp_path: Path
) -> None:
    extra = tracing(receiver.url, propagate_upstream="false", continue_client_trace="false")
    with run_gateway(tmp_path, upstream_url, extra) as gw:
        request_id, _ = chat(gw, traceparent=f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")
        root = receiver.call_span(request_id)
        assert root.trace_id.hex() != CLIENT_TRACE and root.parent_span_id == b""
        assert receiver.trace(root, {"upstream"})
        sent = upstream.requests[-1].headers
        assert "traceparent" not in sent and "tracestate" not in sent


def test_unsampled_calls_export_nothing_but_still_propagate(
    upstream_url: str, receiver: OtlpReceiver, upstream: FakeUpstream, tmp_path: Path
) -> None:
    with run_gateway(tmp_path, upstream_url, tracing(receiver.url, sample_ratio=0)) as gw:
        dropped, _ = chat(gw)
        _, _, flags = upstream_traceparent(upstream)
        assert int(flags, 16) & 1 == 0
        # A client's sampled trace is recorded all the same (the sampler follows its parent).
        kept, _ = chat(gw, traceparent=f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")
        root = receiver.call_span(kept)
        assert root.trace_id.hex() == CLIENT_TRACE
        receiver.trace(root, {"upstream"})
        # Spans are exported in the order they end: the first call's would have come first.
        assert not any(attrs(s).get("sluicegate.request_id") == dropped for s in receiver.received())


def test_shutdown_flushes_spans(upstream_url: str, receiver: OtlpReceiver, tmp_path: Path) -> None:
    extra = tracing(receiver.url).replace("export_interval_s: 0.05", "export_interval_s: 3600")
    with run_gateway(tmp_path, upstream_url, extra) as gw:
        request_id, _ = chat(gw)
        time.sleep(0.2)
        assert not any(attrs(s).get("sluicegate.request_id") == request_id for s in receiver.received())
    # Gone only once the gateway stopped: its shutdown exported what it held.
    receiver.call_span(request_id, timeout=5)


def test_reload_replaces_the_provider_and_retires_the_old_one(
    upstream_url: str, receiver: OtlpReceiver, upstream: FakeUpstream, tmp_path: Path
) -> None:
    with run_gateway(tmp_path, upstream_url, tracing(receiver.url)) as gw:
        first = gw.app.services.tracing
        assert first is not None
        gw.reconfigure(lambda text: text.replace("export_interval_s: 0.05", "export_interval_s: 0.06"))
        second = gw.app.services.tracing
        assert second is not None and second is not first
        wait_for(lambda: first.closed)
        request_id, _ = chat(gw)
        receiver.call_span(request_id)
        gw.reconfigure(lambda text: text.replace("enabled: true", "enabled: false"))
        assert gw.app.services.tracing is None
        wait_for(lambda: second.closed)
        assert "tracing" not in gw.app.pipeline.names
        chat(gw, traceparent=f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")
        assert "traceparent" not in upstream.requests[-1].headers


def test_receiver_down_calls_succeed_and_the_failure_is_logged_once(
    upstream_url: str, upstream: FakeUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1/traces"
    with run_gateway(tmp_path, upstream_url, tracing(dead, timeout_s=0.5)) as gw:
        started = time.monotonic()
        for stream in (False, True, False, True, False):
            chat(gw, stream)
            time.sleep(0.1)  # each call's spans go in a batch of their own, and fail
        assert upstream_traceparent(upstream)
        wait_for(lambda: sum("cannot be exported" in r.getMessage() for r in caplog.records) >= 1)
        time.sleep(0.3)
    assert time.monotonic() - started < 20
    failures = [r for r in caplog.records if r.name.startswith(("sluicegate.tracing", "opentelemetry"))]
    assert [r.getMessage() for r in failures if r.levelno >= 30] == [
        f"tracing: spans cannot be exported to {dead}; they are dropped until it answers "
        "(calls are not affected; this is logged once)"
    ]


def test_config_without_the_otel_extra_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    text = "providers: []\nmodels: []\nobservability:\n  tracing:\n    enabled: true\n"
    snapshot, issues = parse_config(text)
    assert snapshot is None
    assert any("sluicegate[otel]" in str(issue) and "observability.tracing" in str(issue) for issue in issues), issues
    # Off, nothing is imported and nothing is needed.
    snapshot, _ = parse_config(text.replace("true", "false"))
    assert snapshot is not None


def test_exporter_headers_take_references_not_credentials() -> None:
    base = "providers: []\nmodels: []\nobservability:\n  tracing:\n    headers:\n"
    _, issues = parse_config(base + "      Authorization: Bearer abc123secretvalue\n")
    assert any("secret reference" in str(i) for i in issues), issues
    assert not any("abc123secretvalue" in str(i) for i in issues)
    snapshot, issues = parse_config(base + "      Authorization: Bearer env://OTLP_TOKEN\n")
    assert snapshot is not None, issues


def test_the_sample_ratio_keeps_that_share_of_calls_and_an_unsampled_client_trace_is_followed(
    upstream_url: str, receiver: OtlpReceiver, upstream: FakeUpstream, tmp_path: Path
) -> None:
    calls = 300
    with run_gateway(tmp_path, upstream_url, tracing(receiver.url, sample_ratio=0.5)) as gw, gw.client() as c:
        ids = []
        for _ in range(calls):
            resp = c.post(
                "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
            )
            assert resp.status_code == 200
            ids.append(resp.headers["x-request-id"])
        # The client's trace was not sampled: the call is not recorded, and its trace goes on
        # upstream, unsampled, with a span id of the gateway's.
        dropped = c.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"},
        ).headers["x-request-id"]
        trace_id, parent, flags = upstream_traceparent(upstream)
        assert (trace_id, int(flags, 16) & 1) == (CLIENT_TRACE, 0) and parent != CLIENT_SPAN
    # The gateway has stopped: every span it recorded was exported at its shutdown.
    recorded = {attrs(s).get("sluicegate.request_id") for s in receiver.received()} & {*ids, dropped}
    assert dropped not in recorded
    # Binomial(300, 0.5): 150 ± 8.7; outside 100..200 is a broken sampler, not bad luck (p < 1e-8).
    assert 100 <= len(recorded) <= 200, len(recorded)


def test_a_cache_hit_has_a_cache_span_and_no_upstream(
    upstream: FakeUpstream, upstream_url: str, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    extra = "cache: {enabled: true}\n" + tracing(receiver.url)
    with run_gateway(tmp_path, upstream_url, extra) as running:
        client = openai_client(running)
        messages = [{"role": "user", "content": "traced cache"}]
        upstream.enqueue(Reply(content="stored", prompt_tokens=10, completion_tokens=20))
        miss = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
        hit = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
        assert hit.headers["x-cache"] == "hit"
        miss_root = receiver.call_span(miss.headers["x-request-id"])
        assert attrs(miss_root)["sluicegate.cache"] == "miss"
        root = receiver.call_span(hit.headers["x-request-id"])
        a = attrs(root)
        assert (a["sluicegate.cache"], a["sluicegate.usage_source"]) == ("hit", "cache")
        assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (10, 20)
        saved = running.last_audit()["cache_saved_micro_usd"]
        assert a["sluicegate.cache.saved_micro_usd"] == saved > 0
        spans = receiver.trace(root, {"cache"})
        assert set(spans) == {"cache", root.name}  # no upstream span: nothing went upstream
        assert spans["cache"].parent_span_id == root.span_id
