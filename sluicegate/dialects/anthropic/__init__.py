"""The Anthropic Messages dialect: what the `anthropic` SDKs and Claude Code speak to the gateway.

Requests (`POST /v1/messages`, `POST /v1/messages/count_tokens`) are checked the way Anthropic
checks them, as far as the gateway needs (`parse`, https://docs.anthropic.com/en/api/messages);
errors render as Anthropic's `{"type": "error", "error": {"type", "message"}}` (`bodies`,
https://docs.anthropic.com/en/api/errors). For a provider that does not speak Anthropic, the body
becomes a neutral chat body (`translate.to_chat`), and neutral answers come back as an Anthropic
message (`render.render_response`) or its SSE events (`stream.MessagesStreamEncoder`,
https://docs.anthropic.com/en/api/messages-streaming). `texts` gives the guardrails every text.

What a translated call does not carry, or carries with a loss (everything else raises
`neutral.unsupported`, a 400 naming the feature):
  * `redacted_thinking` blocks of earlier assistant turns are dropped: they are encrypted for
    Anthropic's models and meaningless to any other provider.
  * Several signed thinking blocks in one assistant turn are joined into one reasoning text; a
    signature is kept only when the turn has exactly one.
  * `tool_result` with `is_error: true` becomes a tool message whose text starts with
    `"[tool error] "` (the neutral tool message has no error flag).
  * A text document's `title` and `context` become text parts before its data.
  * Tool-call arguments that are not a JSON object are answered as `input: {}` (non-streamed);
    a stream forwards the upstream's argument text as it comes.
  * A neutral `stop` cannot say whether a stop sequence matched: it is always `end_turn` with
    `stop_sequence: null`.
  * `service_tier` (a capacity preference) is accepted and not forwarded.
"""

from __future__ import annotations

from sluicegate.dialects.anthropic.bodies import count_tokens_body, error_body, error_type, models_list, sse_error
from sluicegate.dialects.anthropic.parse import parse_body, parse_count_tokens, parse_messages
from sluicegate.dialects.anthropic.render import message_id, render_response
from sluicegate.dialects.anthropic.stream import MessagesStreamEncoder
from sluicegate.dialects.anthropic.texts import request_texts, response_texts, stream_event_texts
from sluicegate.dialects.anthropic.translate import to_chat

__all__ = [
    "MessagesStreamEncoder",
    "count_tokens_body",
    "error_body",
    "error_type",
    "message_id",
    "models_list",
    "parse_body",
    "parse_count_tokens",
    "parse_messages",
    "render_response",
    "request_texts",
    "response_texts",
    "sse_error",
    "stream_event_texts",
    "to_chat",
]
