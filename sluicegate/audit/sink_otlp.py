"""The `otlp` audit sink: each event an OpenTelemetry log record, exported over OTLP/HTTP.

It uses the official SDK (`sluicegate[otel]`, imported on first delivery): a `LoggerProvider` of
its own (never the global one, which the gateway's own logging may own), a
`BatchLogRecordProcessor` and an `OTLPLogExporter`, whose own retries (with backoff, honouring
`Retry-After`) run within `timeout_s`.

Where events wait: the SDK's queue drops its oldest record silently when full, so the sink keeps
it at most one export batch deep and lets the rest wait in the sink's own queue, where `on_full`
applies and drops are counted. The SDK queue's bound is `queue_size` too, never reached. An export
that still fails after the exporter's retries is counted as a failure and its records as
dropped (the SDK does not keep them).

A record: body = the event (or anchor) as a map; attributes `event.name` (`sluicegate.audit`, or
`sluicegate.audit.anchor`), `sluicegate.request_id`, `sluicegate.consumer`, `sluicegate.model`
(the model that served, else the one requested), `sluicegate.decision`, `sluicegate.outcome` and
`sluicegate.chain_seq`, when set; the event's time as the record's timestamp. Severity: INFO for
an allowed call and an anchor, WARN for a refused one (denied, rejected, limited, blocked), ERROR
for a call that failed (`error`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sluicegate.audit.sink_base import Record, Sink, SinkContext, backoff_s, origin
from sluicegate.errors import SluicegateError
from sluicegate.vault.refs import SecretRef, parse_ref

if TYPE_CHECKING:
    from opentelemetry._logs import Logger, LogRecord
    from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
    from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
    from requests import PreparedRequest

    from sluicegate.audit.sink_config import OtlpSinkConfig

#: the instrumentation scope of the records
SCOPE = "sluicegate.audit"
#: record attribute -> the event fields it is read from (the first one set)
ATTRIBUTES = {
    "sluicegate.request_id": ("request_id",),
    "sluicegate.consumer": ("consumer",),
    "sluicegate.model": ("model_served", "model_requested"),
    "sluicegate.decision": ("decision",),
    "sluicegate.outcome": ("outcome",),
    "sluicegate.chain_seq": ("chain_seq",),
}
#: a header secret that cannot be read is tried again after at most this long
MAX_RETRY_S = 30.0


class OtlpSink(Sink):
    """Exports events as log records to an OTLP/HTTP collector."""

    type = "otlp"
    config: OtlpSinkConfig

    def __init__(self, config: OtlpSinkConfig, name: str, context: SinkContext) -> None:
        super().__init__(config, name, context)
        self.batch_size = config.batch_size
        self._headers: list[tuple[str, str | SecretRef]] = [
            (header, parse_ref(value, allow_prefix=True) or value) for header, value in config.headers.items()
        ]
        self._provider: LoggerProvider | None = None
        self._logger: Logger | None = None
        #: records handed to the SDK and not yet exported (or failed)
        self._in_sdk = 0
        self._lock = threading.Lock()

    @property
    def target(self) -> str:
        return origin(self.config.endpoint)

    def held(self) -> int:
        return self._in_sdk

    def deliver(self, batch: list[Record]) -> None:
        attempt = 0
        while True:
            try:
                self._resolve_headers()  # read before the SDK needs them: a failure waits here, nothing lost
                logger = self._logger or self._build()
            except SluicegateError as exc:
                attempt += 1
                self.failed(f"{type(exc).__name__}: {exc}")
                if not self.pause(backoff_s(attempt, 0.5, MAX_RETRY_S)):
                    self.given_up(len(batch), "stopped while a header secret could not be read")
                    return
            else:
                break
        # At most one export batch in the SDK's queue: the rest waits in ours (see the docstring).
        if not self.wait_for(lambda: self._in_sdk + len(batch) <= self.batch_size or self._in_sdk == 0):
            self.given_up(len(batch), "stopped while the collector was still exporting earlier events")
            return
        records = [_log_record(record) for record in batch]
        with self._lock:
            self._in_sdk += len(records)
        for record in records:
            logger.emit(record)

    def shut(self) -> None:
        # The processor exports what it holds at once, then stops; one that hangs past the
        # deadline is left to its (daemon) thread, and `AuditSinks.close` reports what waits.
        if self._provider is not None:
            self._provider.shutdown()

    def exported(self, count: int, ok: bool) -> None:
        """Count one export's outcome (called on the SDK's export thread)."""
        with self._lock:
            self._in_sdk -= count
        if ok:
            self.counted(count)
        else:
            self.failed("the export failed after the exporter's retries (see the opentelemetry log)")
            self.given_up(count, "the collector did not take them")
        self.wake()

    def _resolve_headers(self) -> dict[str, str]:
        vault = self.context.vault
        headers: dict[str, str] = {}
        for name, value in self._headers:
            if isinstance(value, SecretRef):
                secret = vault.resolve(value.ref)
                value = f"{value.prefix} {secret}" if value.prefix else secret
            headers[name] = value
        return headers

    def _build(self) -> Logger:
        import requests
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
        from opentelemetry.sdk.resources import Resource

        config = self.config
        session = requests.Session()
        # No proxy or credentials from the environment: where events go is set by the config only.
        session.trust_env = False
        # Secret header values are read through the vault at each request (a rotation is picked up).
        session.auth = self._auth
        exporter = OTLPLogExporter(endpoint=config.endpoint, timeout=config.timeout_s, session=session)
        processor = BatchLogRecordProcessor(
            _counting(exporter, self),
            schedule_delay_millis=config.flush_interval_s * 1000,
            max_export_batch_size=config.batch_size,
            max_queue_size=config.queue_size,
        )
        resource = Resource.create({"service.name": config.service_name})
        provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
        provider.add_log_record_processor(processor)
        logger = provider.get_logger(SCOPE)
        self._provider, self._logger = provider, logger
        return logger

    def _auth(self, request: PreparedRequest) -> PreparedRequest:
        request.headers.update(self._resolve_headers())
        return request


def _counting(inner: LogRecordExporter, sink: OtlpSink) -> LogRecordExporter:
    """`inner`, telling `sink` how each export ended (the SDK's processor does not say)."""
    from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult

    class CountingExporter(LogRecordExporter):
        def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
            ok = False
            try:
                result = inner.export(batch)
                ok = result is LogRecordExportResult.SUCCESS
                return result
            finally:
                sink.exported(len(batch), ok)

        def shutdown(self) -> None:
            inner.shutdown()  # type: ignore[no-untyped-call]

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            return inner.force_flush(timeout_millis)

    return CountingExporter()


def _log_record(record: Record) -> LogRecord:
    from opentelemetry._logs import LogRecord, SeverityNumber

    anchor = record.get("kind") == "anchor"
    attributes: dict[str, Any] = {"event.name": "sluicegate.audit.anchor" if anchor else "sluicegate.audit"}
    if anchor:
        if isinstance(record.get("seq"), int):
            attributes["sluicegate.chain_seq"] = record["seq"]
    else:
        for name, fields in ATTRIBUTES.items():
            value = next((record[f] for f in fields if record.get(f) is not None), None)
            if isinstance(value, str | int | float | bool):
                attributes[name] = value
    decision = record.get("decision")
    if anchor or decision == "allowed":
        severity = SeverityNumber.INFO
    elif decision == "error":
        severity = SeverityNumber.ERROR
    else:
        severity = SeverityNumber.WARN
    ts = record.get("ts")
    return LogRecord(
        timestamp=int(ts * 1e9) if isinstance(ts, int | float) and ts > 0 else None,
        observed_timestamp=time.time_ns(),
        severity_number=severity,
        severity_text=severity.name,
        body={key: _any_value(value) for key, value in record.items()},
        attributes=attributes,
        event_name=str(attributes["event.name"]),
    )


def _any_value(value: object) -> Any:
    """A field as an OTLP value: scalars as they are, anything else as text."""
    if value is None or isinstance(value, str | int | float | bool | bytes):
        return value
    return str(value)
