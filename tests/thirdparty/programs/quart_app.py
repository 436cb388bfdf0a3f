"""A Quart application, for ``pycluster serve quart_app:app``.

``/`` answers the worker's pid, ``/slow`` takes half a second, ``/echo`` returns the
body it was sent, ``/stream`` sends ``STREAMED`` in 20 pieces, ``/ws`` is a WebSocket
echo. ``after_serving`` (Quart's lifespan shutdown) writes ``cleanup-PID``.
"""

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

from quart import Quart, Response, request, websocket

STREAMED = b"".join(bytes([65 + i % 26]) * 10_000 for i in range(20))

app = Quart(__name__)


def mark(what: str) -> None:
    """Leave ``WHAT-PID`` in the working directory, for the test to find."""
    Path(f"{what}-{os.getpid()}").touch()


@app.after_serving
async def cleanup() -> None:
    mark("cleanup")


@app.get("/")
async def pid() -> str:
    return str(os.getpid())


@app.get("/slow")
async def slow() -> str:
    mark("slow")
    await asyncio.sleep(0.5)
    return f"slow done {os.getpid()}"


@app.post("/echo")
async def echo() -> Response:
    return Response(await request.get_data(), content_type="application/octet-stream")


@app.get("/stream")
async def stream() -> Response:
    async def pieces() -> AsyncIterator[bytes]:
        for i in range(20):
            await asyncio.sleep(0)
            yield STREAMED[i * 10_000 : (i + 1) * 10_000]

    return Response(pieces(), content_type="application/octet-stream")


@app.websocket("/ws")
async def ws_echo() -> None:
    while True:
        message = await websocket.receive()
        await websocket.send(f"{os.getpid()}:{message}")
