"""A raw HTTP/1.x client over sockets, for what an SDK would never send: slow heads, short bodies,
oversized headers, HTTP/1.0, a reader that stops reading."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import orjson


def connect(url: str, *, rcvbuf: int | None = None, timeout: float = 10) -> socket.socket:
    """A TCP connection to the server of `url` (`rcvbuf`: a small receive buffer, set before connecting)."""
    parts = urlsplit(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect((parts.hostname or "127.0.0.1", parts.port or 80))
    return sock


def head(method: str, path: str, headers: dict[str, str] | None = None, version: str = "1.1") -> bytes:
    """A request line and headers, ended by the empty line."""
    lines = [f"{method} {path} HTTP/{version}", "Host: gateway", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def post(path: str, body: object, key: str | None = None, version: str = "1.1", **headers: str) -> bytes:
    """A complete JSON POST request."""
    data = orjson.dumps(body)
    hdrs = {"Content-Type": "application/json", "Content-Length": str(len(data)), **headers}
    if key is not None:
        hdrs["Authorization"] = f"Bearer {key}"
    return head("POST", path, hdrs, version) + data


@dataclass
class Response:
    """What came back: the status line's code, headers (lower-case names), body, and whether the
    server closed the connection after it."""

    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool = False
    raw_head: bytes = field(default=b"", repr=False)

    def json(self) -> object:
        return orjson.loads(self.body)


def read_response(sock: socket.socket, timeout: float = 10, close_wait: float = 0.5) -> Response:
    """Read one response: framed by Content-Length, chunked, or by the connection's close; then
    wait up to `close_wait` seconds to see whether the server closes the connection."""
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a complete response head: {buf!r}")
        buf += chunk
    raw_head, _, rest = buf.partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        size = int(headers["content-length"])
        while len(rest) < size:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return Response(status, headers, rest[:size], _closed(sock, close_wait), raw_head)
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            while b"\r\n" not in rest:
                rest += _recv(sock)
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            while len(rest) < size + 2:
                rest += _recv(sock)
            body += rest[:size]
            rest = rest[size + 2 :]
            if size == 0:
                return Response(status, headers, body, _closed(sock, close_wait), raw_head)
    # Delimited by the close of the connection.
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return Response(status, headers, rest, True, raw_head)
        rest += chunk


def _recv(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise ConnectionError("closed inside a chunked body")
    return chunk


def _closed(sock: socket.socket, wait: float) -> bool:
    """Whether the server closes the connection (EOF or reset) within `wait` seconds."""
    if wait <= 0:
        return False
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def wait_closed(sock: socket.socket, timeout: float) -> float:
    """Seconds until the server closes the connection (reading and dropping what it sends)."""
    start = time.monotonic()
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionError:
        pass
    return time.monotonic() - start
