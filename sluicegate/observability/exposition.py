"""`GET /metrics`: a gateway's registry in the Prometheus text format, or OpenMetrics when asked.

Served on the admin port, and on the data port with `observability.metrics.on_data_port`. The
format follows the scraper's `Accept` header (the library's `choose_encoder`); the exposition is
the library's, never written by hand.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client.exposition import choose_encoder

if TYPE_CHECKING:
    from sluicegate.observability.metrics import GatewayMetrics
    from sluicegate.types import Scope, Send


async def send_metrics(metrics: GatewayMetrics, scope: Scope, send: Send) -> None:
    """Answer a scrape (GET or HEAD; any other method gets 405)."""
    method = scope["method"]
    if method not in ("GET", "HEAD"):
        await send(
            {
                "type": "http.response.start",
                "status": 405,
                "headers": [(b"allow", b"GET, HEAD"), (b"content-type", b"text/plain"), (b"content-length", b"0")],
            }
        )
        await send({"type": "http.response.body", "body": b""})
        return
    accept = next((value for name, value in scope["headers"] if name == b"accept"), b"")
    await metrics.refresh()
    encode, content_type = choose_encoder(accept.decode("latin-1"))
    body = encode(metrics.registry)
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
