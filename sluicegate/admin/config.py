"""The `admin:` section: where the admin plane listens (off unless a port is set)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AdminConfig(BaseModel):
    """The admin listener (`/metrics`, `/healthz`, `/readyz`); `sluicegate serve --admin-port` overrides `port`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the address it binds: loopback unless an operator opens it on purpose
    host: str = "127.0.0.1"
    #: None: no admin listener
    port: int | None = Field(None, ge=1, le=65535)
