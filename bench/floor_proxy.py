"""The floor: a bare pass-through with no policy, on the gateway's own transport stack.

Raw ASGI on uvicorn (uvloop, httptools) forwarding to the upstream with one aiohttp session:
no auth, no parsing, no audit. `bench/run.py` measures it beside the gateway, so the cost of the
gateway's stages is the difference between the two, on the same machine and run.

    python bench/floor_proxy.py UPSTREAM_BASE_URL PORT
"""

from __future__ import annotations

import sys
from typing import Any

import aiohttp
import uvicorn
import uvloop

UPSTREAM = sys.argv[1].rstrip("/") + "/v1/chat/completions"
PORT = int(sys.argv[2])
HEADERS = {"Authorization": "Bearer sk-bench-floor", "Content-Type": "application/json"}
state: dict[str, aiohttp.ClientSession] = {}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                state["session"] = aiohttp.ClientSession()
                await send({"type": "lifespan.startup.complete"})
            else:
                await state["session"].close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] != "/v1/chat/completions":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    async with state["session"].post(UPSTREAM, data=body, headers=HEADERS) as resp:
        ctype = resp.headers.get("content-type", "application/json").encode()
        await send({"type": "http.response.start", "status": resp.status, "headers": [(b"content-type", ctype)]})
        if ctype.startswith(b"text/event-stream"):
            async for chunk in resp.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        else:
            await send({"type": "http.response.body", "body": await resp.read()})


if __name__ == "__main__":
    config = uvicorn.Config(app, host="127.0.0.1", port=PORT, http="httptools", log_level="warning", access_log=False)
    uvloop.run(uvicorn.Server(config).serve())
