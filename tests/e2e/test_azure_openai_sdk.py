"""The official `openai` SDK's Azure client (`AzureOpenAI`) against the gateway, changing nothing but
`azure_endpoint` and the key: it calls `/openai/deployments/{deployment}/...?api-version=...` with
the key in `api-key`, and the deployment in the path names the model, as on Azure. Its v1 API
(`/openai/v1/...`) is served too."""

from __future__ import annotations

import httpx
import openai
import pytest

from sluicegate.testing import FakeUpstream
from tests.conftest import CANARY_KEY, RunningGateway, assert_openai_error

API_VERSION = "2024-10-21"


def azure(gw: RunningGateway, who: str = "alice", **kwargs: str) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=gw.url, api_key=gw.keys[who], api_version=API_VERSION, max_retries=0, **kwargs
    )


def test_chat_through_a_deployment_path(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    raw = azure(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "echo: hello azure"}]
    )
    assert raw.http_request.url.path == "/openai/deployments/gpt-4o-mini/chat/completions"
    assert "api-key" in raw.http_request.headers and "authorization" not in raw.http_request.headers
    assert raw.parse().choices[0].message.content == "hello azure"
    sent = upstream.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {CANARY_KEY}"
    assert gateway.keys["alice"] not in str(sent.headers)
    event = gateway.last_audit()
    assert event["request_id"] == raw.headers["x-request-id"]
    assert (event["consumer"], event["model_requested"], event["status"]) == ("alice", "gpt-4o-mini", 200)


def test_streamed_chat_and_embeddings(gateway: RunningGateway) -> None:
    client = azure(gateway)
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "echo: one two"}], stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "one two"
    vectors = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(vectors.data) == 2
    assert gateway.last_audit()["model_requested"] == "text-embedding-3-small"


def test_the_deployment_in_the_path_is_the_model_the_rules_see(gateway: RunningGateway) -> None:
    # A client bound to one deployment names another model in its body: Azure serves the path's
    # deployment, and so do the gateway's access rules and routes. bob may use gpt-4o-mini only.
    bound = azure(gateway, "bob", azure_deployment="team-model")
    with pytest.raises(openai.PermissionDeniedError) as refused:
        bound.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.code == "model_not_allowed"
    event = gateway.last_audit()
    assert (event["consumer"], event["model_requested"], event["status"]) == ("bob", "team-model", 403)
    allowed = azure(gateway, "bob", azure_deployment="gpt-4o-mini")
    answer = allowed.chat.completions.create(model="team-model", messages=[{"role": "user", "content": "echo: ok"}])
    assert answer.choices[0].message.content == "ok"


def test_the_v1_api_under_openai(gateway: RunningGateway) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/openai/v1", api_key=gateway.keys["alice"], max_retries=0)
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "echo: v1"}])
    assert answer.choices[0].message.content == "v1"


def test_azure_paths_refuse_what_they_do_not_serve(gateway: RunningGateway) -> None:
    with pytest.raises(openai.AuthenticationError):
        openai.AzureOpenAI(
            azure_endpoint=gateway.url, api_key="sg-not-a-key", api_version=API_VERSION, max_retries=0
        ).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    headers = {"api-key": gateway.keys["alice"]}
    body = {"messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=10) as client:
        for path in (
            "/openai/deployments/gpt-4o-mini/unknown",  # no such operation
            "/openai/deployments//chat/completions",  # no deployment
            "/openai/deployments/" + "d" * 300 + "/chat/completions",  # past the bound
            "/openai/v1/unknown",
        ):
            assert_openai_error(client.post(path, json=body), 404, "unknown_url")
        wrong = client.get("/openai/deployments/gpt-4o-mini/chat/completions?api-version=" + API_VERSION)
        assert_openai_error(wrong, 405)
        # The body needs no model: the path names it.
        answered = client.post(
            "/openai/deployments/gpt-4o-mini/chat/completions",
            params={"api-version": API_VERSION},
            json={"messages": [{"role": "user", "content": "echo: no model field"}]},
        )
        assert answered.status_code == 200, answered.text
        assert answered.json()["choices"][0]["message"]["content"] == "no model field"
