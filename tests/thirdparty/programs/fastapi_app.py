"""A FastAPI application with a lifespan, for ``pycluster serve fastapi_app:app``.

``/`` answers the worker's pid, ``/slow`` takes half a second, ``/echo`` returns the
body it was sent, ``/stream`` sends ``STREAMED`` in 20 pieces, ``/watch`` ticks until
the client goes (then writes ``gone-PID``), ``/ws`` is a WebSocket echo. The
lifespan's shutdown writes ``cleanup-PID``.
"""

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

STREAMED = b"".join(bytes([65 + i % 26]) * 10_000 for i in range(20))


def mark(what: str) -> None:
    """Leave ``WHAT-PID`` in the working directory, for the test to find."""
    Path(f"{what}-{os.getpid()}").touch()


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    mark("cleanup")


app = FastAPI(lifespan=lifespan)


# FastAPI answers HEAD only where a route names it.
@app.api_route("/", methods=["GET", "HEAD"], response_class=PlainTextResponse)
async def pid() -> str:
    return str(os.getpid())


@app.get("/slow", response_class=PlainTextResponse)
async def slow() -> str:
    mark("slow")
    await asyncio.sleep(0.5)
    return f"slow done {os.getpid()}"


@app.post("/echo")
async def echo(request: Request) -> Response:
    return Response(await request.body())


@app.get("/stream")
async def stream() -> StreamingResponse:
    async def pieces() -> AsyncIterator[bytes]:
        for i in range(20):
            await asyncio.sleep(0)
            yield STREAMED[i * 10_000 : (i + 1) * 10_000]

    return StreamingResponse(pieces(), media_type="application/octet-stream")


@app.get("/watch")
async def watch() -> StreamingResponse:
    async def ticks() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"tick\n"
                await asyncio.sleep(0.02)
        finally:
            mark("gone")  # the stream was stopped: the client went

    return StreamingResponse(ticks(), media_type="text/plain")


@app.websocket("/ws")
async def ws_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive_text()
            await websocket.send_text(f"{os.getpid()}:{message}")
    except WebSocketDisconnect:
        pass
