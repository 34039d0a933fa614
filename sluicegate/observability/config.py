"""The `observability:` section: metrics, traces and logs, each validated by its own model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


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

    enabled: bool = False


class LoggingConfig(_Strict):
    """The gateway's own log lines."""

    #: `text` for people, `json` for log pipelines (one object per line)
    format: str = "text"


class ObservabilityConfig(_Strict):
    """Metrics, traces and logs."""

    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
