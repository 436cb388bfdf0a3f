"""aiohttp served by ``web.run_app``, with the shutdown and cleanup hooks its docs show.

Usage: ``aiohttp_app.py PORT``. ``/`` answers the worker's pid, ``/slow`` takes half a
second, ``/echo`` returns the body it was sent, ``/ws`` is a WebSocket echo. At
shutdown the open WebSockets are closed (``on_shutdown``) and ``on_cleanup`` writes
``cleanup-PID``.
"""

import asyncio
import os
import sys
import weakref
from pathlib import Path

from aiohttp import WSCloseCode, WSMsgType, web


def mark(what: str) -> None:
    """Leave ``WHAT-PID`` in the working directory, for the test to find."""
    Path(f"{what}-{os.getpid()}").touch()


websockets = web.AppKey("websockets", weakref.WeakSet[web.WebSocketResponse])


async def pid(request: web.Request) -> web.Response:
    return web.Response(text=str(os.getpid()))


async def slow(request: web.Request) -> web.Response:
    mark("slow")
    await asyncio.sleep(0.5)
    return web.Response(text=f"slow done {os.getpid()}")


async def echo(request: web.Request) -> web.Response:
    return web.Response(body=await request.read())


async def ws_echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    request.app[websockets].add(ws)
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(f"{os.getpid()}:{msg.data}")
    finally:
        request.app[websockets].discard(ws)
    return ws


async def on_shutdown(app: web.Application) -> None:
    for ws in set(app[websockets]):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"Server shutdown")


async def on_cleanup(app: web.Application) -> None:
    mark("cleanup")


app = web.Application()
app[websockets] = weakref.WeakSet()
app.add_routes(
    [web.get("/", pid), web.get("/slow", slow), web.post("/echo", echo), web.get("/ws", ws_echo)]
)
app.on_shutdown.append(on_shutdown)
app.on_cleanup.append(on_cleanup)

if __name__ == "__main__":
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]))
