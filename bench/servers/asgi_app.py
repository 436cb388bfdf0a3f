"""Tiny ASGI hello-world app for bench/http.py: uvicorn, granian and ``pycluster serve``.

Run as ``uvicorn --app-dir bench/servers asgi_app:app --workers 2 ...`` (or the same
module under granian or ``pycluster serve``). Each worker announces itself at lifespan
startup, counts its requests, and writes the count when its server shuts it down
(lifespan shutdown).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from _counts import FRESH_PATH, announce_ready, worker_key, write_count

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

BODY = b"hello world\n"
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(BODY))],
}
RESPONSE_BODY = {"type": "http.response.body", "body": BODY}

served = 0
fresh = 0  # requests for FRESH_PATH


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer every HTTP request with ``hello world``; handle lifespan for the counts."""
    global served, fresh
    if scope["type"] == "http":
        served += 1
        if scope["path"] == FRESH_PATH:
            fresh += 1
        await send(START)
        await send(RESPONSE_BODY)
        return
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                announce_ready(f"asgi pid {os.getpid()}")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                write_count(worker_key("asgi"), served, fresh)
                await send({"type": "lifespan.shutdown.complete"})
                return
