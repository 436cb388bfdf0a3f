"""The connections an ``aio`` accept server tracks for ``close_clients()``.

Tracked weakly, and the ended ones dropped as more come, so that a server that runs
for months with short connections keeps no list of every connection it ever took.
"""

from __future__ import annotations

import asyncio
import gc
import socket

from pycluster import aio


class _Hold(asyncio.Protocol):
    """Keeps each connection open until the test ends it."""


async def _connect_and_close(port: int, count: int) -> None:
    for _ in range(count):
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        await writer.wait_closed()


def test_ended_connections_are_not_kept() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        listener = socket.create_server(("127.0.0.1", 0))
        server = aio._AcceptServer(loop, listener, _Hold, {})
        await server.start_serving()
        port = listener.getsockname()[1]
        try:
            await _connect_and_close(port, 3 * aio._PRUNE_MIN)
            # Let the server side of the last connections see their end.
            for _ in range(20):
                await asyncio.sleep(0.01)
            gc.collect()
            assert len(server._clients) < 2 * aio._PRUNE_MIN
            assert server._transports() == []
            live = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
            while len(server._transports()) < 3:
                await asyncio.sleep(0.01)
            server.close_clients()
            for reader, writer in live:
                assert await asyncio.wait_for(reader.read(), 10) == b""
                writer.close()
        finally:
            server.close()

    asyncio.run(main())
