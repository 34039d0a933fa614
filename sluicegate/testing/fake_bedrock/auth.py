"""Authentication of the fake Bedrock: `fake.required_key` `AKID:SECRET[:SESSION_TOKEN]` (or JSON)
demands a SigV4 signature, verified for real by recomputing it with botocore from the received
method, path, query, signed headers and body; a key without ':' is a Bedrock API key demanded as
`Authorization: Bearer`. Failures answer 403 with AWS's messages and `x-amzn-ErrorType`.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import orjson

from sluicegate.testing.fake_bedrock.errors import aws_error
from sluicegate.testing.wire import Request, Send

if TYPE_CHECKING:
    from sluicegate.testing.upstream import FakeUpstream

# SigV4 failures (https://docs.aws.amazon.com/IAM/latest/UserGuide/signature-v4-troubleshooting.html)
SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access "
    "Key and signing method. Consult the service documentation for details."
)
UNRECOGNIZED_CLIENT = "The security token included in the request is invalid."
# A wrong Bedrock API key (https://docs.aws.amazon.com/bedrock/latest/userguide/api-keys.html): AWS
# answers with a capitalised "Message".
BAD_API_KEY = "Authentication failed: Please make sure your API Key is valid."
MISSING_AUTH = "Authorization header is missing"
MAX_SKEW = timedelta(minutes=5)
AMZ_DATE = "%Y%m%dT%H%M%SZ"


def _required(key: str) -> tuple[str, str, str | None] | None:
    """(key id, secret, session token) of a SigV4 `required_key`; None for a Bedrock API key."""
    if key.startswith("{"):
        data = orjson.loads(key)
        return data["access_key_id"], data["secret_access_key"], data.get("session_token")
    if ":" not in key:
        return None
    parts = key.split(":", 2)
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def _parse_authorization(value: str) -> dict[str, str] | None:
    """Credential, SignedHeaders and Signature of a SigV4 Authorization header."""
    algorithm, _, rest = value.partition(" ")
    if algorithm != "AWS4-HMAC-SHA256":
        return None
    fields = {}
    for item in rest.split(","):
        name, sep, val = item.strip().partition("=")
        if sep:
            fields[name] = val
    if not {"Credential", "SignedHeaders", "Signature"} <= fields.keys():
        return None
    return fields


def _expected_signature(
    request: Request, signed: list[str], key_id: str, secret: str, token: str | None, region: str, service: str
) -> str:
    """The signature AWS computes for the request as received (botocore's SigV4 algorithm)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    path = getattr(request, "raw_path", None) or request.path
    url = f"http://{request.headers.get('host', 'localhost')}{path}" + (f"?{request.query}" if request.query else "")
    headers = {name: request.headers.get(name, "") for name in signed}
    aws = AWSRequest(method=request.method, url=url, data=request.body, headers=headers)
    aws.context["timestamp"] = request.headers.get("x-amz-date", "")
    auth = SigV4Auth(Credentials(key_id, secret, token), service, region)
    canonical = auth.canonical_request(aws)
    return str(auth.signature(auth.string_to_sign(aws, canonical), aws))


async def check_auth(fake: FakeUpstream, request: Request, send: Send) -> bool:
    """AWS's authentication, in its order: a credential at all, a known key, a valid signature."""
    auth = request.headers.get("authorization", "")
    if not auth:
        if not fake.require_auth:
            return True
        await aws_error(send, 403, "MissingAuthenticationTokenException", MISSING_AUTH)
        return False
    required = fake.required_key
    expected = _required(required) if required is not None else None
    if auth.startswith("Bearer "):
        if required is not None and (expected is not None or not hmac.compare_digest(auth[7:].strip(), required)):
            await aws_error(send, 403, "AccessDeniedException", BAD_API_KEY, key="Message")
            return False
        return True
    fields = _parse_authorization(auth)
    if fields is None:
        await aws_error(
            send,
            403,
            "IncompleteSignatureException",
            f"Authorization header requires existence of "
            f"either a 'X-Amz-Date' or a 'Date' header. Authorization={auth.split(' ')[0]}",
        )
        return False
    scope = fields["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        await aws_error(send, 403, "IncompleteSignatureException", "Credential is malformed.")
        return False
    key_id, day, region, service, _ = scope
    if required is None:
        return True
    if (
        expected is None
        or key_id != expected[0]
        or (expected[2] is not None and request.headers.get("x-amz-security-token") != expected[2])
    ):
        await aws_error(send, 403, "UnrecognizedClientException", UNRECOGNIZED_CLIENT)
        return False
    stamp = request.headers.get("x-amz-date", "")
    try:
        when = datetime.strptime(stamp, AMZ_DATE).replace(tzinfo=UTC)
    except ValueError:
        await aws_error(send, 403, "IncompleteSignatureException", "Date must be in ISO-8601 'basic format'.")
        return False
    now = datetime.now(UTC)
    if now - when > MAX_SKEW:
        await aws_error(
            send,
            403,
            "InvalidSignatureException",
            f"Signature expired: {stamp} is now earlier than {(now - MAX_SKEW).strftime(AMZ_DATE)} "
            f"({now.strftime(AMZ_DATE)} - 5 min.)",
        )
        return False
    if day != stamp[:8]:
        await aws_error(
            send,
            403,
            "InvalidSignatureException",
            f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
            f"'{day}' != '{stamp[:8]}', from '{stamp}'.",
        )
        return False
    if service != "bedrock":
        await aws_error(
            send, 403, "InvalidSignatureException", "Credential should be scoped to correct service: 'bedrock'."
        )
        return False
    signed = fields["SignedHeaders"].split(";")
    if "host" not in signed:
        await aws_error(
            send,
            403,
            "InvalidSignatureException",
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
        )
        return False
    signature = _expected_signature(request, signed, key_id, expected[1], expected[2], region, service)
    if not hmac.compare_digest(signature, fields["Signature"]):
        await aws_error(send, 403, "InvalidSignatureException", SIGNATURE_MISMATCH)
        return False
    return True
