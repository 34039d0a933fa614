"""Fake AWS Bedrock runtime: Converse and ConverseStream, as the documented wire format.

Routes: `POST /model/{modelId}/converse` (JSON answer) and `/model/{modelId}/converse-stream` (AWS
event-stream binary frames), registered on import. Beside this: `auth.py` (SigV4 / API key checks),
`validate.py` (request checks), `answers.py` (bodies and frames), `errors.py` (error answers)."""

from __future__ import annotations

import dataclasses
import uuid
from typing import TYPE_CHECKING

import orjson

from sluicegate.testing.fake_bedrock.answers import (
    EVENT_STREAM,
    converse_body,
    event,
    event_frame,
    exception_frame,
    stream_frames,
)
from sluicegate.testing.fake_bedrock.auth import check_auth
from sluicegate.testing.fake_bedrock.errors import ERRORS, aws_error, send_error
from sluicegate.testing.fake_bedrock.validate import Invalid, validate
from sluicegate.testing.wire import Receive, Request, Send, add_route, begin, plan_answer, send_bytes, stream_events

if TYPE_CHECKING:
    from sluicegate.testing.upstream import FakeUpstream

__all__ = ["ERRORS", "converse_body", "event", "event_frame", "exception_frame", "send_error", "stream_frames"]


async def _converse(fake: FakeUpstream, request: Request, receive: Receive, send: Send) -> None:
    if request.method != "POST":
        await aws_error(send, 405, "UnknownOperationException", "Method not allowed")  # AWS's unknown-operation answer
        return
    if not await check_auth(fake, request, send):
        return
    try:
        data = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        await aws_error(send, 400, "SerializationException", "Failed to parse the request body as JSON.")
        return
    try:
        last_user, prompt_words, messages, max_tokens = validate(data)
    except Invalid as exc:
        await aws_error(send, 400, "ValidationException", str(exc))
        return
    stream = request.match.group("op") == "converse-stream"
    reply = fake._next_reply()
    if not await begin(reply, stream, receive, send, send_error):
        return
    answer = plan_answer(reply, request.match.group("model"), last_user, prompt_words, messages, max_tokens, "tooluse_")
    request_id = {"x-amzn-RequestId": str(uuid.uuid4())}
    if stream:
        head, body, tail = stream_frames(answer)
        tagged = dataclasses.replace(reply, headers={**request_id, **reply.headers})
        await stream_events(tagged, head, body, tail, send, content_type=EVENT_STREAM)
    else:
        await send_bytes(send, 200, orjson.dumps(converse_body(answer)), {**request_id, **reply.headers})


add_route(r"/model/(?P<model>[^/]+)/(?P<op>converse|converse-stream)", _converse)
