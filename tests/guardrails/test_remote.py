"""Remote guard kinds (webhook, moderation, llm_judge) against real servers on loopback.

Every way a remote guard can fail (down, slow, error status, bad answer, oversized answer)
must raise `GuardUnavailable`, so the guard's `on_error` applies; secrets never show in errors.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
import yaml
from pydantic import ValidationError

from sluicegate.config.loader import parse_config
from sluicegate.config.model import GuardConfig
from sluicegate.guardrails.base import Finding, Guard, GuardContext, GuardUnavailable, guard_kinds
from sluicegate.guardrails.llm_judge import SEPARATOR, JudgeSettings, LLMJudgeGuard, first_json_object
from sluicegate.guardrails.moderation import ModerationGuard, ModerationSettings
from sluicegate.guardrails.webhook import WebhookGuard, WebhookSettings, parse_verdict
from sluicegate.testing import FakeUpstream, Reply, serve_in_thread
from sluicegate.vault import Vault
from tests.conftest import CANARY_KEY, free_port

HOOK_SECRET = "hook-secret-0c9d8e7f6a5b4c3d2e1f"
os.environ["TEST_HOOK_TOKEN"] = HOOK_SECRET
os.environ["TEST_HOOK_BROKEN"] = HOOK_SECRET + "\r\nX-Injected: 1"

Complete = Callable[[str, list[dict[str, object]], int], Awaitable[str]]


# --------------------------------------------------------------------------------------------- helpers


def build(cls: type[Guard], settings: dict[str, Any], context: GuardContext, **config: Any) -> Any:
    """A guard of `cls` the way the registry makes one: settings validated by the kind."""
    guard_config = GuardConfig(name=config.pop("name", "g"), kind="test", settings=settings, **config)
    return cls(guard_config, cls.Settings.model_validate(settings), context)


async def _no_complete(model: str, messages: list[dict[str, object]], max_tokens: int) -> str:
    raise AssertionError("this guard must not ask a model")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def make_context(session: aiohttp.ClientSession | None, complete: Complete = _no_complete) -> GuardContext:
    return GuardContext(http=lambda: session, vault=Vault(), complete=complete)


@pytest.fixture
def context(session: aiohttp.ClientSession) -> GuardContext:
    return make_context(session)


def assert_no_secret(exc: BaseException, *secrets: str) -> None:
    """The error shows no secret, and carries no chained error (aiohttp's holds the request headers)."""
    shown = f"{exc} {exc!r}"
    for secret in secrets:
        assert secret not in shown
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)


# --------------------------------------------------------------------------------------------- webhook service

FINDINGS = [{"index": 1, "start": 3, "end": 8, "label": "pii:email", "score": 0.8}]
HUGE = b'{"verdict": "allow", "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'


class HookService:
    """A webhook service with one behaviour per path; records what it received."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, str], bytes]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                kind = (await receive())["type"]
                await send({"type": kind + ".complete"})
                if kind == "lifespan.shutdown":
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.received.append((path, headers, body))
        status, payload, extra = await self.answer(path)
        head = [(b"content-type", b"application/json"), *extra]
        if path == "/huge-chunked":
            await send({"type": "http.response.start", "status": status, "headers": head})
            for _ in range(40):
                await send({"type": "http.response.body", "body": b" " * 64 * 1024, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        head.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": payload})

    async def answer(self, path: str) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        verdicts: dict[str, object] = {
            "/allow": {"verdict": "allow"},
            "/allow-with-findings": {"verdict": "allow", "findings": FINDINGS},
            "/block": {"verdict": "block", "findings": FINDINGS},
            "/block-bare": {"verdict": "block"},
            "/flag-bare": {"verdict": "flag", "findings": []},
            "/redact": {"verdict": "redact", "findings": [{"index": 0, "start": 0, "end": 2, "label": "x"}]},
            "/redact-bare": {"verdict": "redact"},
            "/unknown-verdict": {"verdict": "maybe"},
            "/bad-index": {"verdict": "block", "findings": [{"index": 7, "start": 0, "end": 1}]},
            "/bad-span": {"verdict": "block", "findings": [{"index": 0, "start": 0, "end": 999}]},
            "/bad-score": {"verdict": "block", "findings": [{"index": 0, "score": 3}]},
            "/text-label": {"verdict": "flag", "findings": [{"index": 0, "label": "the secret was hunter2 ok"}]},
            "/not-object": ["block"],
            "/moderation-short": {"id": "modr-1", "model": "m", "results": []},
        }
        if path in verdicts:
            return 200, orjson.dumps(verdicts[path]), []
        if path == "/slow":
            await asyncio.sleep(1.0)
            return 200, b'{"verdict": "allow"}', []
        if path == "/500":
            return 500, b'{"error": "boom"}', []
        if path == "/invalid-json":
            return 200, b"<html>oops</html>", []
        if path in ("/huge", "/huge-chunked"):
            return 200, HUGE, []
        if path == "/redirect":
            return 302, b"", [(b"location", b"/block")]
        return 404, b"{}", []


@pytest.fixture(scope="module")
def hook_service() -> HookService:
    return HookService()


@pytest.fixture(scope="module")
def hook_url(hook_service: HookService) -> Iterator[str]:
    with serve_in_thread(hook_service) as url:
        yield url


@pytest.fixture
def hook(hook_service: HookService, hook_url: str) -> HookService:
    hook_service.received.clear()
    return hook_service


def webhook(context: GuardContext, url: str, **config: Any) -> WebhookGuard:
    headers = config.pop("headers", {"X-Hook-Token": "env://TEST_HOOK_TOKEN"})
    guard: WebhookGuard = build(WebhookGuard, {"url": url, "headers": headers}, context, name="hook", **config)
    return guard


TEXTS = ["hello there", "my address is a@b.example"]


# --------------------------------------------------------------------------------------------- webhook


async def test_webhook_allow_posts_the_texts_with_resolved_headers(
    context: GuardContext, hook: HookService, hook_url: str
) -> None:
    assert await webhook(context, hook_url + "/allow").ascan(TEXTS) == []
    [(path, headers, body)] = hook.received
    assert path == "/allow"
    assert orjson.loads(body) == {"guard": "hook", "texts": TEXTS}
    assert headers["x-hook-token"] == HOOK_SECRET
    assert headers["content-type"] == "application/json"


async def test_webhook_block_with_findings(context: GuardContext, hook: HookService, hook_url: str) -> None:
    findings = await webhook(context, hook_url + "/block").ascan(TEXTS)
    assert findings == [Finding(1, 3, 8, "pii:email", 0.8)]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/block-bare", [Finding(0, 0, len(TEXTS[0]), "webhook")]),
        ("/flag-bare", [Finding(0, 0, len(TEXTS[0]), "webhook")]),
        ("/redact", [Finding(0, 0, 2, "x")]),
        ("/allow-with-findings", []),
        ("/text-label", [Finding(0, 0, len(TEXTS[0]), "webhook")]),
    ],
    ids=["block-without-findings", "flag-without-findings", "redact", "allow-ignores-findings", "label-sanitised"],
)
async def test_webhook_verdicts(
    context: GuardContext, hook: HookService, hook_url: str, path: str, expected: list[Finding]
) -> None:
    assert await webhook(context, hook_url + path).ascan(TEXTS) == expected


@pytest.mark.parametrize(
    "path",
    [
        "/slow",
        "/500",
        "/invalid-json",
        "/huge",
        "/huge-chunked",
        "/redirect",
        "/not-found",
        "/unknown-verdict",
        "/redact-bare",
        "/bad-index",
        "/bad-span",
        "/bad-score",
        "/not-object",
    ],
)
async def test_webhook_failures_make_the_guard_unavailable(
    context: GuardContext, hook: HookService, hook_url: str, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    guard = webhook(context, hook_url + path, timeout_s=0.3)
    with pytest.raises(GuardUnavailable, match="'hook'") as info:
        await guard.ascan(TEXTS)
    assert_no_secret(info.value, HOOK_SECRET, hook_url)
    assert HOOK_SECRET not in caplog.text
    if path == "/redirect":
        assert [p for p, _, _ in hook.received] == ["/redirect"]  # the redirect was not followed


async def test_webhook_down_is_unavailable(context: GuardContext) -> None:
    with pytest.raises(GuardUnavailable, match="cannot reach") as info:
        await webhook(context, f"http://127.0.0.1:{free_port()}/hook").ascan(TEXTS)
    assert_no_secret(info.value, HOOK_SECRET)


async def test_webhook_without_http_client_is_unavailable(hook_url: str) -> None:
    with pytest.raises(GuardUnavailable, match="not running"):
        await webhook(make_context(None), hook_url + "/allow").ascan(TEXTS)


async def test_webhook_unreadable_secret_names_the_header(
    context: GuardContext, hook: HookService, hook_url: str
) -> None:
    guard = webhook(context, hook_url + "/allow", headers={"X-Key": "env://SLUICEGATE_TEST_UNSET_VAR"})
    with pytest.raises(GuardUnavailable, match="X-Key"):
        await guard.ascan(TEXTS)
    assert hook.received == []  # nothing sent without the header


async def test_webhook_secret_with_a_line_break_is_refused(
    context: GuardContext, hook: HookService, hook_url: str
) -> None:
    guard = webhook(context, hook_url + "/allow", headers={"X-Key": "env://TEST_HOOK_BROKEN"})
    with pytest.raises(GuardUnavailable, match="line break") as info:
        await guard.ascan(TEXTS)
    assert_no_secret(info.value, HOOK_SECRET)
    assert hook.received == []


async def test_webhook_literal_header_values_are_sent_as_is(
    context: GuardContext, hook: HookService, hook_url: str
) -> None:
    await webhook(context, hook_url + "/allow", headers={"X-Tenant": "acme"}).ascan(TEXTS)
    assert hook.received[0][1]["x-tenant"] == "acme"


async def test_webhook_no_texts_no_call(context: GuardContext, hook: HookService, hook_url: str) -> None:
    assert await webhook(context, hook_url + "/block").ascan([]) == []
    assert hook.received == []


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"url": "ftp://example.com/hook"}, "http"),
        ({"url": "not a url"}, "http"),
        ({"url": "https://user:pw@example.com/"}, "credentials"),
        ({"url": "https://example.com/", "headers": {"X-A": "a\r\nInjected: 1"}}, "line break"),
        ({"url": "https://example.com/", "headers": {"Bad Name": "x"}}, "header name"),
        ({"url": "https://example.com/", "headers": {"Content-Type": "text/plain"}}, "set by the gateway"),
        ({"url": "https://example.com/", "extra": 1}, "Extra inputs"),
    ],
    ids=["scheme", "garbage", "userinfo", "crlf", "header-name", "reserved-header", "unknown-key"],
)
def test_webhook_settings_are_checked(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        WebhookSettings.model_validate(settings)


# --------------------------------------------------------------------------------------------- moderation


def moderation(context: GuardContext, url: str, **settings: Any) -> ModerationGuard:
    config = {k: settings.pop(k) for k in ("timeout_s",) if k in settings}
    all_settings = {"url": url + "/v1/moderations", "api_key": "env://TEST_UPSTREAM_KEY", **settings}
    guard: ModerationGuard = build(ModerationGuard, all_settings, context, name="mod", **config)
    return guard


MOD_TEXTS = ["hello", "I will kill you", "", "I hate mondays"]


async def test_moderation_flags_inputs(context: GuardContext, upstream: FakeUpstream, upstream_url: str) -> None:
    findings = await moderation(context, upstream_url).ascan(MOD_TEXTS)
    assert findings == [
        Finding(1, 0, len(MOD_TEXTS[1]), "moderation:violence", 0.9),
        Finding(3, 0, len(MOD_TEXTS[3]), "moderation:hate", 0.9),
    ]
    [request] = upstream.requests
    assert request.path == "/v1/moderations"
    assert request.headers["authorization"] == f"Bearer {CANARY_KEY}"
    # One call for the request; the empty text is not sent.
    assert request.json() == {
        "model": "omni-moderation-latest",
        "input": ["hello", "I will kill you", "I hate mondays"],
    }


async def test_moderation_categories_filter(context: GuardContext, upstream: FakeUpstream, upstream_url: str) -> None:
    findings = await moderation(context, upstream_url, categories=["violence"], model="m1").ascan(MOD_TEXTS)
    assert [(f.index, f.label) for f in findings] == [(1, "moderation:violence")]
    assert upstream.requests[0].json()["model"] == "m1"


async def test_moderation_threshold(context: GuardContext, upstream: FakeUpstream, upstream_url: str) -> None:
    # Every category scores 0.01 on a clean input: a threshold below that counts it.
    findings = await moderation(context, upstream_url, threshold=0.005).ascan(["hello"])
    assert [(f.index, f.label.startswith("moderation:")) for f in findings] == [(0, True)]
    assert await moderation(context, upstream_url, threshold=0.95).ascan(MOD_TEXTS) == []


async def test_moderation_nothing_to_send(context: GuardContext, upstream: FakeUpstream, upstream_url: str) -> None:
    assert await moderation(context, upstream_url).ascan(["", "  "]) == []
    assert upstream.requests == []


@pytest.mark.parametrize(
    "reply",
    [Reply(status=500), Reply(status=429), Reply(delay_s=1.0), Reply(fault="reset")],
    ids=["500", "429", "slow", "reset"],
)
async def test_moderation_upstream_failures(
    context: GuardContext, upstream: FakeUpstream, upstream_url: str, reply: Reply
) -> None:
    upstream.enqueue(reply)
    with pytest.raises(GuardUnavailable, match="'mod'") as info:
        await moderation(context, upstream_url, timeout_s=0.3).ascan(MOD_TEXTS)
    assert_no_secret(info.value, CANARY_KEY)


async def test_moderation_wrong_key_is_unavailable(
    context: GuardContext, upstream: FakeUpstream, upstream_url: str
) -> None:
    with pytest.raises(GuardUnavailable, match="HTTP 401") as info:
        await moderation(context, upstream_url, api_key="env://TEST_HOOK_TOKEN").ascan(MOD_TEXTS)
    assert_no_secret(info.value, CANARY_KEY, HOOK_SECRET)


async def test_moderation_answer_without_a_result_per_input(context: GuardContext, hook_url: str) -> None:
    guard: ModerationGuard = build(ModerationGuard, {"url": hook_url + "/moderation-short"}, context)
    with pytest.raises(GuardUnavailable, match="result per input"):
        await guard.ascan(MOD_TEXTS)


def test_moderation_refuses_a_literal_key() -> None:
    with pytest.raises(ValidationError, match="secret reference"):
        ModerationSettings.model_validate({"api_key": "sk-live-123"})


def test_fake_moderations_speak_the_openai_shape(upstream: FakeUpstream, upstream_url: str) -> None:
    with openai.OpenAI(base_url=upstream_url + "/v1", api_key=CANARY_KEY, max_retries=0, timeout=5) as client:
        result = client.moderations.create(model="omni-moderation-latest", input=["kill it", "fine"])
    assert result.id.startswith("modr-")
    assert [r.flagged for r in result.results] == [True, False]
    assert result.results[0].categories.violence and result.results[0].category_scores.violence == 0.9


# --------------------------------------------------------------------------------------------- llm_judge


def upstream_complete(session: aiohttp.ClientSession, upstream_url: str) -> Complete:
    """`GuardContext.complete` the way the gateway does it, straight to the fake upstream's chat completions."""

    async def complete(model: str, messages: list[dict[str, object]], max_tokens: int) -> str:
        async with session.post(
            upstream_url + "/v1/chat/completions",
            json={"model": model, "messages": messages, "max_tokens": max_tokens},
            headers={"Authorization": f"Bearer {CANARY_KEY}"},
        ) as resp:
            if resp.status != 200:
                raise RuntimeError(f"upstream HTTP {resp.status} with key {CANARY_KEY}")
            data = await resp.json()
        content: str = data["choices"][0]["message"]["content"]
        return content

    return complete


@pytest.fixture
def judge_context(session: aiohttp.ClientSession, upstream: FakeUpstream, upstream_url: str) -> GuardContext:
    return make_context(session, upstream_complete(session, upstream_url))


def judge(context: GuardContext, **settings: Any) -> LLMJudgeGuard:
    config = {k: settings.pop(k) for k in ("timeout_s",) if k in settings}
    guard: LLMJudgeGuard = build(LLMJudgeGuard, {"model": "gpt-4o-mini", **settings}, context, name="judge", **config)
    return guard


JUDGE_TEXTS = ["be nice", "now tell me how to pick a lock"]


async def test_judge_block_is_a_finding_on_the_last_text(judge_context: GuardContext, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content='{"verdict":"block","reason":"x","score":0.97}'))
    findings = await judge(judge_context, max_tokens=50).ascan(JUDGE_TEXTS)
    assert findings == [Finding(1, 0, len(JUDGE_TEXTS[1]), "llm_judge", 0.97)]
    [request] = upstream.requests
    body = request.json()
    assert body["model"] == "gpt-4o-mini" and body["max_tokens"] == 50
    [message] = body["messages"]
    assert message["role"] == "user" and SEPARATOR.join(JUDGE_TEXTS) in message["content"]


@pytest.mark.parametrize(
    ("answer", "settings", "blocked"),
    [
        ('{"verdict":"allow","reason":"fine","score":0.1}', {}, False),
        ('Sure! ```json\n{"verdict": "BLOCK", "reason": "lock picking"}\n```', {}, True),
        ('{"verdict":"allow","score":0.95}', {"threshold": 0.9}, True),
        ('{"verdict":"block","score":0.2}', {"threshold": 0.5}, False),
        ('{"verdict":"block"}', {"threshold": 0.5}, True),
    ],
    ids=["allow", "prose-and-fences", "score-over-threshold", "score-under-threshold", "no-score-verdict-decides"],
)
async def test_judge_verdicts(
    judge_context: GuardContext, upstream: FakeUpstream, answer: str, settings: dict[str, Any], blocked: bool
) -> None:
    upstream.enqueue(Reply(content=answer))
    findings = await judge(judge_context, **settings).ascan(JUDGE_TEXTS)
    assert bool(findings) is blocked


@pytest.mark.parametrize(
    "reply",
    [
        Reply(content="I think this one is fine."),
        Reply(content='{"verdict": "maybe"}'),
        Reply(content='{"verdict": "allow"'),
        Reply(status=500),
        Reply(delay_s=1.0),
    ],
    ids=["no-json", "unknown-verdict", "truncated-json", "model-down", "slow"],
)
async def test_judge_failures_make_the_guard_unavailable(
    judge_context: GuardContext, upstream: FakeUpstream, reply: Reply
) -> None:
    upstream.enqueue(reply)
    with pytest.raises(GuardUnavailable, match="'judge'") as info:
        await judge(judge_context, timeout_s=0.3).ascan(JUDGE_TEXTS)
    assert_no_secret(info.value, CANARY_KEY)


async def test_judge_per_text(judge_context: GuardContext, upstream: FakeUpstream) -> None:
    # The fake answers "echo: X" with X, so each text is its own judge's answer, whatever the call order.
    texts = ['{"verdict":"block","score":0.8}', "", '{"verdict":"allow"}', '{"verdict":"block"}']
    findings = await judge(judge_context, prompt="echo: {text}", per_text=True).ascan(texts)
    assert findings == [Finding(0, 0, len(texts[0]), "llm_judge", 0.8), Finding(3, 0, len(texts[3]), "llm_judge")]
    assert len(upstream.requests) == 3  # the empty text is not judged


async def test_judge_per_text_one_failure_fails_the_scan(judge_context: GuardContext, upstream: FakeUpstream) -> None:
    texts = ['{"verdict":"allow"}', "no verdict here"]
    with pytest.raises(GuardUnavailable, match="no JSON object"):
        await judge(judge_context, prompt="echo: {text}", per_text=True).ascan(texts)


async def test_judge_text_too_long_is_unavailable(judge_context: GuardContext, upstream: FakeUpstream) -> None:
    with pytest.raises(GuardUnavailable, match="longer than 10"):
        await judge(judge_context, max_chars=10).ascan(["x" * 11])
    assert upstream.requests == []


async def test_judge_nothing_to_judge(judge_context: GuardContext, upstream: FakeUpstream) -> None:
    assert await judge(judge_context).ascan(["", " "]) == []
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("Judge {text} for {user}", r"unknown placeholder \{user\}"),
        ("Judge {text.upper}", r"unknown placeholder \{text.upper\}"),
        ("Judge {0}", r"unknown placeholder \{0\}"),
        ("Judge this", r"must contain the placeholder \{text\}"),
        ('Answer {"verdict": ...} about {text}', "unknown placeholder"),
        ("Judge {text", "not a valid template"),
    ],
    ids=["unknown-name", "attribute", "positional", "no-text", "unescaped-json", "unclosed"],
)
def test_judge_prompt_is_checked_at_load(prompt: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        JudgeSettings.model_validate({"model": "m", "prompt": prompt})


def test_first_json_object() -> None:
    assert first_json_object('x {bad} {"a": {"b": 1}} {"c": 2}') == {"a": {"b": 1}}
    assert first_json_object("[1, 2]") is None


# --------------------------------------------------------------------------------------------- registry


@pytest.mark.parametrize(
    ("kind", "cls"), [("webhook", WebhookGuard), ("moderation", ModerationGuard), ("llm_judge", LLMJudgeGuard)]
)
def test_kinds_are_registered_as_remote(kind: str, cls: type[Guard]) -> None:
    registered = guard_kinds()[kind]
    assert registered.cls is cls and cls.remote


# --------------------------------------------------------------------------------------------- config and docs

DOC = (Path(__file__).resolve().parents[2] / "docs" / "guardrails-remote.md").read_text()


def test_doc_examples_are_valid_guards() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC, re.S)
    assert len(blocks) == 3
    kinds = guard_kinds()
    seen = set()
    for block in blocks:
        for raw in yaml.safe_load(block)["guards"]:
            config = GuardConfig.model_validate(raw)
            kinds[config.kind].cls.Settings.model_validate(config.settings)
            seen.add(config.kind)
    assert seen == {"webhook", "llm_judge", "moderation"}


def test_doc_protocol_example_round_trips() -> None:
    request, verdict = (orjson.loads(b) for b in re.findall(r"```json\n(.*?)```", DOC, re.S)[:2])
    assert set(request) == {"guard", "texts"}
    assert parse_verdict("compliance", verdict, request["texts"]) == [Finding(1, 11, 30, "card_number", 0.98)]


def test_config_errors_point_at_the_setting() -> None:
    _, issues = parse_config(
        textwrap.dedent("""\
            guards:
              - name: judge
                kind: llm_judge
                settings: {model: gpt-4o-mini, prompt: "Judge {text} for {user}"}
              - name: hook
                kind: webhook
                settings: {url: "file:///etc/passwd"}
            """)
    )
    shown = [str(i) for i in issues]
    assert any("guards[0].settings.prompt" in s and "{user}" in s for s in shown), shown
    assert any("guards[1].settings.url" in s for s in shown), shown


async def test_moderation_unreadable_key_is_unavailable(
    context: GuardContext, upstream: FakeUpstream, upstream_url: str
) -> None:
    with pytest.raises(GuardUnavailable, match="Authorization"):
        await moderation(context, upstream_url, api_key="env://SLUICEGATE_TEST_UNSET_VAR").ascan(MOD_TEXTS)
    assert upstream.requests == []


def test_remote_guards_read_text_as_written() -> None:
    # the engine hands remote kinds the client's own text, not the normalised form
    from sluicegate.guardrails.engine import CallGuards, GuardSet, run_guards

    seen: list[list[str]] = []

    class Probe(WebhookGuard):
        async def ascan(self, texts: Sequence[str]) -> list[Finding]:
            seen.append(list(texts))
            return []

    for cls in (WebhookGuard, ModerationGuard, LLMJudgeGuard):
        assert cls.remote
    config = GuardConfig(name="probe", kind="webhook", settings={"url": "http://127.0.0.1:9/x"})
    guard = Probe(config, WebhookGuard.Settings.model_validate(config.settings), make_context(None))
    text = "".join(chr(ord(c) + 0xFEE0) for c in "Project") + "\u200b X"  # full-width, zero-width
    asyncio.run(run_guards(CallGuards(GuardSet((guard,), (), 0)), [guard], [text], "input"))
    assert seen == [[text]]
