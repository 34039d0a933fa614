"""A plain `http://` request sent on to an allowed host: the head in origin form without the
hop's headers and with `Connection: close`, the body framed again as it is parsed, the answer
back to the client untouched (the upstream closes after it, and the tunnel with it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import h11

if TYPE_CHECKING:
    import asyncio
    from urllib.parse import SplitResult

    from sluicegate.egress.tunnel import Tunnel

#: request headers that are the proxy's or the hop's, not the destination's (RFC 9110 7.6.1)
HOP_HEADERS = frozenset(
    {b"connection", b"keep-alive", b"proxy-authorization", b"proxy-connection", b"te", b"trailer", b"upgrade"}
)


class Forward:
    """One forwarded request: `parser` holds the client's side, `tunnel` joins the two sockets."""

    def __init__(self, parser: h11.Connection, tunnel: Tunnel, client: asyncio.Transport) -> None:
        self.parser = parser
        self.tunnel = tunnel
        self.out = h11.Connection(h11.CLIENT)
        # The upstream's answer is written to the client as it comes (the tunnel's client side).
        tunnel.join(client)

    def send_head(self, request: h11.Request, url: SplitResult) -> None:
        """Write the request's head to the upstream, in origin form."""
        path = url.path or "/"
        if url.query:
            path += "?" + url.query
        headers = [(n, v) for n, v in request.headers if n not in HOP_HEADERS]
        headers.append((b"connection", b"close"))
        self._write(self.out.send(h11.Request(method=request.method, target=path.encode(), headers=headers)))
        self.tunnel.start_timer()

    def pump(self) -> None:
        """Send on what the parser holds of the client's body, framed for the upstream."""
        tunnel = self.tunnel
        while True:
            try:
                event = self.parser.next_event()
            except h11.RemoteProtocolError:
                tunnel.close()
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Data | h11.EndOfMessage):
                tunnel.last_active = tunnel.loop.time()
                self._write(self.out.send(event))
                if isinstance(event, h11.EndOfMessage):
                    return
            elif isinstance(event, h11.ConnectionClosed):
                tunnel.close()
                return

    def _write(self, data: bytes | None) -> None:
        upstream = self.tunnel.upstream.transport
        if data and upstream is not None and not upstream.is_closing():
            upstream.write(data)
