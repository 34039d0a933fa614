"""Settings of the audit sinks besides the database (`audit.sinks`), one model per kind."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AuditSinkConfig(_Strict):
    """Placeholder: replaced by the sink kinds (jsonl, webhook, otlp)."""

    type: str
