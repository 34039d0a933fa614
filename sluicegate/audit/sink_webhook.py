"""The `webhook` audit sink: batches of events POSTed as `{"events": [...]}`, retried with backoff.

Batches go one at a time, in order; a failed POST (connection error, timeout, any status but 2xx)
is retried after an exponential, jittered backoff, or after what `Retry-After` says on a 429 or
503. After `max_retries`, `on_failure: drop` drops the batch (counted, logged) and `keep` goes on
retrying it while new events wait in the bounded queue. Delivery is at least once: a POST whose
answer is lost is sent again, so a receiver that must not count twice keys on `chain_seq` (or
`request_id`).

The client is the standard library's `urllib.request`, run on the sink's own thread: one POST at
a time is all a sink sends, so a blocking client is the simplest correct fit (no event loop to
run beside the gateway's, no session shared across threads), and batching pays for the new
connection each POST opens. It follows no redirect and reads no proxy from the environment: where
audit events go is set by the config only. Header values and the URL's user and password are
never logged nor shown; the status shows the URL's scheme, host and port only.
"""

from __future__ import annotations

import base64
import email.utils
import http.client
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit, urlunsplit

from sluicegate.audit.sink_base import Record, Sink, SinkContext, backoff_s, dump_json, origin
from sluicegate.errors import SluicegateError
from sluicegate.vault.refs import SecretRef, parse_ref

if TYPE_CHECKING:
    from email.message import Message

    from sluicegate.audit.sink_config import WebhookSinkConfig

#: a `Retry-After` longer than this is cut to it
MAX_RETRY_AFTER_S = 300.0
#: bytes of a receiver's answer read at most (the answer is not used, only its status)
MAX_ANSWER_BYTES = 64 * 1024


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer like any other non-2xx: the batch is not sent elsewhere."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class WebhookSink(Sink):
    """POSTs batches of events to one URL."""

    type = "webhook"
    config: WebhookSinkConfig

    def __init__(self, config: WebhookSinkConfig, name: str, context: SinkContext) -> None:
        super().__init__(config, name, context)
        self.batch_size = config.batch_size
        self.linger_s = config.flush_interval_s
        self._url_ref = parse_ref(config.url)
        self._headers: list[tuple[str, str | SecretRef]] = []
        for header, value in config.headers.items():
            self._headers.append((header, parse_ref(value, allow_prefix=True) or value))
        self._opener = urllib.request.build_opener(_NoRedirect(), urllib.request.ProxyHandler({}))

    @property
    def target(self) -> str:
        if self._url_ref is not None:
            return self._url_ref.ref  # the reference's name, never the URL it holds
        return origin(self.config.url)

    def deliver(self, batch: list[Record]) -> None:
        body = b'{"events":[' + b",".join(dump_json(record) for record in batch) + b"]}"
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                status, retry_after = self._post(body)
            except SluicegateError as exc:  # a secret reference that cannot be read (its name only)
                error = f"{type(exc).__name__}: {exc}"
            except ValueError as exc:
                error = f"the URL cannot be used ({type(exc).__name__})"
            except (OSError, http.client.HTTPException) as exc:
                error = _describe(exc)
            else:
                if 200 <= status < 300:
                    self.counted(len(batch))
                    return
                error = f"HTTP {status}"
            attempt += 1
            self.failed(error)
            if self.config.on_failure == "drop" and attempt > self.config.max_retries:
                self.given_up(len(batch), f"still failing after {self.config.max_retries} retries: {error}")
                return
            delay = retry_after if retry_after is not None else self._backoff(attempt)
            if not self.pause(delay):
                self.given_up(len(batch), f"stopped while the receiver failed: {error}")
                return

    def _backoff(self, attempt: int) -> float:
        return backoff_s(attempt, self.config.backoff_s, self.config.max_backoff_s)

    def _post(self, body: bytes) -> tuple[int, float | None]:
        """One POST: its status, and the `Retry-After` delay of a 429 or 503 (None otherwise)."""
        url, headers = self._request()
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.config.timeout_s) as answer:
                answer.read(MAX_ANSWER_BYTES)
                return int(answer.status), None
        except urllib.error.HTTPError as exc:
            with exc:
                status = exc.code
                wait = _retry_after(exc.headers) if status in (429, 503) else None
                return status, wait

    def _request(self) -> tuple[str, dict[str, str]]:
        """The URL and headers of the next POST, secret references read through the vault (cached
        there, so a rotated secret is picked up once the cache expires)."""
        vault = self.context.vault
        url = vault.resolve(self._url_ref.ref) if self._url_ref is not None else self.config.url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http(s) URL")
        headers = {"Content-Type": "application/json", "User-Agent": "sluicegate-audit"}
        if parts.username is not None or parts.password is not None:
            # urllib does not send a URL's user and password: they go as Basic authentication.
            pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
            netloc = parts.netloc.rpartition("@")[2]
            url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
        for name, value in self._headers:
            if isinstance(value, SecretRef):
                secret = vault.resolve(value.ref)
                value = f"{value.prefix} {secret}" if value.prefix else secret
            headers[name] = value
        return url, headers


def _retry_after(headers: Message) -> float | None:
    """The delay a `Retry-After` header asks for (seconds or an HTTP date), bounded; None if absent."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _describe(exc: OSError | http.client.HTTPException) -> str:
    """A failed POST in words, from the error's type and reason only (never its URL)."""
    reason: object = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, OSError) and reason.strerror:
        return f"{type(reason).__name__}: {reason.strerror}"
    if isinstance(reason, TimeoutError) or type(reason).__name__ == "timeout":
        return "TimeoutError: timed out"
    return type(reason).__name__
