"""The declarative gateway configuration, as pydantic models (what the YAML file holds).

Field names are the config keys. Cross-references (a model naming a provider, a consumer naming
a model) are checked in `config.loader`, which reports every error with its path in the file.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Strict):
    """Upstream timeouts in seconds; every one is explicit."""

    connect_s: float = Field(10.0, gt=0)
    #: time to the response headers, and the longest silence between two stream chunks
    read_s: float = Field(300.0, gt=0)
    total_s: float = Field(900.0, gt=0)


class ProviderConfig(_Strict):
    """An upstream: its wire protocol (`type`), where it is and which credential it takes."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    type: str = Field(min_length=1)
    base_url: str | None = None
    #: a secret reference (`env://NAME`, `file:///path`), never the key itself
    api_key: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeouts: Timeouts = Field(default_factory=Timeouts)


class ModelConfig(_Strict):
    """A public model name (or glob such as `gpt-*`) and where it is served."""

    name: str = Field(min_length=1)
    provider: str = Field(min_length=1)
    #: the upstream's name for it; default: the name the client asked for
    model: str | None = None
    input_cost_per_mtok: float | None = Field(None, ge=0, description="USD per million input tokens")
    output_cost_per_mtok: float | None = Field(None, ge=0, description="USD per million output tokens")


class ConsumerConfig(_Strict):
    """An app, team or person that calls through the gateway, and the models it may use."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.@-]+$")
    #: model names or globs (`gpt-*`, `*`)
    models: list[str] = Field(default_factory=list)


class ServerConfig(_Strict):
    """Request limits of the data plane."""

    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)
    max_upstream_connections: int = Field(1000, gt=0)
    #: how long an upstream error body may be (bytes) before it is cut
    max_error_body_bytes: int = Field(64 * 1024, gt=0)


class AuditConfig(_Strict):
    """Where and how audit events are written."""

    batch_size: int = Field(500, gt=0, le=10000)
    #: how long the writer waits to fill a batch once it holds one event
    flush_interval_s: float = Field(0.05, ge=0, le=10)
    #: a failed write is retried after this delay; events stay queued meanwhile
    retry_s: float = Field(1.0, gt=0)
    on_failure: Literal["log", "refuse"] = "log"


class GatewayConfig(_Strict):
    """The whole configuration file."""

    version: Literal[1] = 1
    #: SQLAlchemy URL of the store; default: SQLite in the data folder
    database_url: str | None = None
    server: ServerConfig = Field(default_factory=ServerConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    providers: list[ProviderConfig] = Field(default_factory=list)
    models: list[ModelConfig] = Field(default_factory=list)
    consumers: list[ConsumerConfig] = Field(default_factory=list)
