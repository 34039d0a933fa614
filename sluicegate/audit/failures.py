"""Failed authentication attempts (and other unauthenticated refusals, such as unknown URLs),
aggregated per source so a flood cannot fill the audit store.

The first `free_per_window` failures from one source address in a window are audited one by one;
the rest are counted, and one summary event per source says how many there were when the window
closes. Memory is bounded: past `max_sources` addresses, further ones share one bucket.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from sluicegate.audit.events import AuditEvent

OVERFLOW = "*"


@dataclass(slots=True)
class _Bucket:
    started: float
    seen: int = 0
    suppressed: int = 0


class AuthFailureAggregator:
    """Decides which failed attempts are audited one by one, and summarises the rest."""

    def __init__(
        self,
        window_s: float = 60.0,
        free_per_window: int = 10,
        max_sources: int = 10_000,
        *,
        status: int = 401,
        outcome: str = "auth_failures_aggregated",
        endpoint: str = "auth",
        what: str = "failed authentication attempts",
    ) -> None:
        self.window_s = window_s
        self.free_per_window = free_per_window
        self.max_sources = max_sources
        #: what the summary events say: their status, outcome and endpoint, and what they counted
        self.summary = (status, outcome, endpoint, what)
        self._buckets: dict[str, _Bucket] = {}
        self._next_sweep = 0.0

    def configure(self, window_s: float, free_per_window: int) -> None:
        """Apply new settings (a config reload); counts so far are kept."""
        self.window_s = window_s
        self.free_per_window = free_per_window

    def admit(self, source: str | None, now: float | None = None) -> bool:
        """Count one failure; True when it should be audited on its own."""
        now = time.monotonic() if now is None else now
        key = source or OVERFLOW
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                key = OVERFLOW
                bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(now)
        bucket.seen += 1
        if bucket.seen <= self.free_per_window:
            return True
        bucket.suppressed += 1
        return False

    def due(self, now: float | None = None, *, all_: bool = False) -> list[AuditEvent]:
        """Summary events for the windows that have closed (every window with `all_`)."""
        now = time.monotonic() if now is None else now
        if not all_ and now < self._next_sweep:
            return []
        self._next_sweep = now + min(self.window_s, 5.0)
        events = []
        wall = time.time()
        for source, bucket in list(self._buckets.items()):
            if all_ or now - bucket.started >= self.window_s:
                del self._buckets[source]
                if bucket.suppressed:
                    events.append(_summary(source, bucket, now - bucket.started, wall, self.summary))
        return events


def _summary(
    source: str, bucket: _Bucket, span_s: float, wall: float, summary: tuple[int, str, str, str]
) -> AuditEvent:
    status, outcome, endpoint, what = summary
    return AuditEvent(
        request_id="agg_" + secrets.token_hex(10),
        ts=wall,
        endpoint=endpoint,
        client_ip=None if source == OVERFLOW else source,
        status=status,
        decision="denied" if status == 401 else "rejected",
        outcome=outcome,
        reason=f"{bucket.suppressed} further {what} in {span_s:.0f}s, not audited one by one",
        total_tokens=bucket.suppressed,
    )
