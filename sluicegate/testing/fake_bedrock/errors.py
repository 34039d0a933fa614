"""Bedrock error answers of the fake: `{"message"}` with the exception name in `x-amzn-ErrorType`
and a request id, as the Converse errors are documented; shared by the auth check and the handler.
"""

from __future__ import annotations

import uuid

import orjson

from sluicegate.testing.wire import Send, send_bytes

# (x-amzn-ErrorType, default message) by status, as the Converse errors are documented
# (https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html#API_runtime_Converse_Errors).
ERRORS: dict[int, tuple[str, str]] = {
    400: ("ValidationException", "The provided request is not valid."),
    403: ("AccessDeniedException", "You don't have access to the model with the specified model ID."),
    404: ("ResourceNotFoundException", "The specified resource ARN was not found. Check the ARN and try again."),
    408: ("ModelTimeoutException", "The request took too long to process. Processing time exceeded the model timeout."),
    424: ("ModelErrorException", "The request failed due to an error while processing the model."),
    429: ("ThrottlingException", "Too many requests, please wait before trying again."),
    500: ("InternalServerException", "The server encountered an internal error while processing the request."),
    503: ("ServiceUnavailableException", "Bedrock is unable to process your request."),
}


async def send_error(send: Send, status: int, message: str | None, extra: dict[str, str]) -> None:
    """A Bedrock error: `{"message"}` and the exception name in `x-amzn-ErrorType`."""
    kind, default = ERRORS.get(status, ("InternalServerException" if status >= 500 else "ValidationException", "Error"))
    await aws_error(send, status, kind, default if message is None else message, extra)


async def aws_error(
    send: Send, status: int, kind: str, message: str, extra: dict[str, str] | None = None, *, key: str = "message"
) -> None:
    """An error of exception type `kind`; `key` is `Message` where AWS capitalises it."""
    headers = {"x-amzn-ErrorType": kind, "x-amzn-RequestId": str(uuid.uuid4()), **(extra or {})}
    await send_bytes(send, status, orjson.dumps({key: message}), headers)
