"""Tiny ASGI hello-world app: the uvicorn reference for bench/http.py.

Run as ``uvicorn --app-dir bench/servers asgi_app:app --workers 2 ...``. Each worker
counts its requests and writes the count when uvicorn shuts it down (lifespan
shutdown), and announces itself at lifespan startup.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from _counts import announce_ready, write_count

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


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer every HTTP request with ``hello world``; handle lifespan for the counts."""
    global served
    if scope["type"] == "http":
        served += 1
        await send(START)
        await send(RESPONSE_BODY)
        return
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                announce_ready(f"uvicorn pid {os.getpid()}")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                write_count(f"uvicorn-{os.getpid()}", served)
                await send({"type": "lifespan.shutdown.complete"})
                return
