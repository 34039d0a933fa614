"""Test helpers for Sluicegate: a fake upstream speaking every supported provider wire format
(OpenAI, Azure, Anthropic, Gemini, Cohere, Ollama, Bedrock), and servers to run ASGI apps in tests."""

from __future__ import annotations

from sluicegate.testing.servers import run_server, serve_in_thread, start_server
from sluicegate.testing.upstream import FakeUpstream
from sluicegate.testing.wire import ReceivedRequest, Reply

__all__ = ["FakeUpstream", "ReceivedRequest", "Reply", "run_server", "serve_in_thread", "start_server"]
