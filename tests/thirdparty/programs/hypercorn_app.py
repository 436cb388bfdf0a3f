"""An ASGI application on hypercorn: ``hypercorn.asyncio.serve``, or its trio twin.

Usage: ``hypercorn_app.py PORT [trio]``. ``/`` answers the worker's pid, ``/slow`` takes half
a second, ``/echo`` returns the body it was sent, ``/ws`` echoes WebSocket messages
prefixed with the pid. hypercorn stops gracefully on SIGINT and SIGTERM by itself;
writes ``cleanup-PID`` once ``serve()`` has returned.
"""

import asyncio
import importlib
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from hypercorn.config import Config

Message = MutableMapping[str, Any]
#: The running library's sleep (asyncio's, or trio's under ``trio``).
sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep


def mark(what: str) -> None:
    """Leave ``WHAT-PID`` in the working directory, for the test to find."""
    Path(f"{what}-{os.getpid()}").touch()


async def app(
    scope: Message,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].rsplit(".", 1)[-1]  # startup or shutdown
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            text = message.get("text") or (message.get("bytes") or b"").decode()
            await send({"type": "websocket.send", "text": f"{os.getpid()}:{text}"})
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/slow":
        mark("slow")
        await sleep(0.5)
        body = f"slow done {os.getpid()}".encode()
    elif scope["path"] != "/echo":
        body = str(os.getpid()).encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    config = Config()
    config.bind = [f"127.0.0.1:{sys.argv[1]}"]
    config.graceful_timeout = 5
    if sys.argv[2:] == ["trio"]:
        trio = importlib.import_module("trio")
        serve = importlib.import_module("hypercorn.trio").serve
        sleep = trio.sleep
        trio.run(serve, app, config)
    else:
        serve = importlib.import_module("hypercorn.asyncio").serve
        asyncio.run(serve(app, config))
    mark("cleanup")
