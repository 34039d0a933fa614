"""The fake's OpenAI moderations (`POST /v1/moderations`): an input is flagged in a category when
it holds that category's word of `MODERATION_TRIGGERS` (the remote guardrail tests rely on it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from sluicegate.testing.fake_openai.common import BadRequest, send_error
from sluicegate.testing.wire import Receive, Send, begin, rand, send_bytes, text_of

if TYPE_CHECKING:
    from sluicegate.testing.upstream import FakeUpstream

DEFAULT_MODERATION_MODEL = "omni-moderation-latest"
#: the categories `omni-moderation` scores
MODERATION_CATEGORIES: tuple[str, ...] = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
#: a moderation input containing one of these words (any case) is flagged in its category with score 0.9
MODERATION_TRIGGERS: dict[str, str] = {"kill": "violence", "hate": "hate", "bully": "harassment"}


async def moderations(fake: FakeUpstream, data: dict[str, Any], receive: Receive, send: Send) -> None:
    """Moderations (https://platform.openai.com/docs/api-reference/moderations), scored by trigger words.

    A scripted ``Reply`` applies its status, fault, delay, model and headers; its content is not used.
    """
    raw = data.get("input")
    if raw is None:
        raise BadRequest("Missing required parameter: 'input'.", "input", "missing_required_parameter")
    inputs: list[str]
    if isinstance(raw, str):
        inputs = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
        inputs = raw
    elif isinstance(raw, list) and raw and all(isinstance(x, dict) for x in raw):
        inputs = [text_of(raw)]  # multi-modal parts moderate as one input
    else:
        raise BadRequest("'$.input' is invalid. Please check the API reference.", "input", "invalid_value")
    model = data.get("model", DEFAULT_MODERATION_MODEL)
    if not isinstance(model, str):
        raise BadRequest("Invalid type for 'model': expected a string.", "model", "invalid_type")

    reply = fake._next_reply()
    if not await begin(reply, False, receive, send, send_error):
        return
    results = []
    for text in inputs:
        lowered = text.lower()
        hits = {category for word, category in MODERATION_TRIGGERS.items() if word in lowered}
        results.append(
            {
                "flagged": bool(hits),
                "categories": {c: c in hits for c in MODERATION_CATEGORIES},
                "category_scores": {c: 0.9 if c in hits else 0.01 for c in MODERATION_CATEGORIES},
                "category_applied_input_types": {c: ["text"] for c in MODERATION_CATEGORIES},
            }
        )
    obj = {"id": "modr-" + rand(24), "model": reply.model or model, "results": results}
    await send_bytes(send, 200, orjson.dumps(obj), reply.headers)
