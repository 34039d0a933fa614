"""Guard kind `secrets`: provider key formats, PEM blocks, JWTs and high-entropy tokens.

Keys are built at run time from a seeded generator, so no key-shaped literal sits in the repo.
"""

from __future__ import annotations

import base64
import random
import string

import pytest
from pydantic import ValidationError

from sluicegate.guardrails.secrets import SecretsGuard, shannon_entropy
from tests.guardrails import assert_no_text_in_labels, labels, make, matched, scan

_RNG = random.Random(1234)
ALNUM = string.ascii_letters + string.digits


def rand(n: int, alphabet: str = ALNUM) -> str:
    return "".join(_RNG.choice(alphabet) for _ in range(n))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


JWT = ".".join([b64url(b'{"alg":"HS256","typ":"JWT"}'), b64url(b'{"sub":"1234567890","iat":1516239022}'), rand(43)])
PEM = "\n".join(["-----BEGIN RSA PRIVATE KEY-----", *(rand(64) for _ in range(5)), "-----END RSA PRIVATE KEY-----"])

KEYS = {
    "openai_api_key": "sk-" + rand(48),
    "openai_project_key": "sk-proj-" + rand(60, ALNUM + "_-"),
    "anthropic_api_key": "sk-ant-api03-" + rand(80, ALNUM + "_-"),
    "aws_access_key_id": "AKIA" + rand(16, string.ascii_uppercase + string.digits),
    "aws_session_key_id": "ASIA" + rand(16, string.ascii_uppercase + string.digits),
    "github_token": "ghp_" + rand(36),
    "github_pat": "github_pat_" + rand(22) + "_" + rand(59),
    "slack_token": "xoxb-" + rand(12, string.digits) + "-" + rand(24),
    "stripe_secret_key": "sk_live_" + rand(24),
    "stripe_restricted_key": "rk_live_" + rand(24),
    "google_api_key": "AIza" + rand(35, ALNUM + "_-"),
    "jwt": JWT,
    "private_key": PEM,
}
LABELS = {
    "openai_project_key": "openai_api_key",
    "aws_session_key_id": "aws_access_key_id",
    "github_pat": "github_token",
    "stripe_restricted_key": "stripe_secret_key",
}


@pytest.mark.parametrize("name", list(KEYS))
def test_detects_provider_keys(name: str) -> None:
    key = KEYS[name]
    guard = make("secrets")
    findings = scan(guard, f"config:\n  key = '{key}'\nthanks")
    assert [f.label for f in findings] == [LABELS.get(name, name)]
    assert matched(guard, f"use {key} now") == [key]
    assert_no_text_in_labels(findings, key)


def test_aws_secret_key_needs_its_name_beside_it() -> None:
    secret = rand(40, ALNUM + "/+")
    guard = make("secrets", detectors=["aws_secret_access_key"])
    assert matched(guard, f"aws_secret_access_key = {secret}") == [secret]
    assert matched(guard, f'"AWS_SECRET_ACCESS_KEY": "{secret}"') == [secret]
    assert labels(guard, f"checksum {secret}") == []


def test_pem_block_without_footer_is_still_found() -> None:
    cut = PEM.rsplit("\n", 2)[0]
    (finding,) = scan(make("secrets"), cut)
    assert finding.label == "private_key"
    assert finding.end == len(cut)


def test_high_entropy_tokens() -> None:
    guard = make("secrets", detectors=["high_entropy"])
    token = rand(32)
    assert labels(guard, f"token: {token}") == ["high_entropy"]
    assert shannon_entropy(token) > 3.8


@pytest.mark.parametrize(
    "text",
    [
        "see commit 3f786850e387550fdab836ed7e6dc881de23001b",
        "request id 123e4567-e89b-12d3-a456-426614174000",
        "the state-of-the-art-machine-learning-models are large",
        "open src/sluicegate/guardrails/base_config_2024.py",
        "my_variable_name_2024_version = 3",
        "https://example.com/docs/getting-started",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "the task-force met; ask-anything sessions are open",
        "a short sk-abc and an akia1234 are not keys",
        # identifiers and paths made of words, with digits and capitals
        "class AbstractSingletonProxyFactoryBeanV2: resolveTransactionIsolationLevelForUser2()",
        "import src/components/UserProfile2Card and MAX_RETRY_COUNT_FOR_HTTP2_STREAMS",
        # digests after their algorithm's name, base64 of text
        'integrity: "sha512-/3IjMdb2L9QbBdWiW5e3P2/npwMBaU9mHCSCUzNln0ZCYbcfTsGbTJrU/kGemdH2IWmB2ioZ+zkxtmq6g09fGQ=="',
        "golang.org/x/net v0.22.0 h1:9sGLhx7iRIHEiX0oAJ3MRZMUCElJgy7Br1nO+AMN3Tc=",
        "echo dGhlIHF1aWNrIGJyb3duIGZveCBqdW1wcyBvdmVy | base64 -d",
        # placeholders
        "OPENAI_API_KEY=sk-your-openai-key-goes-here and GITHUB_TOKEN=ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    ],
)
def test_lets_through_ordinary_text(text: str) -> None:
    assert labels(make("secrets"), text) == []


def test_published_sample_keys_are_reported() -> None:
    # Well-formed keys from providers' docs: the gateway cannot tell which well-formed key works.
    assert labels(make("secrets"), "aws_access_key_id = AKIA" + "IOSFODNN7EXAMPLE") == ["aws_access_key_id"]


def test_key_formats_are_case_sensitive() -> None:
    guard = make("secrets")
    assert isinstance(guard, SecretsGuard)
    assert type(guard).casefold is False
    key_id = "AKIA" + rand(16, string.ascii_uppercase + string.digits)
    assert labels(guard, key_id) == ["aws_access_key_id"]
    assert guard.scan([key_id.lower()]) == []


def test_specific_detectors_win_over_high_entropy() -> None:
    assert labels(make("secrets"), KEYS["github_token"]) == ["github_token"]


def test_detectors_subset_and_entropy_settings() -> None:
    text = f"{KEYS['openai_api_key']} and {rand(24)}"
    assert labels(make("secrets", detectors=["openai_api_key"]), text) == ["openai_api_key"]
    assert labels(make("secrets", detectors=["high_entropy"], entropy_threshold=7.5), text) == []
    assert labels(make("secrets", detectors=["slack_token"]), text) == []


def test_reach_is_bounded_by_the_widest_detector() -> None:
    assert make("secrets").reach == 4224
    assert make("secrets", detectors=["aws_access_key_id"]).reach == 20
    assert make("secrets", detectors=["high_entropy", "google_api_key"]).reach == 512


@pytest.mark.parametrize(
    "settings",
    [{"detectors": ["passwords"]}, {"detectors": []}, {"min_entropy_length": 4}, {"entropy_threshold": 0}],
    ids=["unknown-detector", "no-detector", "short-min", "zero-threshold"],
)
def test_bad_settings_fail_at_load(settings: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        make("secrets", **settings)
