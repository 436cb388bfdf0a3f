"""The ``websockets`` library's ``serve`` (asyncio implementation), as its docs show.

Usage: ``websockets_app.py PORT``. A WebSocket echo that prefixes each answer with the
worker's pid; plain HTTP requests get an answer from ``process_request`` (``/``: the
pid, ``/slow``: half a second later). Writes ``cleanup-PID`` when the server has
closed.
"""

import asyncio
import os
import sys
from http import HTTPStatus
from pathlib import Path

from websockets.asyncio.server import Request, Response, ServerConnection, serve


def mark(what: str) -> None:
    """Leave ``WHAT-PID`` in the working directory, for the test to find."""
    Path(f"{what}-{os.getpid()}").touch()


async def echo(websocket: ServerConnection) -> None:
    async for message in websocket:
        await websocket.send(f"{os.getpid()}:{message!s}")


async def plain_http(connection: ServerConnection, request: Request) -> Response | None:
    if request.path == "/":
        return connection.respond(HTTPStatus.OK, str(os.getpid()))
    if request.path == "/slow":
        mark("slow")
        await asyncio.sleep(0.5)
        return connection.respond(HTTPStatus.OK, f"slow done {os.getpid()}")
    return None  # /ws and the rest: go on with the WebSocket handshake


async def main() -> None:
    async with serve(echo, "127.0.0.1", int(sys.argv[1]), process_request=plain_http) as server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    finally:
        mark("cleanup")
