"""AWS Bedrock through its model-neutral Converse API: `BedrockProvider`, its options and registration.

Translated calls only (no client dialect is Bedrock's own); a route's upstream model is a Bedrock
model or inference profile id. Beside this: `auth.py` credentials and SigV4, `request.py` neutral
-> Converse, `response.py` Converse -> neutral, `stream.py` the ConverseStream decoder."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator
from yarl import URL

from sluicegate import neutral
from sluicegate.errors import SluicegateError, UpstreamError, UpstreamTimeout
from sluicegate.providers.base import (
    Preset,
    Provider,
    StreamDecoder,
    capped,
    json_error_message,
    register_provider_type,
    reported_error,
)
from sluicegate.providers.bedrock.auth import BOTOCORE_MISSING, Signer, botocore_available, parse_credentials
from sluicegate.providers.bedrock.request import TARGET, converse_request
from sluicegate.providers.bedrock.response import converse_usage, error_text, parse_converse
from sluicegate.providers.bedrock.stream import BedrockStreamDecoder

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.config.model import ProviderConfig
    from sluicegate.scrub import Scrubber

__all__ = [
    "BOTOCORE_MISSING",
    "TARGET",
    "BedrockOptions",
    "BedrockProvider",
    "BedrockStreamDecoder",
    "botocore_available",
    "converse_request",
    "converse_usage",
    "endpoint_for",
    "parse_credentials",
]

EVENT_STREAM = "application/vnd.amazon.eventstream"


class BedrockOptions(BaseModel):
    """`options:` of a `bedrock` provider."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the AWS region requests are signed for (and, without `base_url`, sent to)
    region: str = Field("us-east-1", pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$")

    @model_validator(mode="after")
    def _needs_botocore(self) -> BedrockOptions:
        if not botocore_available():
            raise ValueError(BOTOCORE_MISSING)
        return self


def endpoint_for(region: str) -> str:
    """The Bedrock runtime endpoint of a region (https://docs.aws.amazon.com/general/latest/gr/bedrock.html)."""
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://bedrock-runtime.{region}.{suffix}"


class BedrockProvider(Provider):
    """AWS Bedrock's Converse API: translated calls only, SigV4 or API-key auth."""

    Options: ClassVar[type[BedrockOptions]] = BedrockOptions
    native_dialect = "bedrock"
    stream_framing = "eventstream"
    label = "AWS Bedrock"

    def __init__(self, config: ProviderConfig, preset: Preset) -> None:
        super().__init__(config, preset)
        self.options = BedrockOptions.model_validate(config.options)
        if not config.base_url:
            self.base_url = endpoint_for(self.options.region)
        self._urls: dict[tuple[str, bool], str] = {}
        extra_headers = dict(self.static_headers)
        # secret -> a signer (SigV4) or the headers of an API key; a handful of distinct secrets at most
        self._auth: dict[str, Signer | tuple[dict[str, str], dict[str, str]]] = {}
        self._base = (
            {"Content-Type": "application/json", "Accept": "application/json", **extra_headers},
            {"Content-Type": "application/json", "Accept": EVENT_STREAM, **extra_headers},
        )

    # ----------------------------------------------------------------------------------------- request

    def url_for(self, endpoint: str, model: str, stream: bool = False) -> str:
        key = (model, stream)
        url = self._urls.get(key)
        if url is None:
            if endpoint != "chat":
                raise neutral.unsupported(f"The '{endpoint}' endpoint", TARGET)
            raw = f"{self.base_url}/model/{quote(model, safe='')}/{'converse-stream' if stream else 'converse'}"
            # The URL exactly as the HTTP client will send it (yarl keeps ':' unescaped in a path):
            # SigV4 signs the path that goes on the wire.
            url = str(URL(raw))
            if len(self._urls) > 10_000:
                self._urls.clear()
            self._urls[key] = url
        return url

    def request_headers(self, call: Call, secret: str | None, url: str, body: bytes) -> dict[str, str]:
        base = self._base[1 if call.stream else 0]
        referenced = self.referenced_headers() if self.header_refs else None
        if referenced:
            base = {**base, **referenced}
        if not secret:
            return base
        auth = self._auth.get(secret)
        if auth is None:
            auth = self._credentials(secret)
        if isinstance(auth, Signer):
            return auth.headers(url, body, base)
        headers = auth[1 if call.stream else 0]
        return {**headers, **referenced} if referenced else headers

    def _credentials(self, secret: str) -> Signer | tuple[dict[str, str], dict[str, str]]:
        try:
            creds = parse_credentials(secret)
        except ValueError as exc:
            raise UpstreamError(f"provider '{self.name}' cannot use its credential: {exc}") from None
        auth: Signer | tuple[dict[str, str], dict[str, str]]
        if creds is None:
            bearer = f"Bearer {secret.strip()}"
            auth = ({**self._base[0], "Authorization": bearer}, {**self._base[1], "Authorization": bearer})
        else:
            self._need_botocore()
            auth = Signer(*creds, self.options.region)
        if len(self._auth) > 64:
            self._auth.clear()
        self._auth[secret] = auth
        return auth

    def _need_botocore(self) -> None:
        if not botocore_available():
            raise UpstreamError(f"provider '{self.name}': {BOTOCORE_MISSING}")

    def build_request(self, call: Call, chat: dict[str, Any]) -> bytes:
        return orjson.dumps(converse_request(capped(chat, call)))

    # ----------------------------------------------------------------------------------------- answers

    def parse_response(self, data: Any, call: Call) -> dict[str, Any]:
        return parse_converse(self.name, data, call)

    def stream_decoder(self, call: Call) -> StreamDecoder:
        assert call.route is not None
        self._need_botocore()
        return BedrockStreamDecoder(self.name, call.route.upstream_model or call.model_requested or "")

    def error_message(self, body: bytes) -> str:
        return error_text(body)

    def parse_error(self, status: int, body: bytes, retry_after: float | None, scrub: Scrubber) -> SluicegateError:
        # 408 ModelTimeoutException and 424 ModelErrorException are the model failing, not the
        # client's request (https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html#API_runtime_Converse_Errors).
        if status == 408:
            return UpstreamTimeout(
                f"provider '{self.name}' timed out: {scrub(self.error_message(body)) or 'model timeout'}"
            )
        if status == 424:
            return UpstreamError(f"provider '{self.name}' failed: {scrub(self.error_message(body)) or 'model error'}")
        return super().parse_error(status, body, retry_after, scrub)

    def answer_error(self, data: dict[str, Any]) -> SluicegateError | None:
        # Error bodies are `{"message"}` (`{"Message"}` for API-key errors); answers have `output`.
        if "output" not in data and isinstance(data.get("message", data.get("Message")), str):
            return reported_error(self.name, None, json_error_message(data, ("message",), ("Message",)))
        return super().answer_error(data)


register_provider_type(
    "bedrock",
    BedrockProvider,
    Preset(
        endpoint_for("us-east-1"),
        docs="https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html",
    ),
)
