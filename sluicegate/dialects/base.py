"""What a client-facing dialect provides to the pipeline for translated calls.

A dialect whose requests are not OpenAI chat turns its body into a neutral chat body
(`to_chat`), and renders neutral results back: a completion as its JSON answer
(`render_response`), neutral chunks as its stream events (a `StreamEncoder`). See
`sluicegate.neutral` for the shapes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.errors import SluicegateError


class StreamEncoder:
    """Renders one neutral stream into the client's stream events (bytes, ready to send).

    `encode` gets each neutral chunk in order (a usage chunk last, with `"choices": []`);
    `finish` runs once after the upstream's end of stream and returns the closing events;
    `error` returns the in-band event that ends a failed stream instead (nothing follows it).
    """

    def __init__(self, call: Call) -> None:
        self.call = call

    def encode(self, chunk: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def finish(self) -> bytes:
        raise NotImplementedError

    def error(self, error: SluicegateError) -> bytes:
        raise NotImplementedError
