"""tornado on asyncio, started as tornado's documentation shows: ``app.listen``, then wait.

Usage: ``tornado_asyncio.py PORT``. ``/`` answers the worker's pid, ``/slow`` takes half
a second, ``/echo`` returns the body it was sent, ``/ws`` is a WebSocket echo. The
program writes ``cleanup-PID`` when it ends.
"""

import asyncio
import os
import sys
from pathlib import Path

import tornado.web
import tornado.websocket


def mark(what: str) -> None:
    """Leave ``WHAT-PID`` in the working directory, for the test to find."""
    Path(f"{what}-{os.getpid()}").touch()


class Pid(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write(str(os.getpid()))


class Slow(tornado.web.RequestHandler):
    async def get(self) -> None:
        mark("slow")
        await asyncio.sleep(0.5)
        self.write(f"slow done {os.getpid()}")


class Echo(tornado.web.RequestHandler):
    def post(self) -> None:
        self.write(self.request.body)


class WsEcho(tornado.websocket.WebSocketHandler):
    def on_message(self, message: str | bytes) -> None:
        self.write_message(f"{os.getpid()}:{message!s}")


def make_app() -> tornado.web.Application:
    return tornado.web.Application(
        [(r"/", Pid), (r"/slow", Slow), (r"/echo", Echo), (r"/ws", WsEcho)]
    )


async def main() -> None:
    app = make_app()
    app.listen(int(sys.argv[1]), "127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    finally:
        mark("cleanup")
