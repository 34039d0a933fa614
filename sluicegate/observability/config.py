"""The `observability:` section: metrics, traces and logs, each validated by its own model."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: what `pip` installs for tracing, named in the error when it is missing
OTEL_EXTRA = "sluicegate[otel]"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricsConfig(_Strict):
    """Prometheus metrics."""

    #: collect metrics (served on the admin port when it is enabled)
    enabled: bool = True
    #: also answer `GET /metrics` on the data port
    on_data_port: bool = False


class TracingConfig(_Strict):
    """OpenTelemetry traces, exported over OTLP/HTTP (needs `sluicegate[otel]`)."""

    #: one span per call, with child spans for the stages and the upstream call; off, it costs nothing
    enabled: bool = False
    #: the collector's OTLP/HTTP traces URL (an OpenTelemetry Collector, Jaeger, Phoenix ...)
    endpoint: str = "http://127.0.0.1:4318/v1/traces"
    #: headers of every export request; a credential goes as a secret reference (`Bearer env://TOKEN`)
    headers: dict[str, str] = Field(default_factory=dict)
    #: the `service.name` resource attribute of every span
    service_name: str = Field("sluicegate", min_length=1, max_length=256)
    #: share of new traces recorded, 0 to 1; a continued trace follows its parent's sampled flag
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0)
    #: more resource attributes (`deployment.environment.name: prod`, `service.instance.id: gw-1`)
    resource_attributes: dict[str, str] = Field(default_factory=dict)
    #: continue the trace a client's W3C `traceparent` names (a malformed one is ignored)
    continue_client_trace: bool = True
    #: send `traceparent` (naming the upstream call's span) and `tracestate` to providers
    propagate_upstream: bool = True
    #: time limit of one export request, its retries included
    timeout_s: float = Field(10.0, gt=0, le=300)
    #: finished spans waiting for export at most; past it new ones are dropped (logged)
    max_queue_spans: int = Field(2048, ge=1, le=1_000_000)
    #: spans per export request at most
    max_batch_spans: int = Field(512, ge=1, le=100_000)
    #: how long a finished span may wait before its batch is exported
    export_interval_s: float = Field(5.0, gt=0, le=3600)

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the OTLP endpoint is an http(s) URL, such as http://127.0.0.1:4318/v1/traces")
        return value

    @model_validator(mode="after")
    def _exportable(self) -> TracingConfig:
        if self.max_batch_spans > self.max_queue_spans:
            raise ValueError("max_batch_spans cannot exceed max_queue_spans")
        if self.enabled:
            try:
                import opentelemetry.exporter.otlp.proto.http.trace_exporter
                import opentelemetry.sdk.trace  # noqa: F401
            except ImportError:
                raise ValueError(
                    f"tracing needs the OpenTelemetry SDK and OTLP exporter: pip install '{OTEL_EXTRA}'"
                ) from None
        return self


#: the level names a logger may be set to
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _level(value: str) -> str:
    name = value.upper() if isinstance(value, str) else value
    if name not in LEVELS:
        raise ValueError(f"a log level is one of {', '.join(LEVELS)}")
    return name


class LoggingConfig(_Strict):
    """The gateway's own log lines."""

    #: `text` for people, `json` for log pipelines (one object per line)
    format: Literal["text", "json"] = "text"
    #: the level of every logger not named in `levels`
    level: str = "INFO"
    #: levels per logger name (`sluicegate.audit: DEBUG`, `aiohttp: WARNING`); a name covers its children
    levels: dict[str, str] = Field(default_factory=dict)

    @field_validator("level")
    @classmethod
    def _root_level(cls, value: str) -> str:
        return _level(value)

    @field_validator("levels")
    @classmethod
    def _logger_levels(cls, value: dict[str, str]) -> dict[str, str]:
        return {name: _level(level) for name, level in value.items()}


class ObservabilityConfig(_Strict):
    """Metrics, traces and logs."""

    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
