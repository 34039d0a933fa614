"""The OpenAI Responses dialect (`POST /v1/responses`), carried over the neutral chat shape.

Request reference: https://platform.openai.com/docs/api-reference/responses/create
Response object:   https://platform.openai.com/docs/api-reference/responses/object
Streaming events:  https://platform.openai.com/docs/api-reference/responses-streaming

No provider speaks this dialect natively: every call is `to_chat` -> provider -> `render_response`
(or `ResponsesStreamEncoder`). `parse.parse_responses` checks the body's shape;
`translate.to_chat` refuses, with `neutral.unsupported`, what a stateless translation cannot
carry (stored state, built-in tools, uploaded files, stored prompts, background runs, logprobs).
`render` and `stream` write the answer; `texts` gives the guardrails every text.

Choices the gateway makes (it keeps no response state):
- `store` is accepted whatever its value and nothing is stored; the answer says `store: false`.
- `truncation: "auto"` is accepted and acts as `"disabled"` (the answer says so): a too long input
  gets the upstream's context-length error, nothing is cut silently.
- `reasoning` input items (a previous answer's reasoning, often encrypted and bound to the model
  that wrote it) are not sent upstream; `include: ["reasoning.encrypted_content"]` therefore yields
  no `encrypted_content`.
- `metadata` is echoed on the answer (the object it labels) and not sent upstream.
- `prompt_cache_key`, `prompt_cache_retention` are cache hints with no effect on the answer: accepted;
  `safety_identifier` stands for `user` when `user` is not given.
- Reasoning text from the upstream comes back as a `reasoning` item's `content` (`reasoning_text`),
  never as a `summary`: the gateway does not summarise.
"""

from __future__ import annotations

from sluicegate.dialects.responses.parse import parse_responses
from sluicegate.dialects.responses.render import render_response
from sluicegate.dialects.responses.stream import ResponsesStreamEncoder
from sluicegate.dialects.responses.texts import request_texts, response_texts
from sluicegate.dialects.responses.translate import to_chat

__all__ = [
    "ResponsesStreamEncoder",
    "parse_responses",
    "render_response",
    "request_texts",
    "response_texts",
    "to_chat",
]
