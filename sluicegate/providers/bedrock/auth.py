"""Bedrock credentials: a secret `KEY_ID:SECRET[:SESSION_TOKEN]` or JSON `{"access_key_id",
"secret_access_key", "session_token"?}` is signed with AWS SigV4 (service `bedrock`); anything else is
a Bedrock API key sent as `Authorization: Bearer` (https://docs.aws.amazon.com/bedrock/latest/userguide/api-keys.html).
botocore (`pip install 'sluicegate[aws]'`) signs; imported on first use, it is needed only for Bedrock.
"""

from __future__ import annotations

import importlib.util
import logging
import re

import orjson

BOTOCORE_MISSING = (
    "the bedrock provider type needs botocore (AWS request signing and event-stream decoding): "
    "install it with `pip install 'sluicegate[aws]'`"
)
#: an AWS access key id (https://docs.aws.amazon.com/STS/latest/APIReference/API_Credentials.html)
_KEY_ID = re.compile(r"\w{1,128}", re.ASCII)


def botocore_available() -> bool:
    return importlib.util.find_spec("botocore") is not None


class _QuietSigner(logging.Filter):
    """botocore's signer logs the canonical request at DEBUG, session token included: never that."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


_QUIET = _QuietSigner()


class Signer:
    """SigV4 for one set of AWS credentials (botocore's signer, built once)."""

    __slots__ = ("auth", "request_cls")

    def __init__(self, access_key: str, secret_key: str, token: str | None, region: str) -> None:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        signer_log = logging.getLogger("botocore.auth")
        if _QUIET not in signer_log.filters:
            signer_log.addFilter(_QUIET)
        self.auth = SigV4Auth(Credentials(access_key, secret_key, token), "bedrock", region)
        self.request_cls = AWSRequest

    def headers(self, url: str, body: bytes, base: dict[str, str]) -> dict[str, str]:
        request = self.request_cls(method="POST", url=url, data=body, headers=dict(base))
        self.auth.add_auth(request)
        return dict(request.headers.items())


def parse_credentials(secret: str) -> tuple[str, str, str | None] | None:
    """(access key id, secret access key, session token) of a SigV4 secret; None for an API key.

    Raises `ValueError` (naming no part of the secret) for a JSON object that lacks a field."""
    text = secret.strip()
    if text.startswith("{"):
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise ValueError("its AWS credentials are not valid JSON") from None
        if not isinstance(data, dict):
            raise ValueError("its AWS credentials are not a JSON object")
        key_id = data.get("access_key_id", data.get("AccessKeyId"))
        secret_key = data.get("secret_access_key", data.get("SecretAccessKey"))
        token = data.get("session_token", data.get("SessionToken"))
        if not isinstance(key_id, str) or not key_id or not isinstance(secret_key, str) or not secret_key:
            raise ValueError("its AWS credentials JSON needs string fields access_key_id and secret_access_key")
        if token is not None and not isinstance(token, str):
            raise ValueError("its AWS credentials JSON has a session_token that is not a string")
        return key_id, secret_key, token or None
    parts = text.split(":", 2)
    # An access key id is word characters (AKIA..., ASIA...); Bedrock API keys never hold a ':'.
    if len(parts) >= 2 and parts[1] and _KEY_ID.fullmatch(parts[0]):
        return parts[0], parts[1], (parts[2] or None) if len(parts) == 3 else None
    return None
