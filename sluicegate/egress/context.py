"""What the egress door tells the gateway about a call it intercepted (an ASGI scope extension)."""

from __future__ import annotations

from dataclasses import dataclass

#: the scope extension that carries an `EgressContext` (set by the egress door's protocol only)
EGRESS_EXTENSION = "sluicegate.egress"
#: the door's name in the audit
DOOR = "egress"


@dataclass(slots=True)
class EgressContext:
    """An intercepted connection: the host the client meant, and who it is when the door knows."""

    #: the `CONNECT` target's host, normalised
    host: str
    #: the path prefix this host puts before the OpenAI-style path (`/openai` for Groq)
    strip_prefix: str = ""
    #: the gateway key given as the proxy password, which identifies the caller
    proxy_key: str | None = None
    #: the consumer of the client's source network (`egress.network_consumers`) and that network
    network_consumer: str | None = None
    network: str | None = None
