"""The edge protocol builds on uvicorn's httptools protocol and request cycle, which are not a public
API. pyproject bounds the uvicorn versions it was written for; this test fails loudly, naming what
moved, when an upgrade changes any internal the protocol uses. Behaviour is covered by the other
tests of `tests/edge`."""

from __future__ import annotations

import inspect

import httptools
import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from sluicegate.edge.protocol import EdgeProtocol, Http10Cycle

#: methods of HttpToolsProtocol the edge protocol overrides or calls, with their parameters
PROTOCOL_METHODS = {
    "__init__": ["self", "config", "server_state", "app_state", "_loop"],
    "connection_made": ["self", "transport"],
    "connection_lost": ["self", "exc"],
    "data_received": ["self", "data"],
    "on_message_begin": ["self"],
    "on_headers_complete": ["self"],
    "on_message_complete": ["self"],
    "on_response_complete": ["self"],
    "pause_writing": ["self"],
    "resume_writing": ["self"],
    "send_400_response": ["self", "msg"],
    "timeout_keep_alive_handler": ["self"],
    "_unset_keepalive_if_required": ["self"],
}
#: attributes a connection has once it has parsed a request head
PROTOCOL_STATE = [
    "cycle",
    "connections",
    "transport",
    "parser",
    "pipeline",
    "headers",
    "url",
    "scope",
    "server_state",
    "timeout_keep_alive",
    "timeout_keep_alive_task",
    "client",
    "loop",
]
#: attributes of RequestResponseCycle the edge reads or writes
CYCLE_STATE = [
    "scope",
    "transport",
    "flow",
    "message_event",
    "on_response",
    "disconnected",
    "keep_alive",
    "waiting_for_100_continue",
    "body",
    "more_body",
    "response_started",
    "response_complete",
    "chunked_encoding",
    "expected_content_length",
]


def test_uvicorn_and_httptools_are_in_the_bounds_pyproject_names() -> None:
    major, minor = (int(p) for p in uvicorn.__version__.split(".")[:2])
    assert (major, minor) >= (0, 30) and (major, minor) < (0, 56), uvicorn.__version__
    assert httptools.__version__.split(".")[0] == "0", httptools.__version__


def test_the_protocol_methods_the_edge_uses_are_unchanged() -> None:
    for name, params in PROTOCOL_METHODS.items():
        method = getattr(HttpToolsProtocol, name, None)
        assert method is not None, f"uvicorn's HttpToolsProtocol has no {name} any more"
        assert list(inspect.signature(method).parameters) == params, f"HttpToolsProtocol.{name} changed"
    assert list(inspect.signature(RequestResponseCycle.send).parameters) == ["self", "message"]
    assert list(inspect.signature(RequestResponseCycle.receive).parameters) == ["self"]
    assert inspect.iscoroutinefunction(FlowControl.drain)
    for name in ("write_paused", "read_paused"):
        assert name in inspect.getsource(FlowControl.__init__), f"FlowControl.{name} is gone"


def test_the_state_the_edge_reads_is_still_there() -> None:
    init = inspect.getsource(HttpToolsProtocol)
    for name in PROTOCOL_STATE:
        assert f"self.{name}" in init, f"HttpToolsProtocol.{name} is gone"
    cycle = inspect.getsource(RequestResponseCycle)
    for name in CYCLE_STATE:
        assert f"self.{name}" in cycle, f"RequestResponseCycle.{name} is gone"
    # An HTTP/1.0 request's cycle is given the edge's subclass: same layout, no slots of its own.
    assert "__slots__" not in vars(RequestResponseCycle) and "__slots__" not in vars(Http10Cycle)
    assert issubclass(EdgeProtocol, HttpToolsProtocol) and issubclass(Http10Cycle, RequestResponseCycle)
    # uvicorn builds a new cycle in on_headers_complete (its task runs only after it returns).
    source = inspect.getsource(HttpToolsProtocol.on_headers_complete)
    assert "self.cycle = RequestResponseCycle(" in source
    # HTTP/1.0 connections are not kept alive (the close-delimited body relies on it).
    assert 'http_version != "1.0"' in source


def test_the_server_state_the_egress_door_uses_is_still_there() -> None:
    """The egress proxy serves intercepted connections with the edge protocol outside a uvicorn
    server: it loads a `Config` itself and keeps a `ServerState` of its own, whose `tasks` (the
    calls in flight) it waits for when the gateway stops."""
    from uvicorn.server import ServerState

    state = ServerState()
    assert isinstance(state.tasks, set) and isinstance(state.connections, set)
    assert hasattr(state, "total_requests")
    assert list(inspect.signature(uvicorn.Config.load).parameters) == ["self"]
    config = uvicorn.Config(lambda scope, receive, send: None, lifespan="off")
    config.load()
    assert config.loaded and callable(config.http_protocol_class)
