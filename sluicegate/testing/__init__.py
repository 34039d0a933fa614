"""Test helpers for Sluicegate: a fake OpenAI-compatible upstream and servers to run ASGI apps in tests."""

from __future__ import annotations

from sluicegate.testing.upstream import (
    FakeUpstream,
    ReceivedRequest,
    Reply,
    run_server,
    serve_in_thread,
    start_server,
)

__all__ = ["FakeUpstream", "ReceivedRequest", "Reply", "run_server", "serve_in_thread", "start_server"]
