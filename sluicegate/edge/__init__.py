"""The edge: what the gateway checks of a client before and around a call.

`protocol` is the HTTP/1.1 server (deadlines, header limits, a connection cap, write deadlines,
HTTP/1.0 bodies) and `server` the uvicorn config that runs it; `forwarded` is the client's
address behind trusted proxies, and `body` the request body (bounded, read within its deadline,
`Content-Encoding` decoded).
"""
