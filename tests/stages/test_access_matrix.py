"""The authorization matrix: every consumer x model x endpoint x streaming, asserted over HTTP.

The expected outcome comes from `POLICY`, a plain restatement of the config below, not from the
gateway's own code.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fnmatch
import itertools
import json
from collections.abc import Iterator

import pytest

from sluicegate.store.keys import KeyStore
from sluicegate.testing import FakeUpstream
from tests.conftest import RunningGateway, assert_openai_error, run_gateway

EXTRA = """\
groups:
  - name: engineering
    models: ["gpt-*"]
    endpoints: [chat, completions, models]
  - name: analytics
    models: [text-embedding-3-small]
    endpoints: [embeddings, models]
    allow_streaming: false
"""
#: appended to the base config's consumers (alice: all models, bob: gpt-4o-mini)
MORE_CONSUMERS = """\
  - name: carol
    groups: [engineering]
    allow_streaming: false
  - name: dave
    groups: [analytics, engineering]
  - name: erin
    models: [team-model]
    endpoints: [chat]
    max_tokens: 100
  - name: frank
    models: ["*"]
    providers: [elsewhere-*]
"""

POLICY: dict[str, dict[str, object]] = {
    "alice": {"models": ["*"], "endpoints": None, "stream": True, "providers": None},
    "bob": {"models": ["gpt-4o-mini"], "endpoints": None, "stream": True, "providers": None},
    "carol": {"models": ["gpt-*"], "endpoints": {"chat", "completions", "models"}, "stream": False, "providers": None},
    # groups in order: analytics sets allow_streaming first; allow-lists are the union
    "dave": {
        "models": ["text-embedding-3-small", "gpt-*"],
        "endpoints": {"embeddings", "models", "chat", "completions"},
        "stream": False,
        "providers": None,
    },
    "erin": {"models": ["team-model"], "endpoints": {"chat"}, "stream": True, "providers": None},
    "frank": {"models": ["*"], "endpoints": None, "stream": True, "providers": ["elsewhere-*"]},
}
ROUTES = {"gpt-4o-mini", "team-model", "text-embedding-3-small", "open-*"}
MODELS = ["gpt-4o-mini", "team-model", "text-embedding-3-small", "open-x", "gpt-4.1"]
ENDPOINTS = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "embeddings": "/v1/embeddings"}


def expected(consumer: str, model: str, endpoint: str, stream: bool) -> int:
    policy = POLICY[consumer]
    endpoints = policy["endpoints"]
    if endpoints is not None and endpoint not in endpoints:  # type: ignore[operator]
        return 403
    if not any(fnmatch.fnmatchcase(model, r) for r in ROUTES):
        return 404
    if not any(fnmatch.fnmatchcase(model, m) for m in policy["models"]):  # type: ignore[attr-defined]
        return 403
    if policy["providers"] is not None and not any(
        fnmatch.fnmatchcase("mock", p)
        for p in policy["providers"]  # type: ignore[attr-defined]
    ):
        return 403
    if stream and not policy["stream"]:
        return 403
    return 200


def body(endpoint: str, model: str, stream: bool) -> dict[str, object]:
    if endpoint == "embeddings":
        return {"model": model, "input": "x"}
    if endpoint == "completions":
        return {"model": model, "prompt": "x", "stream": stream, "max_tokens": 5}
    return {"model": model, "messages": [{"role": "user", "content": "x"}], "stream": stream, "max_tokens": 5}


def _reload(gw: RunningGateway, text: str) -> None:
    gw.config_path.write_text(text)
    assert asyncio.run(gw.app.reload()), gw.app.last_reload_error


@pytest.fixture(scope="module")
def matrix_gw(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    tmp = tmp_path_factory.mktemp("matrix")
    with run_gateway(tmp, upstream_url, EXTRA) as gw:
        text = gw.config_path.read_text()
        text = text.replace("    models: [gpt-4o-mini]\n", "    models: [gpt-4o-mini]\n" + MORE_CONSUMERS, 1)
        _reload(gw, text)
        store = KeyStore(gw.app.engine)
        for name in ("carol", "dave", "erin", "frank"):
            gw.keys[name] = store.create(name)[0]
        gw.app.keys.reload()
        yield gw


CASES = [
    (c, m, e, s)
    for c, m, e, s in itertools.product(POLICY, MODELS, ENDPOINTS, (False, True))
    if not (e == "embeddings" and s)
]


@pytest.mark.parametrize(("consumer", "model", "endpoint", "stream"), CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_matrix(
    matrix_gw: RunningGateway, upstream: FakeUpstream, consumer: str, model: str, endpoint: str, stream: bool
) -> None:
    want = expected(consumer, model, endpoint, stream)
    with matrix_gw.client(consumer) as c:
        resp = c.post(ENDPOINTS[endpoint], json=body(endpoint, model, stream))
    if want == 200:
        assert resp.status_code == 200, resp.text
        assert upstream.calls == 1
    else:
        error = assert_openai_error(resp, want)
        assert upstream.calls == 0
        event = matrix_gw.last_audit()
        assert event["request_id"] == resp.headers["x-request-id"] and event["status"] == want
        if want == 403:
            assert event["rule"] and event["decision"] == "denied"
            assert error["message"].startswith(f"Consumer '{consumer}'")
            # a refusal names this consumer only
            assert not any(other in error["message"] for other in POLICY if other != consumer)


def test_models_list_follows_the_rules(matrix_gw: RunningGateway) -> None:
    def listed(who: str) -> list[str] | int:
        with matrix_gw.client(who) as c:
            resp = c.get("/v1/models")
        return sorted(m["id"] for m in resp.json()["data"]) if resp.status_code == 200 else resp.status_code

    assert listed("carol") == ["gpt-4o-mini"]
    assert listed("dave") == ["gpt-4o-mini", "text-embedding-3-small"]
    assert listed("erin") == 403  # erin may call the chat endpoint only
    assert listed("frank") == []


def test_max_tokens_cap(matrix_gw: RunningGateway, upstream: FakeUpstream) -> None:
    with matrix_gw.client("erin") as c:
        over = c.post(ENDPOINTS["chat"], json={**body("chat", "team-model", False), "max_tokens": 500})
        over2 = c.post(ENDPOINTS["chat"], json={**body("chat", "team-model", False), "max_completion_tokens": 101})
        under = c.post(ENDPOINTS["chat"], json={**body("chat", "team-model", False), "max_tokens": 100})
    assert assert_openai_error(over, 403, "max_tokens_exceeded")["param"] == "max_tokens"
    assert assert_openai_error(over2, 403, "max_tokens_exceeded")["param"] == "max_completion_tokens"
    assert under.status_code == 200
    assert upstream.calls == 1


def _window_around_now(minutes: int) -> str:
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(minutes=minutes), now + dt.timedelta(minutes=minutes)
    if start.date() != end.date():  # keep the test away from midnight edge cases
        return "daily 00:00-24:00 UTC"
    return f"daily {start:%H:%M}-{end:%H:%M} UTC"


def _window_elsewhere() -> str:
    tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).strftime("%a")
    return f"{tomorrow} 00:00-24:00 UTC"


@pytest.mark.parametrize(
    ("rules", "status", "code"),
    [
        ({"time_windows": [_window_around_now(30)]}, 200, None),
        ({"time_windows": [_window_elsewhere()]}, 403, "outside_time_window"),
        ({"source_ips": ["127.0.0.0/8"]}, 200, None),
        ({"source_ips": ["10.0.0.0/8", "2001:db8::/32"]}, 403, "source_ip_not_allowed"),
        ({"allow_streaming": False}, 200, None),
    ],
    ids=["in-window", "outside-window", "from-loopback", "not-from-range", "non-stream-ok"],
)
def test_time_and_source_rules(
    upstream_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    upstream: FakeUpstream,
    rules: dict[str, object],
    status: int,
    code: str | None,
) -> None:
    lines = "".join(f"    {k}: {json.dumps(v)}\n" for k, v in rules.items())
    extra = f"groups:\n  - name: limited\n{lines}"
    with run_gateway(tmp_path_factory.mktemp("rules"), upstream_url, extra) as gw:
        text = gw.config_path.read_text().replace("  - name: bob\n", "  - name: bob\n    groups: [limited]\n")
        _reload(gw, text)
        with gw.client("bob") as c:
            resp = c.post(ENDPOINTS["chat"], json=body("chat", "gpt-4o-mini", False))
        if status == 200:
            assert resp.status_code == 200, resp.text
        else:
            assert_openai_error(resp, status, code)
            event = gw.last_audit()
            assert event["rule"] == f"groups.limited.{next(iter(rules))}"
            assert event["outcome"] == code
