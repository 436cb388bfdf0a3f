"""A Starlette application with a lifespan, served by ``uvicorn.run(app)`` in a script.

Usage: ``uvicorn_app.py PORT [LOOP]`` (``LOOP`` is uvicorn's ``loop`` option, ``auto``
by default: uvloop when it is installed). ``/`` answers the worker's pid, ``/slow``
takes half a second, ``/echo`` returns the body it was sent, ``/ws`` is a WebSocket
echo. The lifespan's shutdown writes ``cleanup-PID``. ``pycluster serve`` serves the
same ``app`` (``uvicorn_app:app``), where ``/stream`` (a streamed body, see
``STREAMED``) and ``/watch`` (ticks until the client goes, then writes ``gone-PID``)
are used too.
"""

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


def mark(what: str) -> None:
    """Leave ``WHAT-PID`` in the working directory, for the test to find."""
    Path(f"{what}-{os.getpid()}").touch()


async def pid(request: Request) -> Response:
    return PlainTextResponse(str(os.getpid()))


async def slow(request: Request) -> Response:
    mark("slow")
    await asyncio.sleep(0.5)
    return PlainTextResponse(f"slow done {os.getpid()}")


async def echo(request: Request) -> Response:
    return Response(await request.body())


#: What ``/stream`` sends, in 20 pieces.
STREAMED = b"".join(bytes([65 + i % 26]) * 10_000 for i in range(20))


async def stream(request: Request) -> Response:
    async def pieces() -> AsyncIterator[bytes]:
        for i in range(20):
            await asyncio.sleep(0)
            yield STREAMED[i * 10_000 : (i + 1) * 10_000]

    return StreamingResponse(pieces(), media_type="application/octet-stream")


async def watch(request: Request) -> Response:
    async def ticks() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"tick\n"
                await asyncio.sleep(0.02)
        finally:
            mark("gone")  # Starlette stopped the stream: it saw the client go

    return StreamingResponse(ticks(), media_type="text/plain")


async def ws_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive_text()
            await websocket.send_text(f"{os.getpid()}:{message}")
    except WebSocketDisconnect:
        pass


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    mark("cleanup")


app = Starlette(
    routes=[
        Route("/", pid),
        Route("/slow", slow),
        Route("/echo", echo, methods=["POST"]),
        Route("/stream", stream),
        Route("/watch", watch),
        WebSocketRoute("/ws", ws_echo),
    ],
    lifespan=lifespan,
)

if __name__ == "__main__":
    loop = sys.argv[2] if len(sys.argv) > 2 else "auto"
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop=loop, log_level="warning")
