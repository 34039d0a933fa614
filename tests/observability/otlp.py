"""A real OTLP/HTTP receiver for the tracing tests: `oteltap` on a loopback port, run on an event
loop thread of its own, keeping every span it receives."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from oteltap import OtelTapHttpProtobufReceiver, OtelTapHttpProtobufReceiverSettings

from tests.conftest import free_port

T = TypeVar("T")

SERVER = Span.SpanKind.SPAN_KIND_SERVER
CLIENT = Span.SpanKind.SPAN_KIND_CLIENT
INTERNAL = Span.SpanKind.SPAN_KIND_INTERNAL


class OtlpReceiver:
    """Receives OTLP/HTTP traces on `url` while running (a context manager)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1/traces"
        self.spans: list[Span] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="otlp-receiver", daemon=True)
        self._receiver = OtelTapHttpProtobufReceiver(OtelTapHttpProtobufReceiverSettings(http_port=self.port))
        self._collector: asyncio.Task[None] | None = None

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        await self._receiver.start()
        subscribed = asyncio.Event()

        async def collect() -> None:
            stream = self._receiver.stream_traces()
            # The subscription exists once the stream is first awaited; say so just before.
            self._loop.call_soon(subscribed.set)
            async for span in stream:
                with self._lock:
                    self.spans.append(span)

        self._collector = asyncio.create_task(collect())
        await subscribed.wait()
        await asyncio.sleep(0.05)

    async def _stop(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
        await self._receiver.stop()

    def received(self) -> list[Span]:
        with self._lock:
            return list(self.spans)

    def wait(self, find: Callable[[list[Span]], T | None], timeout: float = 15) -> T:
        """Poll the spans received until `find` returns something; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            found = find(self.received())
            if found is not None and found is not False:
                return found
            assert time.monotonic() < deadline, f"spans not received in time; got {len(self.received())}"
            time.sleep(0.02)

    def call_span(self, request_id: str, timeout: float = 15) -> Span:
        """The server span of the call with this request id."""
        return self.wait(
            lambda spans: next((s for s in spans if attrs(s).get("sluicegate.request_id") == request_id), None),
            timeout,
        )

    def trace(self, root: Span, names: set[str], timeout: float = 15) -> dict[str, Span]:
        """The spans of `root`'s trace by name, once every one of `names` arrived."""

        def complete(spans: list[Span]) -> dict[str, Span] | None:
            mine = {s.name: s for s in spans if s.trace_id == root.trace_id}
            return mine if names <= set(mine) else None

        return self.wait(complete, timeout)


def value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind is not None else None


def attrs(span: Span) -> dict[str, Any]:
    """A span's attributes as a plain dict."""
    return {kv.key: value(kv.value) for kv in span.attributes}


def all_values(spans: list[Span]) -> Iterator[str]:
    """Every attribute value and name of `spans`, as text."""
    for span in spans:
        yield span.name
        for key, v in attrs(span).items():
            yield key
            yield str(v)
