"""The connections an ``aio`` accept server tracks for ``close_clients()``.

Tracked weakly (a transport that takes no weak reference, uvloop's TLS one, until its
connection is lost), and the ended ones dropped as more come, so that a server that
runs for months with short connections keeps no list of every connection it ever took.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from pycluster import aio
from tests.conftest import LOOPS, make_cert


class _Hold(asyncio.Protocol):
    """Keeps each connection open until its client ends it."""


def _run(loop: str, main: Coroutine[Any, Any, None]) -> None:
    if loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest.mark.parametrize("loop", LOOPS)
def test_ended_connections_are_not_kept(tmp_path: Path, loop: str, tls: bool) -> None:
    server_context = client_context = None
    if tls:
        ca, cert, key = make_cert(tmp_path)
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_context.load_cert_chain(cert, key)
        client_context = ssl.create_default_context()
        ca.configure_trust(client_context)
    connections = 3 * aio._PRUNE_MIN if not tls else aio._PRUNE_MIN + 40

    async def open_one(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(
            "127.0.0.1",
            port,
            ssl=client_context,
            server_hostname="localhost" if tls else None,
        )

    async def main() -> None:
        running = asyncio.get_running_loop()
        listener = socket.create_server(("127.0.0.1", 0))
        options = {"ssl": server_context} if tls else {}
        server = aio._AcceptServer(running, listener, _Hold, options)
        await server.start_serving()
        port = listener.getsockname()[1]
        try:
            for _ in range(connections):
                _reader, writer = await open_one(port)
                writer.close()
                await writer.wait_closed()
            # Let the server side of the last connections see their end.
            for _ in range(50):
                await asyncio.sleep(0.01)
                if not server._transports():
                    break
            gc.collect()
            assert server._transports() == []
            assert len(server._clients) < connections
            live = [await open_one(port) for _ in range(3)]
            # Polled: the server has no event for a connection it started.
            while len(server._transports()) < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            # asyncio 3.13's order: stop accepting, then end the connections.
            server.close()
            server.close_clients()
            for reader, writer in live:
                assert await asyncio.wait_for(reader.read(), 10) == b""
                writer.close()
        finally:
            server.close()

    _run(loop, main())
