"""Audit sinks besides the database: stored events (and chain anchors) copied to files, webhooks
and OTLP collectors, each sink with its own bounded queue, thread and failure policy.

The audit writer's thread calls `offer` once a batch is committed to the store: it only appends
to each sink's queue (never waits, never raises), so no sink can slow or stop the audit trail,
which stays the database's. A sink kind is one module (`sink_jsonl`, `sink_webhook`,
`sink_otlp`) and one line in `SINK_KINDS`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sluicegate.audit.sink_base import Record, Sink, SinkContext, Throttle
from sluicegate.audit.sink_jsonl import JsonlSink
from sluicegate.audit.sink_otlp import OtlpSink
from sluicegate.audit.sink_webhook import WebhookSink

if TYPE_CHECKING:
    from sluicegate.audit.sink_config import AuditSinkConfig
    from sluicegate.vault import Vault

log = logging.getLogger("sluicegate.audit.sinks")

#: `type` -> the sink class
SINK_KINDS: dict[str, type[Sink]] = {
    "jsonl": JsonlSink,
    "webhook": WebhookSink,
    "otlp": OtlpSink,
}
#: how long a sink that a reload removed may take to deliver what it holds
RETIRE_S = 10.0


class AuditSinks:
    """Every configured sink; what the audit writer and the gateway's lifespan call."""

    def __init__(self, configs: list[AuditSinkConfig], vault: Vault, data_dir: Path) -> None:
        self.context = SinkContext(vault=vault, data_dir=Path(data_dir))
        self._sinks: tuple[Sink, ...] = tuple(self._build(config, i) for i, config in enumerate(configs))
        #: sinks a reload removed: draining until their deadline, joined at `close`
        self._retired: list[Sink] = []
        self._started = False
        self._closed = False
        self._errors = Throttle()

    def _build(self, config: AuditSinkConfig, position: int) -> Sink:
        return SINK_KINDS[config.type](config, config.name or f"{config.type}-{position}", self.context)

    def __len__(self) -> int:
        return len(self._sinks)

    def start(self) -> None:
        """Start each sink's thread."""
        self._started = True
        for sink in self._sinks:
            sink.start()

    def offer(self, records: list[dict[str, Any]]) -> None:
        """Queue stored events for every sink (never blocks, never raises; a full queue applies
        the sink's `on_full`). The records are shared and must not change afterwards."""
        for sink in self._sinks:
            self._put(sink, records)

    def anchor(self, record: dict[str, Any]) -> None:
        """Queue a chain anchor for the sinks that take anchors."""
        for sink in self._sinks:
            if sink.config.anchors:
                self._put(sink, [record])

    def _put(self, sink: Sink, records: list[Record]) -> None:
        try:
            sink.put(records)
        except Exception:  # a bug here must not reach the audit writer
            if self._errors.due():
                log.exception("audit sink %s: events could not be queued", sink.name)

    def configure(self, configs: list[AuditSinkConfig]) -> None:
        """Adopt reloaded settings: a sink whose settings did not change keeps its queue and
        thread; a removed one delivers what it holds (for `RETIRE_S` at most) and stops; a new
        one starts."""
        if self._closed:
            return
        kept = list(self._sinks)
        sinks: list[Sink] = []
        for position, config in enumerate(configs):
            same = next((sink for sink in kept if sink.config == config), None)
            if same is not None:
                kept.remove(same)
                sinks.append(same)
                continue
            sink = self._build(config, position)
            if self._started:
                sink.start()
            sinks.append(sink)
        self._sinks = tuple(sinks)
        deadline = time.monotonic() + RETIRE_S
        for sink in kept:
            sink.stop(deadline)
            log.info("audit sink %s removed by the reload: it delivers what it holds, then stops", sink.name)
        self._retired = [sink for sink in [*self._retired, *kept] if sink.alive]

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (within `timeout`), then stop the threads; what could not be
        delivered in time is counted as dropped and logged."""
        self._closed = True
        deadline = time.monotonic() + timeout
        sinks = [*self._sinks, *self._retired]
        for sink in sinks:
            sink.stop(deadline)
        for sink in sinks:
            # A delivery stuck in I/O past the deadline: its thread (a daemon) is left behind.
            sink.join(deadline - time.monotonic() + 1.0)
        for sink in sinks:
            left = sink.pending()
            if left:
                log.error(
                    "audit sink %s (%s): %d events not delivered at shutdown (%s)",
                    sink.name,
                    sink.target,
                    left,
                    sink.last_error or "the deadline passed",
                )

    def status(self) -> list[dict[str, Any]]:
        """Per sink: type, name, target (no credential), queued, delivered, dropped, failures, last_error."""
        return [sink.status() for sink in self._sinks]
