"""An ``asyncio.start_server`` line echo, as the asyncio streams docs show.

Usage: ``asyncio_streams.py PORT``. Each line comes back prefixed with the worker's
pid; the line ``slow`` is answered half a second later. Writes ``cleanup-PID`` once
``serve_forever()`` has ended.
"""

import asyncio
import os
import sys
from pathlib import Path


def mark(what: str) -> None:
    """Leave ``WHAT-PID`` in the working directory, for the test to find."""
    Path(f"{what}-{os.getpid()}").touch()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():
        if line == b"slow\n":
            mark("slow")
            await asyncio.sleep(0.5)
        writer.write(b"%d %s" % (os.getpid(), line))
        await writer.drain()
    writer.close()
    await writer.wait_closed()


async def main() -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    finally:
        mark("cleanup")
