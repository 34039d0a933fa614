"""Refusals and failures of the gateway, as one exception tree.

Every refusal on the request path is one of these; the client's dialect renders it as its own
error JSON with the status and stable code carried here. Nothing else builds error bodies.

    SluicegateError                 status  code
    ├── BadRequest                  400     invalid_request_error (or a narrower code)
    │   ├── InvalidJSON             400     invalid_json
    │   ├── RequestTimeout          408     request_timeout (the body did not arrive in time)
    │   ├── BodyTooLarge            413     request_too_large
    │   └── UnsupportedEncoding     415     unsupported_content_encoding
    ├── Unauthorized                401     invalid_api_key
    ├── Forbidden                   403     model_not_allowed (or a narrower code)
    ├── NotFound                    404     model_not_found / not_found
    ├── MethodNotAllowed            405     method_not_allowed
    ├── RateLimited                 429     rate_limit_exceeded (carries Retry-After)
    ├── UpstreamError               502     upstream_error (names the provider, never its key)
    │   ├── UpstreamUnavailable     503     upstream_unavailable
    │   └── UpstreamTimeout         504     upstream_timeout
    └── ServiceUnavailable          503     a code naming the cause (audit store down ...)
"""

from __future__ import annotations


class SluicegateError(Exception):
    """Base of every error the gateway renders to a client."""

    status: int = 500
    code: str = "internal_error"
    type: str = "server_error"
    #: the audit decision this refusal stands for
    decision: str = "error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        rule: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.param = param
        self.retry_after = retry_after
        self.rule = rule


class BadRequest(SluicegateError):
    """The request cannot be understood or breaks a documented limit."""

    status = 400
    code = "invalid_request_error"
    type = "invalid_request_error"
    decision = "rejected"


class InvalidJSON(BadRequest):
    """The body is not JSON, or not a JSON object."""

    code = "invalid_json"


class RequestTimeout(BadRequest):
    """The client did not send its request (its body) within the server's deadline."""

    status = 408
    code = "request_timeout"


class BodyTooLarge(BadRequest):
    """The body is larger than the configured limit."""

    status = 413
    code = "request_too_large"


class UnsupportedEncoding(BadRequest):
    """The body is compressed with a `Content-Encoding` the gateway does not decode."""

    status = 415
    code = "unsupported_content_encoding"


class Unauthorized(SluicegateError):
    """No credential, or one the gateway does not know."""

    status = 401
    code = "invalid_api_key"
    type = "authentication_error"
    decision = "denied"


class Forbidden(SluicegateError):
    """A known consumer asked for something its policy does not allow."""

    status = 403
    code = "model_not_allowed"
    type = "permission_error"
    decision = "denied"


class NotFound(SluicegateError):
    """An unknown model or path."""

    status = 404
    code = "not_found"
    type = "invalid_request_error"
    decision = "rejected"


class MethodNotAllowed(SluicegateError):
    """A known path called with the wrong HTTP method."""

    status = 405
    code = "method_not_allowed"
    type = "invalid_request_error"
    decision = "rejected"


class RateLimited(SluicegateError):
    """Too many requests, from the gateway's limits or relayed from the upstream."""

    status = 429
    code = "rate_limit_exceeded"
    type = "rate_limit_error"
    decision = "limited"


class UpstreamError(SluicegateError):
    """The provider failed or refused; the message names the provider, never its credential."""

    status = 502
    code = "upstream_error"
    type = "upstream_error"
    decision = "error"


class UpstreamUnavailable(UpstreamError):
    """The provider could not be reached or said it is overloaded."""

    status = 503
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    """The provider did not answer within the configured timeout."""

    status = 504
    code = "upstream_timeout"


class ServiceUnavailable(SluicegateError):
    """The gateway itself cannot serve the call safely (fail closed)."""

    status = 503
    code = "service_unavailable"
    type = "server_error"
    decision = "error"
