"""Prometheus metrics over HTTP: known calls through the official SDKs give exact counts.

Each test starts its own gateway (counters start at zero) against the fake upstream, makes calls
with the `openai` and `anthropic` SDKs, and reads `/metrics` the way a scraper does. The last tests
run `sluicegate serve --admin-port` with a real Prometheus scraping it, and `promtool` on the
exposition.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sluicegate.call import Call
from sluicegate.config.loader import load_config
from sluicegate.observability import recorder as recorder_module
from sluicegate.observability.metrics import Children, GatewayMetrics
from sluicegate.observability.recorder import TOKEN_BUCKETS
from sluicegate.settings import Settings
from sluicegate.store.db import create_engine
from sluicegate.store.keys import KeyStore
from sluicegate.testing import FakeUpstream, Reply, serve_in_thread
from tests.conftest import (
    BASE_CONFIG,
    CANARY_KEY,
    RunningGateway,
    free_port,
    gateway_process,
    run_gateway,
    wait_for,
    with_claude,
)

CHAT = "/v1/chat/completions"
PROMPT, COMPLETION = 7, 11
#: alice's calls are checked by two guards: one blocks a word, one flags another
GUARDS = """\
guards:
  - {name: no-codename, kind: words, action: block, applies_to: input, settings: {words: [nightingale]}}
  - {name: watch-budget, kind: words, action: flag, applies_to: input, settings: {words: [budget]}}
"""
GUARDS_CONSUMER = '  - name: alice\n    models: ["*"]\n    guards: [no-codename, watch-budget]\n'
#: output at 2 USD per million tokens: one call (11 output tokens) costs 22 micro-units
PRICED = "  - {name: priced, provider: mock, model: gpt-4o-mini, price: {input: 0, output: 2.0}}\n"


@pytest.fixture(autouse=True)
def _fixed_usage(upstream: FakeUpstream) -> Iterator[None]:
    upstream.default = Reply(content="ok", prompt_tokens=PROMPT, completion_tokens=COMPLETION)
    yield
    upstream.default = None


def metrics_text(url: str, **headers: str) -> str:
    resp = httpx.get(url + "/metrics", headers=headers, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.text


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 when there is none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def label_values(text: str, name: str, label: str) -> set[str]:
    return {
        sample.labels[label]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and label in sample.labels
    }


@contextlib.contextmanager
def metered(tmp: Path, upstream_url: str, extra: str = "", edit: Any = None, **gw: Any) -> Iterator[RunningGateway]:
    """A gateway serving `/metrics` on its data port, its config edited by `edit` (then reloaded)."""
    with run_gateway(tmp, upstream_url, extra + "observability:\n  metrics:\n    on_data_port: true\n", **gw) as g:
        if edit is not None:
            g.reconfigure(edit)
        yield g


def oai(gw: RunningGateway, who: str = "alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys[who], max_retries=0)


def claude(gw: RunningGateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=gw.keys["alice"], max_retries=0)


def ask(client: openai.OpenAI, content: str = "hi", model: str = "gpt-4o-mini", **kwargs: Any) -> Any:
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], **kwargs)


def test_allowed_calls_count_requests_tokens_cost_and_latency(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    def edit(text: str) -> str:
        return with_claude(text, upstream_url, "claude").replace("models:\n", "models:\n" + PRICED, 1)

    with metered(tmp_path, upstream_url, edit=edit) as gw:
        client = oai(gw)
        for _ in range(2):
            ask(client, model="priced")
        chunks = list(ask(client, model="priced", stream=True, stream_options={"include_usage": True}))
        assert chunks[-1].usage.completion_tokens == COMPLETION
        claude(gw).messages.create(model="claude", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
        text = metrics_text(gw.url)

    ok = {"consumer": "alice", "status_class": "2xx", "decision": "allowed"}
    assert value(text, "sluicegate_requests_total", model="priced", provider="mock", endpoint="chat", **ok) == 3
    assert value(text, "sluicegate_requests_total", model="claude", provider="claude", endpoint="messages", **ok) == 1
    assert value(text, "sluicegate_requests_total") == 4
    assert value(text, "sluicegate_tokens_total", model="priced", type="input") == 3 * PROMPT
    assert value(text, "sluicegate_tokens_total", model="priced", type="output") == 3 * COMPLETION
    assert value(text, "sluicegate_tokens_total", model="claude", type="output") == COMPLETION
    # 3 calls x 11 output tokens x 2 USD per million
    assert value(text, "sluicegate_cost_total", consumer="alice", model="priced", currency="USD") == pytest.approx(
        3 * COMPLETION * 2 / 1e6
    )
    # `gen_ai_provider_name` is the GenAI conventions' name of the provider's type; `provider` its name
    genai = {
        "gen_ai_operation_name": "chat",
        "gen_ai_provider_name": "openai_compatible",
        "gen_ai_request_model": "priced",
        "provider": "mock",
    }
    assert value(text, "gen_ai_server_request_duration_seconds_count", error_type="", **genai) == 3
    assert value(text, "gen_ai_client_operation_duration_seconds_count", error_type="", **genai) == 3
    assert value(text, "gen_ai_server_time_to_first_token_seconds_count", **genai) == 1
    assert value(text, "gen_ai_client_token_usage_sum", gen_ai_token_type="output", **genai) == 3 * COMPLETION
    assert value(text, "gen_ai_client_token_usage_count", gen_ai_token_type="input", **genai) == 3
    claude_labels = {"gen_ai_provider_name": "anthropic", "provider": "claude", "gen_ai_request_model": "claude"}
    assert value(text, "gen_ai_client_operation_duration_seconds_count", **claude_labels) == 1
    assert value(text, "sluicegate_gateway_overhead_seconds_count", endpoint="chat", stream="false") == 2
    assert value(text, "sluicegate_gateway_overhead_seconds_count", endpoint="chat", stream="true") == 1
    assert value(text, "sluicegate_gateway_overhead_seconds_count", endpoint="messages") == 1
    # Overhead and upstream time are parts of the whole: neither sum exceeds the calls' duration.
    whole = value(text, "gen_ai_server_request_duration_seconds_sum", **genai)
    assert 0 < value(text, "gen_ai_client_operation_duration_seconds_sum", **genai) <= whole
    assert 0 < value(text, "sluicegate_gateway_overhead_seconds_sum", provider="mock") <= whole


def test_guard_verdicts_are_counted_per_guard_and_action(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    def edit(text: str) -> str:
        return text.replace('  - name: alice\n    models: ["*"]\n', GUARDS_CONSUMER)

    with metered(tmp_path, upstream_url, GUARDS, edit=edit) as gw:
        client = oai(gw)
        for _ in range(2):
            with pytest.raises(openai.BadRequestError):
                ask(client, "tell me about nightingale")
        ask(client, "what is the budget, the budget?")  # flagged once, however many matches
        ask(client, "hello")
        text = metrics_text(gw.url)

    assert value(text, "sluicegate_guard_verdicts_total", guard="no-codename", action="block", direction="input") == 2
    assert value(text, "sluicegate_guard_verdicts_total", guard="watch-budget", action="flag", direction="input") == 1
    assert value(text, "sluicegate_guard_verdicts_total") == 3
    assert value(text, "sluicegate_requests_total", decision="blocked", status_class="4xx", consumer="alice") == 2
    assert value(text, "sluicegate_requests_total", decision="allowed", status_class="2xx") == 2
    assert value(text, "gen_ai_server_request_duration_seconds_count", error_type="content_blocked") == 2
    # Blocked before the upstream: no upstream time, no overhead observation.
    assert value(text, "gen_ai_client_operation_duration_seconds_count") == 2
    assert value(text, "sluicegate_upstream_errors_total") == 0


def test_budget_and_rate_limit_refusals_and_the_remaining_budget(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    # A call reserves its worst case (50 output tokens at 2 USD per million: 100 micro-units) and
    # costs 22: with 150 in the budget, calls pass while spent + 100 <= 150 (spent 0, 22, 44), the
    # fourth is refused (66 + 100 > 150).
    limits = """\
limits:
  budgets:
    - {name: tiny, scope: consumer, match: [alice], amount: 0.00015, window: month}
  rate_limits:
    - {name: bob-rpm, scope: consumer, match: [bob], requests: 1, window: minute}
"""

    def edit(text: str) -> str:
        return text.replace("models:\n", "models:\n" + PRICED, 1) + limits

    with metered(tmp_path, upstream_url, edit=edit) as gw:
        alice = oai(gw)
        results = []
        for _ in range(4):
            try:
                ask(alice, model="priced", max_tokens=50)
                results.append(200)
            except openai.RateLimitError as exc:
                assert exc.code == "budget_exceeded"
                results.append(429)
        bob = oai(gw, "bob")
        ask(bob)
        with pytest.raises(openai.RateLimitError):
            ask(bob)
        text = metrics_text(gw.url)

    assert results == [200, 200, 200, 429]
    assert value(text, "sluicegate_limit_refusals_total", consumer="alice", kind="budget", limit="tiny") == 1
    assert value(text, "sluicegate_limit_refusals_total", consumer="bob", kind="requests", limit="bob-rpm") == 1
    assert value(text, "sluicegate_limit_refusals_total") == 2
    assert value(text, "sluicegate_requests_total", decision="limited", status_class="4xx") == 2
    budget = {"budget": "tiny", "scope": "consumer", "value": "alice", "currency": "USD"}
    assert value(text, "sluicegate_budget_limit", **budget) == pytest.approx(150 / 1e6)
    assert value(text, "sluicegate_budget_remaining", **budget) == pytest.approx((150 - 3 * 22) / 1e6)
    assert value(text, "sluicegate_budget_state_up") == 1
    # Bob's limit is a rate limit, not a budget: no budget series for him.
    assert label_values(text, "sluicegate_budget_remaining", "value") == {"alice"}


@pytest.mark.parametrize(
    ("reply", "stream", "kind"),
    [
        (Reply(status=500), False, "upstream_error"),
        (Reply(status=503), False, "upstream_unavailable"),
        (Reply(status=429), False, "upstream_rate_limited"),
        (Reply(fault="reset"), False, "upstream_error"),
        (Reply(fault="reset"), True, "upstream_stream_cut"),
        (Reply(fault="hang"), False, "upstream_timeout"),
    ],
    ids=["500", "503", "429", "reset", "stream-cut", "timeout"],
)
def test_upstream_errors_are_counted_by_kind(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str, reply: Reply, stream: bool, kind: str
) -> None:
    with metered(tmp_path, upstream_url, read_s=0.5) as gw:
        upstream.enqueue(reply)
        client = oai(gw)
        if stream:
            with pytest.raises(openai.APIError):
                list(ask(client, stream=True))
        else:
            with pytest.raises(openai.APIError):
                ask(client)
        ask(client)
        text = metrics_text(gw.url)

    assert value(text, "sluicegate_upstream_errors_total", provider="mock", kind=kind) == 1
    assert value(text, "sluicegate_upstream_errors_total") == 1
    labels = {"provider": "mock", "gen_ai_request_model": "gpt-4o-mini"}
    assert value(text, "gen_ai_client_operation_duration_seconds_count", error_type=kind, **labels) == 1
    assert value(text, "gen_ai_client_operation_duration_seconds_count", error_type="", **labels) == 1
    assert value(text, "sluicegate_requests_total", decision="allowed", status_class="2xx") == 1
    # A stream cut after its start is counted with the status the audit records for it (502).
    failed = 4 if kind == "upstream_rate_limited" else 5
    assert value(text, "sluicegate_requests_total", status_class=f"{failed}xx") == 1
    if kind == "upstream_timeout":
        # The upstream's time is the time the gateway waited for it.
        assert value(text, "gen_ai_client_operation_duration_seconds_sum", error_type=kind) >= 0.5


def test_made_up_model_names_count_under_one_label(tmp_path: Path, upstream_url: str) -> None:
    with metered(tmp_path, upstream_url) as gw:
        client = oai(gw)
        for i in range(50):
            with pytest.raises(openai.NotFoundError):
                ask(client, model=f"invented-{i}")
        # A glob route counts under its configured name, whatever name matched it.
        for i in range(3):
            ask(client, model=f"open-{i}")
        text = metrics_text(gw.url)

    assert "invented-" not in text and "open-0" not in text
    assert value(text, "sluicegate_requests_total", model="other", decision="rejected", status_class="4xx") == 50
    assert label_values(text, "sluicegate_requests_total", "model") == {"other", "open-*"}
    assert value(text, "sluicegate_requests_total", model="open-*", decision="allowed") == 3
    assert value(text, "gen_ai_server_request_duration_seconds_count", gen_ai_request_model="other") == 50


def test_refusals_the_audit_aggregates_are_counted_one_by_one(tmp_path: Path, upstream_url: str) -> None:
    with metered(tmp_path, upstream_url) as gw:
        bad = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-not-a-key", max_retries=0)
        for _ in range(15):
            with pytest.raises(openai.AuthenticationError):
                ask(bad)
        with httpx.Client(base_url=gw.url) as anonymous:
            for i in range(12):
                assert anonymous.get(f"/scan/{i}").status_code == 404
        text = metrics_text(gw.url)
        audited = gw.audit()

    assert value(text, "sluicegate_requests_total", consumer="none", endpoint="chat", decision="denied") == 15
    assert value(text, "sluicegate_requests_total", consumer="none", endpoint="unknown", status_class="4xx") == 12
    # ... while the audit keeps only the first ones per source (the rest go into a summary).
    assert len(audited) < 27


def test_the_exposition_holds_no_secret_and_no_request_id(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    with metered(tmp_path, upstream_url) as gw:
        client = oai(gw)
        for _ in range(3):
            ask(client)
        resp = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        upstream.enqueue(Reply(status=401, error_message="Incorrect API key provided: {key}"))
        with pytest.raises(openai.APIError):
            ask(client)
        text = metrics_text(gw.url)
        keys = list(gw.keys.values())

    assert CANARY_KEY not in text and CANARY_KEY[:12] not in text
    assert not any(key in text or key[:12] in text for key in keys)
    assert resp.headers["x-request-id"] not in text and "req_" not in text
    assert value(text, "sluicegate_upstream_errors_total", kind="upstream_auth_error") == 1


def test_admin_listener_serves_metrics_and_health(tmp_path: Path, upstream_url: str) -> None:
    with run_gateway(tmp_path, upstream_url) as gw, serve_in_thread(gw.app.admin_app) as admin:
        ask(oai(gw))
        # The data port does not serve metrics unless told to.
        assert httpx.get(gw.url + "/metrics").status_code == 404
        text = metrics_text(admin)
        assert value(text, "sluicegate_requests_total", decision="allowed") == 1
        assert httpx.get(admin + "/healthz").json() == {"status": "ok"}
        assert httpx.get(admin + "/readyz").json()["status"] == "ready"
        assert httpx.get(admin + "/v1/models").status_code == 404
        assert httpx.post(admin + "/metrics").status_code == 405
        head = httpx.head(admin + "/metrics")
        assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0
        openmetrics = httpx.get(admin + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
        assert openmetrics.text.endswith("# EOF\n")
        plain = httpx.get(admin + "/metrics")
        assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")
        # Admin scrapes are neither audited nor counted as calls; the data port's 404 is both.
        audited = len(gw.audit())
        text = metrics_text(admin)
        assert value(text, "sluicegate_requests_total", endpoint="chat") == 1
        assert value(text, "sluicegate_requests_total", endpoint="unknown", status_class="4xx") == 1
        assert value(text, "sluicegate_requests_total") == 2
        assert len(gw.audit()) == audited


def test_metrics_off_takes_the_stage_out_and_serves_nothing(tmp_path: Path, upstream_url: str) -> None:
    off = "observability:\n  metrics:\n    enabled: false\n    on_data_port: true\n"
    with run_gateway(tmp_path, upstream_url, off) as gw, serve_in_thread(gw.app.admin_app) as admin:
        assert "metrics" not in gw.app.pipeline.names
        ask(oai(gw))
        assert httpx.get(gw.url + "/metrics").status_code == 404
        assert httpx.get(admin + "/metrics").status_code == 404
        assert httpx.get(admin + "/healthz").status_code == 200
    (tmp_path / "on").mkdir()
    with run_gateway(tmp_path / "on", upstream_url) as gw:
        assert gw.app.pipeline.names[-1] == "metrics"


def test_reloads_and_the_audit_writer_are_read_at_scrape_time(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    fast = "audit:\n  flush_interval_s: 0.01\n  retry_s: 0.05\n"
    # No file watcher: the test says when the config is read again.
    with metered(tmp_path, upstream_url, fast, watch_interval_s=3600) as gw:
        client = oai(gw)
        for _ in range(3):
            ask(client)
        gw.audit()
        text = metrics_text(gw.url)
        assert value(text, "sluicegate_audit_events_written_total") == 3
        assert value(text, "sluicegate_audit_write_duration_seconds_count") >= 1
        assert value(text, "sluicegate_audit_store_up") == 1
        assert value(text, "sluicegate_config_reloads_total") == 0

        gw.reconfigure(lambda text: text)
        good = gw.config_path.read_text()
        gw.config_path.write_text(good + "nonsense: true\n")
        assert not asyncio.run(gw.app.reload())
        text = metrics_text(gw.url)
        assert value(text, "sluicegate_config_reloads_total") == 1
        assert value(text, "sluicegate_config_reload_failures_total") == 1
        assert value(text, "sluicegate_config_last_reload_successful") == 0
        gw.config_path.write_text(good)

        # The store goes away: events spill, and the metrics say so.
        rename_table(gw, "audit_events", "audit_events_away")
        for _ in range(2):
            ask(client)
        wait_for(lambda: value(metrics_text(gw.url), "sluicegate_audit_events_spilled_total") == 2)
        text = metrics_text(gw.url)
        assert value(text, "sluicegate_audit_store_up") == 0
        assert value(text, "sluicegate_audit_write_failures_total") >= 1
        assert value(text, "sluicegate_audit_events_written_total") == 3
        rename_table(gw, "audit_events_away", "audit_events")
        wait_for(lambda: value(metrics_text(gw.url), "sluicegate_audit_events_replayed_total") == 2)


def rename_table(gw: RunningGateway, old: str, new: str) -> None:
    with gw.app.engine.begin() as conn:
        conn.execute(sa.text(f"ALTER TABLE {old} RENAME TO {new}"))


def test_label_combinations_are_bounded() -> None:
    metrics = GatewayMetrics()
    children: Children[Any] = Children(metrics.request_duration.metric, 3, metrics.overflow_of("test"), fold=(2,))
    for i in range(20):
        children.get(("chat", "openai", f"model-{i}", "mock", "")).observe(0.1)
    assert len(children.cache) == 4  # three, then the folded one
    assert children.cache[("chat", "openai", "other", "mock", "")] is children.get(
        ("chat", "openai", "model-99", "mock", "")
    )
    text = generate(metrics)
    assert value(text, "gen_ai_server_request_duration_seconds_count", gen_ai_request_model="other") == 17
    assert value(text, "sluicegate_metrics_label_overflow_total", metric="test") == 18
    assert "model-3" not in text


def test_a_configs_label_combinations_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recorder_module, "MAX_SERIES", 3)
    config = tmp_path / "sluicegate.yaml"
    many = "".join(f"  - {{name: c{i}, models: ['*']}}\n" for i in range(10))
    config.write_text(BASE_CONFIG.format(upstream="http://127.0.0.1:9", read_s=5) + many)
    snapshot = load_config(config)
    metrics = GatewayMetrics()
    recorder = metrics.recorder(snapshot)
    for i in range(10):
        call = Call("req_x", "chat", snapshot, {})
        call.consumer = snapshot.consumers[f"c{i}"]
        call.model_requested = "gpt-4o-mini"
        call.status = 200
        recorder.record(call)
    text = generate(metrics)
    assert label_values(text, "sluicegate_requests_total", "consumer") == {"c0", "c1", "c2", "other"}
    assert value(text, "sluicegate_requests_total", consumer="other", model="other") == 7
    assert value(text, "sluicegate_requests_total") == 10
    assert value(text, "sluicegate_metrics_label_overflow_total", metric="series") == 7


def test_folded_figures_fall_in_the_buckets_the_library_would_choose(tmp_path: Path) -> None:
    """Calls are recorded as plain numbers and folded into the library's objects later: each value
    lands in the same bucket, and sums and counts match, as if the library had observed it."""
    config = tmp_path / "sluicegate.yaml"
    config.write_text(BASE_CONFIG.format(upstream="http://127.0.0.1:9", read_s=5))
    snapshot = load_config(config)
    metrics = GatewayMetrics()
    recorder = metrics.recorder(snapshot)
    reference = Histogram("reference", "", buckets=TOKEN_BUCKETS, registry=CollectorRegistry())
    # bounds themselves, values between, zero, and past the last bound
    values = [0, 1, 4, 5, 16, 17, 1000, 67108864, 67108865, 10**12]
    for n in values:
        call = Call("req_x", "chat", snapshot, {})
        call.consumer = snapshot.consumers["alice"]
        call.model_requested = "gpt-4o-mini"
        call.route = snapshot.route_for("gpt-4o-mini")
        call.status = 200
        call.prompt_tokens = n
        recorder.record(call)
        reference.observe(n)
    text = generate(metrics)
    ours = {
        s.labels["le"]: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "gen_ai_client_token_usage_bucket" and s.labels["gen_ai_token_type"] == "input"
    }
    theirs = {s.labels["le"]: s.value for s in next(iter(reference.collect())).samples if s.name == "reference_bucket"}
    assert ours == theirs and len(ours) == len(TOKEN_BUCKETS) + 1
    assert value(text, "gen_ai_client_token_usage_sum", gen_ai_token_type="input") == sum(values)
    assert value(text, "gen_ai_client_token_usage_count", gen_ai_token_type="input") == len(values)
    assert value(text, "sluicegate_tokens_total", type="input") == sum(values)
    # Folded once: reading again adds nothing.
    assert value(generate(metrics), "sluicegate_tokens_total", type="input") == sum(values)


def generate(metrics: GatewayMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_a_consumer_made_from_a_jwts_groups_counts_as_other(tmp_path: Path) -> None:
    config = tmp_path / "sluicegate.yaml"
    text = BASE_CONFIG.format(upstream="http://127.0.0.1:9", read_s=5)
    config.write_text(text + "groups:\n  - {name: eng, models: ['*']}\n")
    snapshot = load_config(config)
    metrics = GatewayMetrics()
    recorder = metrics.recorder(snapshot)
    for subject in ("jwt:issuer:u1", "jwt:issuer:u2", "alice"):
        call = Call("req_x", "chat", snapshot, {})
        consumer = snapshot.consumer_for_groups(subject, ["eng"])
        call.consumer = consumer if subject != "alice" else snapshot.consumers["alice"]
        call.model_requested = "gpt-4o-mini"
        call.status = 200
        recorder.record(call)
    out = generate(metrics)
    assert "u1" not in out and "u2" not in out
    assert label_values(out, "sluicegate_requests_total", "consumer") == {"other", "alice"}
    assert value(out, "sluicegate_requests_total", consumer="other") == 2


# -- a real Prometheus scraping `sluicegate serve --admin-port` ---------------------------------------

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")


@contextlib.contextmanager
def prometheus(tmp: Path, target: str) -> Iterator[str]:
    """A Prometheus on a free loopback port scraping `target` every second; yields its URL."""
    assert PROMETHEUS is not None
    port = free_port()
    config = tmp / "prometheus.yml"
    config.write_text(
        textwrap.dedent(f"""\
            global: {{scrape_interval: 1s, evaluation_interval: 1s}}
            scrape_configs:
              - job_name: sluicegate
                scrape_interval: 1s
                static_configs: [{{targets: ["{target}"]}}]
            """)
    )
    log = (tmp / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, (tmp / "prometheus.log").read_text()
        try:
            return httpx.get(url + "/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, timeout=30)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def query(url: str, promql: str) -> float | None:
    """The single value of an instant query (None: no result yet)."""
    resp = httpx.get(url + "/api/v1/query", params={"query": promql}, timeout=5)
    resp.raise_for_status()
    result = resp.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def wait_for_value(url: str, promql: str, expected: float, timeout: float = 30) -> None:
    """Poll Prometheus until the query gives `expected` (its scrapes happen every second)."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = query(url, promql)
        if seen == expected:
            return
        time.sleep(0.2)
    raise AssertionError(f"{promql} = {seen}, expected {expected}")


@pytest.mark.skipif(PROMETHEUS is None, reason="Debian's `prometheus` is not installed (.ci/run installs it)")
def test_a_real_prometheus_scrapes_the_admin_port(tmp_path: Path, upstream: FakeUpstream, upstream_url: str) -> None:
    data_dir = tmp_path / "data"
    config = tmp_path / "sluicegate.yaml"
    config.write_text(with_claude(BASE_CONFIG.format(upstream=upstream_url, read_s=5), upstream_url, "claude"))
    engine = create_engine(Settings(data_dir=data_dir).db_url())
    key = KeyStore(engine).create("alice")[0]
    engine.dispose()
    admin_port = free_port()
    with (
        gateway_process(data_dir, "--config", str(config), "--admin-port", str(admin_port)) as gw,
        prometheus(tmp_path, f"127.0.0.1:{admin_port}") as prom,
    ):
        # Metrics are on the admin port only.
        assert httpx.get(gw.url + "/metrics").status_code == 404
        wait_for_value(prom, 'up{job="sluicegate"}', 1)
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
        for _ in range(3):
            ask(client)
        anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0).messages.create(
            model="claude", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        )
        with pytest.raises(openai.NotFoundError):
            ask(client, model="made-up")

        wait_for_value(prom, 'sum(sluicegate_requests_total{decision="allowed"})', 4)
        wait_for_value(prom, 'sum(sluicegate_requests_total{status_class="4xx", model="other"})', 1)
        wait_for_value(prom, 'sum(sluicegate_tokens_total{type="output"})', 4 * COMPLETION)
        wait_for_value(prom, 'sum(sluicegate_tokens_total{consumer="alice", type="input"})', 4 * PROMPT)
        wait_for_value(prom, 'sum(gen_ai_client_operation_duration_seconds_count{gen_ai_provider_name="anthropic"})', 1)
        wait_for_value(prom, "sum(sluicegate_gateway_overhead_seconds_count)", 4)
        wait_for_value(prom, 'count(count by (model) (sluicegate_requests_total{consumer="alice"}))', 3)
        # Five calls, and the data port's 404 for /metrics
        wait_for_value(prom, "sluicegate_audit_events_written_total", 6)
        # Every query of the Grafana dashboard is valid PromQL and finds data.
        for promql in dashboard_queries():
            resp = httpx.get(prom + "/api/v1/query", params={"query": promql}, timeout=5).json()
            assert resp["status"] == "success", (promql, resp)


DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "sluicegate-dashboard.json"


def dashboard_queries() -> list[str]:
    """Every PromQL of the Grafana dashboard, with Grafana's variables given plain values."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    # A variable's `label_values(metric, label)` is Grafana's; the same question in PromQL:
    for variable in dashboard["templating"]["list"]:
        metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["query"]["query"]).groups()  # type: ignore[union-attr]
        queries.append(f"group by ({label}) ({metric})")
    for variable, plain in (("$__rate_interval", "1m"), ("$__range", "1h"), ("$consumer", ".*"), ("$model", ".*")):
        queries = [q.replace(variable, plain) for q in queries]
    return queries


def test_the_grafana_dashboard_reads_only_metrics_the_gateway_exposes(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    assert {p["type"] for p in dashboard["panels"]} <= {"row", "timeseries", "stat"}
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    with metered(tmp_path, upstream_url) as gw:
        ask(oai(gw))
        text = metrics_text(gw.url)
    # Every family, with or without a sample yet (a counter's name ends in `_total`)
    exposed = set(re.findall(r"^# HELP (\S+)", text, re.M))
    exposed |= {f"{name}_{part}" for name in exposed for part in ("bucket", "count", "sum")}
    names = r"\b((?:sluicegate|gen_ai)_[a-z_]+)\b(?!\s*[=!~])"
    used = {name for q in dashboard_queries() for name in re.findall(names, q)}
    assert used and used <= exposed, used - exposed


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian's `prometheus`) is not installed")
def test_promtool_finds_no_naming_problem(tmp_path: Path, upstream: FakeUpstream, upstream_url: str) -> None:
    with metered(tmp_path, upstream_url) as gw:
        client = oai(gw)
        ask(client)
        list(ask(client, stream=True))
        upstream.enqueue(Reply(status=503))
        with pytest.raises(openai.APIError):
            ask(client)
        text = metrics_text(gw.url)
    assert PROMTOOL is not None
    checked = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    assert not checked.stdout.strip() and not checked.stderr.strip()


def test_cache_results_and_what_hits_saved(tmp_path: Path, upstream: FakeUpstream, upstream_url: str) -> None:
    extra = "cache: {enabled: true}\n"
    with metered(tmp_path, upstream_url, extra, lambda text: text.replace("models:\n", "models:\n" + PRICED, 1)) as gw:
        for _ in range(3):
            ask(oai(gw), "cached question", model="priced")
        ask(oai(gw, "bob"), "cached question")  # bob's own entry: a miss
        oai(gw).with_options(default_headers={"Cache-Control": "no-store"}).chat.completions.create(
            model="priced", messages=[{"role": "user", "content": "cached question"}]
        )
        text = metrics_text(gw.url)
    results = {"consumer": "alice", "model": "priced"}
    assert value(text, "sluicegate_cache_requests_total", result="miss", **results) == 1
    assert value(text, "sluicegate_cache_requests_total", result="hit", **results) == 2
    assert value(text, "sluicegate_cache_requests_total", result="bypass", **results) == 1
    assert value(text, "sluicegate_cache_requests_total", consumer="bob", result="miss") == 1
    assert value(text, "sluicegate_cache_saved_tokens_total", **results) == 2 * (PROMPT + COMPLETION)
    assert value(text, "sluicegate_cache_saved_cost_total", currency="USD", **results) == pytest.approx(
        2 * COMPLETION * 2 / 1e6
    )
    # Two entries (alice's and bob's), read at scrape time.
    assert value(text, "sluicegate_cache_entries", backend="memory") == 2
    assert value(text, "sluicegate_cache_bytes", backend="memory") > 0
    assert value(text, "sluicegate_cache_store_errors_total") == 0
    # Hits spent no tokens and cost nothing: only the two calls that went upstream count.
    assert value(text, "sluicegate_tokens_total", model="priced", type="output") == 2 * COMPLETION
    assert value(text, "sluicegate_cost_total", model="priced") == pytest.approx(2 * COMPLETION * 2 / 1e6)
