"""Settings of the audit sinks besides the database (`audit.sinks`), one model per kind.

`AuditSinkConfig` is the union the config holds, told apart by `type` (`jsonl`, `webhook`,
`otlp`). Header values and the webhook URL may be secret references; `config.loader` checks them
as it checks a provider's headers.
"""

from __future__ import annotations

import importlib
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: what `pip` installs for the `otlp` sink, named in the error when it is missing
OTEL_EXTRA = "sluicegate[otel]"
#: what the `otlp` sink imports from it
OTEL_MODULES = ("opentelemetry.sdk._logs", "opentelemetry.exporter.otlp.proto.http._log_exporter")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _SinkBase(_Strict):
    """What every sink has: a label, its own bounded queue, and what it does when that is full."""

    #: the sink's label in logs and `/readyz`; default: its type and position (`webhook-1`)
    name: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    #: events waiting for this sink at most (the writer never waits for a sink)
    queue_size: int = Field(10_000, ge=1, le=1_000_000)
    #: when the queue is full: `drop_newest` keeps what waits and drops what arrives; `drop_oldest`
    #: makes room by dropping the oldest waiting event. Either way the drop is counted and logged
    on_full: Literal["drop_newest", "drop_oldest"] = "drop_newest"
    #: also deliver the hash chain's anchors (`{"kind": "anchor", "seq", "hash", "ts", "mac"}`)
    anchors: bool = True


def _is_ref(value: str) -> bool:
    # Imported here: the vault package imports the config model, which imports this module.
    from sluicegate.vault.refs import parse_ref

    return parse_ref(value, allow_prefix=False) is not None


def _http_url(value: str, example: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL (such as {example})")
    return value


class JsonlSinkConfig(_SinkBase):
    """Events as JSON lines in a local file, rotated by size (`path`, `path.1` ... `path.<backups>`)."""

    type: Literal["jsonl"]
    #: the file; a relative path is under the data folder (`SLUICEGATE_DATA_DIR`)
    path: str = Field("audit-events.jsonl", min_length=1)
    #: the file is rotated before a write would take it past this size (0: never rotated)
    max_bytes: int = Field(100 * 1024 * 1024, ge=0)
    #: rotated files kept (`path.1` the newest); the oldest one beyond is deleted
    backups: int = Field(5, ge=1, le=1000)
    #: fsync after each batch: what a power loss would lose is then at most the batch being written
    fsync: bool = False


class WebhookSinkConfig(_SinkBase):
    """Events POSTed as `{"events": [...]}` in batches, retried with backoff."""

    type: Literal["webhook"]
    #: where batches go (http or https); may be a secret reference (`env://AUDIT_HOOK_URL`) when the
    #: URL itself is a credential. A user and password in it are sent as Basic authentication
    url: str = Field(min_length=1)
    #: extra request headers; a credential goes as a secret reference (`Bearer env://HOOK_TOKEN`)
    headers: dict[str, str] = Field(default_factory=dict)
    #: events per POST at most
    batch_size: int = Field(100, ge=1, le=10_000)
    #: how long a batch may wait to fill once it holds one event
    flush_interval_s: float = Field(1.0, ge=0, le=3600)
    #: time limit of one POST (connect, send, answer)
    timeout_s: float = Field(10.0, gt=0, le=300)
    #: retries of a failed POST (connection error, timeout, any status but 2xx) before `on_failure`
    max_retries: int = Field(5, ge=0, le=1000)
    #: the first retry's delay; each next one doubles, with jitter, up to `max_backoff_s`.
    #: A 429 or 503 with `Retry-After` waits what it says instead (at most 300 s)
    backoff_s: float = Field(0.5, gt=0, le=60)
    max_backoff_s: float = Field(30.0, gt=0, le=3600)
    #: after `max_retries`: `drop` the batch (counted, logged), or `keep` retrying it for as long as
    #: it takes, while new events wait in the queue (and `on_full` applies)
    on_failure: Literal["drop", "keep"] = "drop"

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return value if _is_ref(value) else _http_url(value, "https://siem.example.com/audit")

    @model_validator(mode="after")
    def _bounds(self) -> WebhookSinkConfig:
        if self.batch_size > self.queue_size:
            raise ValueError("batch_size cannot exceed queue_size")
        return self


class OtlpSinkConfig(_SinkBase):
    """Events as OpenTelemetry log records over OTLP/HTTP (needs `sluicegate[otel]`)."""

    type: Literal["otlp"]
    #: the collector's OTLP/HTTP logs URL; a URL without a path gets `/v1/logs`
    endpoint: str = "http://127.0.0.1:4318/v1/logs"
    #: headers of every export request; a credential goes as a secret reference (`Bearer env://TOKEN`)
    headers: dict[str, str] = Field(default_factory=dict)
    #: time limit of one export request, the exporter's own retries included
    timeout_s: float = Field(10.0, gt=0, le=300)
    #: log records per export request at most
    batch_size: int = Field(512, ge=1, le=10_000)
    #: how long a record may wait before its batch is exported
    flush_interval_s: float = Field(1.0, gt=0, le=3600)
    #: the `service.name` resource attribute of every record
    service_name: str = Field("sluicegate", min_length=1, max_length=256)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        _http_url(value, "http://127.0.0.1:4318/v1/logs")
        if urlsplit(value).username is not None:
            raise ValueError("a credential goes in `headers` as a secret reference, not in the endpoint URL")
        return value if urlsplit(value).path not in ("", "/") else value.rstrip("/") + "/v1/logs"

    @model_validator(mode="after")
    def _exportable(self) -> OtlpSinkConfig:
        if self.batch_size > self.queue_size:
            raise ValueError("batch_size cannot exceed queue_size")
        try:
            for module in OTEL_MODULES:
                importlib.import_module(module)
        except ImportError:
            raise ValueError(
                f"the otlp sink needs the OpenTelemetry SDK and OTLP exporter: pip install '{OTEL_EXTRA}'"
            ) from None
        return self


#: one entry of `audit.sinks`, told apart by its `type`
AuditSinkConfig = Annotated[JsonlSinkConfig | WebhookSinkConfig | OtlpSinkConfig, Field(discriminator="type")]
