"""The OpenAI HTTP API as the fake upstream speaks it: its endpoint handlers and `ROUTES`, the
table `FakeUpstream` dispatches OpenAI (and rewritten Azure) paths with after the other formats.

Handlers take ``(fake, data, receive, send)``, `data` the parsed JSON body; they raise
`BadRequest` for a field OpenAI would refuse. Errors have OpenAI's shape (`common.py`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from sluicegate.testing.fake_openai.chat import chat, mistral_chat
from sluicegate.testing.fake_openai.common import BadRequest, error_body, mask_key, send_error
from sluicegate.testing.fake_openai.completions import completions
from sluicegate.testing.fake_openai.embeddings import embeddings
from sluicegate.testing.fake_openai.moderations import moderations
from sluicegate.testing.wire import Send, send_bytes

if TYPE_CHECKING:
    from sluicegate.testing.upstream import FakeUpstream

__all__ = ["ROUTES", "BadRequest", "error_body", "get_model", "list_models", "mask_key", "send_error"]

MODELS_CREATED = 1715367049

#: path -> (method, handler); handler None is the models list (a GET without a body)
ROUTES: dict[str, tuple[str, Callable[..., Awaitable[None]] | None]] = {
    "/v1/chat/completions": ("POST", chat),
    "/mistral/v1/chat/completions": ("POST", mistral_chat),
    "/v1/completions": ("POST", completions),
    "/v1/embeddings": ("POST", embeddings),
    "/v1/moderations": ("POST", moderations),
    "/v1/models": ("GET", None),
}


def _model_obj(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": MODELS_CREATED, "owned_by": "fake-upstream"}


async def list_models(fake: FakeUpstream, send: Send) -> None:
    """`GET /v1/models`: the fake's ``models``."""
    payload = orjson.dumps({"object": "list", "data": [_model_obj(m) for m in fake.models]})
    await send_bytes(send, 200, payload)


async def get_model(fake: FakeUpstream, model_id: str, send: Send) -> None:
    """`GET /v1/models/{model}`: one of the fake's ``models``, else 404."""
    if model_id not in fake.models:
        await send_error(
            send, 404, f"The model '{model_id}' does not exist or you do not have access to it.", param="model"
        )
        return
    await send_bytes(send, 200, orjson.dumps(_model_obj(model_id)))
