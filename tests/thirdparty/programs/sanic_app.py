"""A Sanic application in one process per worker (``app.run(single_process=True)``).

Usage: ``sanic_app.py PORT``. ``/`` answers the worker's pid, ``/slow`` takes half a
second, ``/echo`` returns the body it was sent, ``/ws`` echoes WebSocket messages
prefixed with the pid. Sanic stops gracefully on SIGINT and SIGTERM by itself; writes
``cleanup-PID`` once ``run()`` has returned.
"""

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from sanic import Request, Sanic, response


def mark(what: str) -> None:
    """Leave ``WHAT-PID`` in the working directory, for the test to find."""
    Path(f"{what}-{os.getpid()}").touch()


app = Sanic("pycluster_test")


@app.get("/")
async def pid(request: Request) -> Any:
    return response.text(str(os.getpid()))


@app.get("/slow")
async def slow(request: Request) -> Any:
    mark("slow")
    await asyncio.sleep(0.5)
    return response.text(f"slow done {os.getpid()}")


@app.post("/echo")
async def echo(request: Request) -> Any:
    return response.raw(request.body)


@app.websocket("/ws")
async def ws_echo(request: Request, ws: Any) -> None:
    async for message in ws:
        await ws.send(f"{os.getpid()}:{message}")


if __name__ == "__main__":
    app.run(
        host="127.0.0.1", port=int(sys.argv[1]), single_process=True, access_log=False, motd=False
    )
    mark("cleanup")
