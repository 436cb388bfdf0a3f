"""asyncio integration: ``start_server`` and ``create_server`` that share their port.

In a worker, the listener comes from the primary (see :mod:`pycluster._ports`) and is
served by the running loop's own ``create_server(sock=...)``, so protocols,
transports and TLS behave exactly as in asyncio. The returned server also:

* ends ``serve_forever()`` normally (no ``CancelledError``) when pycluster closes it
  for ``worker.disconnect()``;
* counts its connections, so a disconnect waits until they have finished;
* beats the worker's heartbeat from the loop, for hang detection.

Outside a cluster these are ``asyncio.start_server`` / ``loop.create_server``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from pycluster import _child as child
from pycluster import _ports as net

ClientConnected = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]
HEARTBEAT_INTERVAL = 0.5


class Server:
    """An ``asyncio.Server`` whose port is shared with the other workers."""

    def __init__(
        self, server: asyncio.AbstractServer, runtime: child.ChildRuntime, token: int | None
    ):
        self._server = server
        self._runtime = runtime
        self._loop = asyncio.get_running_loop()
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed_by_cluster = False
        self._stopped = asyncio.Event()
        self._beat: asyncio.Task[None] | None = None
        # No token (the listener already unregistered) or a refused take-over: a
        # disconnect closed the listener while the server was being set up.
        if token is None or not runtime.servers.replace(token, self._close_from_disconnect):
            self._closed_by_cluster = True
            try:
                server.close()
            except ValueError:
                pass
        if runtime.status is not None:
            self._beat = self._loop.create_task(self._heartbeat())

    # -- asyncio.Server's surface --------------------------------------------------------
    @property
    def sockets(self) -> tuple[Any, ...]:
        """The listening sockets (for round-robin, the hand-off look-alike)."""
        return tuple(getattr(self._server, "sockets", ()))

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """The loop this server runs on."""
        return self._loop

    def is_serving(self) -> bool:
        """Whether the server accepts connections."""
        return self._server.is_serving()

    def close(self) -> None:
        """Stop accepting; existing connections go on."""
        self._stopped.set()
        try:
            self._server.close()
        except ValueError:
            pass  # the listener was already closed by a disconnect: nothing to stop
        if self._beat is not None:
            self._beat.cancel()

    async def wait_closed(self) -> None:
        """Wait until the server is closed and its connections have ended."""
        await self._server.wait_closed()
        await self._idle.wait()

    async def start_serving(self) -> None:
        """Start accepting connections."""
        await self._server.start_serving()

    async def serve_forever(self) -> None:
        """Serve until closed; returns normally when pycluster disconnects the worker.

        Waits on the server's own close rather than the loop's ``serve_forever``, whose
        ending on close differs between asyncio and uvloop.
        """
        if not self._closed_by_cluster:
            if not self._server.is_serving():
                await self._server.start_serving()
            try:
                await self._stopped.wait()
            except asyncio.CancelledError:
                self.close()
                await self.wait_closed()
                raise
        if self._closed_by_cluster:
            # Requests in progress finish before the program goes on (and perhaps
            # ends, which would cancel their tasks mid-answer).
            await self._idle.wait()
            return
        raise asyncio.CancelledError  # closed by the program: as asyncio's serve_forever

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

    # -- pycluster's part ---------------------------------------------------------------
    def _opened(self) -> None:
        self._active += 1
        self._idle.clear()

    def _lost(self) -> None:
        self._active -= 1
        if self._active <= 0:
            self._idle.set()

    async def _heartbeat(self) -> None:
        status = self._runtime.status
        while status is not None:
            status.beat()
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    def _close_from_disconnect(self) -> None:
        async def close() -> None:
            self._closed_by_cluster = True
            self.close()
            await self.wait_closed()

        try:
            asyncio.run_coroutine_threadsafe(close(), self._loop).result()
        except RuntimeError:
            pass  # the loop is closed: nothing is served any more


def _tracking(
    factory: Callable[[], asyncio.BaseProtocol], holder: list[Server]
) -> Callable[[], Any]:
    def make() -> asyncio.BaseProtocol:
        protocol = factory()
        server = holder[0] if holder else None
        if server is None:
            return protocol
        server._opened()
        original = protocol.connection_lost

        def connection_lost(exc: Exception | None) -> None:
            try:
                original(exc)
            finally:
                server._lost()

        protocol.connection_lost = connection_lost  # type: ignore[method-assign]
        return protocol

    return make


async def create_server(
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    host: str | None = None,
    port: int | None = None,
    *,
    family: int = socket.AF_UNSPEC,
    sock: socket.socket | None = None,
    backlog: int = 100,
    exclusive: bool = False,
    **kwargs: Any,
) -> Server | asyncio.Server:
    """``loop.create_server`` whose listening socket is shared with the other workers."""
    loop = asyncio.get_running_loop()
    runtime = child.runtime()
    if runtime is None or sock is not None or exclusive:
        return await loop.create_server(
            protocol_factory,
            host,
            port,  # type: ignore[arg-type]
            family=family,
            sock=sock,  # type: ignore[arg-type]
            backlog=backlog,
            **kwargs,
        )
    if host is not None and not isinstance(host, str):
        raise TypeError("in a cluster worker, host must be one address (a str) or None")
    address = await _resolve(loop, host, port or 0, family)
    listener = await asyncio.to_thread(
        net.create_server,
        address[1],
        family=address[0],
        backlog=backlog,
        policy=_policy_for(loop, address[1]),
    )
    return await _serve(loop, runtime, listener, protocol_factory, backlog, kwargs)


async def create_unix_server(
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    path: str | None = None,
    *,
    sock: socket.socket | None = None,
    backlog: int = 100,
    **kwargs: Any,
) -> Server | asyncio.Server:
    """``loop.create_unix_server`` shared with the other workers."""
    loop = asyncio.get_running_loop()
    runtime = child.runtime()
    if runtime is None or sock is not None:
        return await loop.create_unix_server(
            protocol_factory, path, sock=sock, backlog=backlog, **kwargs
        )
    listener = await asyncio.to_thread(
        net.create_server,
        path,
        family=socket.AF_UNIX,
        backlog=backlog,
        policy=_policy_for(loop, path),
    )
    return await _serve(loop, runtime, listener, protocol_factory, backlog, kwargs)


def _policy_for(loop: asyncio.AbstractEventLoop, address: Any) -> int | None:
    """Shared policy for loops that accept in C (uvloop): they need a real socket."""
    from asyncio.selector_events import BaseSelectorEventLoop

    if isinstance(loop, BaseSelectorEventLoop):
        return None
    import logging

    logging.getLogger("pycluster").warning(
        "%s accepts connections in C, where round-robin cannot reach: "
        "sharing the listening socket of %r instead (SCHED_NONE)",
        type(loop).__name__,
        address,
    )
    return 1  # SCHED_NONE


async def _serve(
    loop: asyncio.AbstractEventLoop,
    runtime: child.ChildRuntime,
    listener: Any,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    backlog: int,
    kwargs: dict[str, Any],
) -> Server:
    holder: list[Server] = []
    factory = _tracking(protocol_factory, holder)
    try:
        serving = listener.fileno() != -1
        inner = await loop.create_server(
            factory, sock=listener, backlog=backlog, start_serving=serving, **kwargs
        )
    except (OSError, ValueError):
        if listener.fileno() != -1:
            raise
        # A disconnect closed the listener meanwhile: hand back a closed server.
        inner = await loop.create_server(
            factory, sock=listener, backlog=backlog, start_serving=False, **kwargs
        )
    server = Server(inner, runtime, getattr(listener, "registry_token", None))
    holder.append(server)
    return server


async def _resolve(
    loop: asyncio.AbstractEventLoop, host: str | None, port: int, family: int
) -> tuple[int, tuple[str, int]]:
    if not host:
        return (socket.AF_INET6 if family == socket.AF_INET6 else socket.AF_INET), ("", port)
    infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"cannot resolve {host!r}")
    fam, _type, _proto, _canon, sockaddr = infos[0]
    return int(fam), (str(sockaddr[0]), int(sockaddr[1]))


def _stream_factory(
    client_connected_cb: ClientConnected, limit: int
) -> Callable[[], asyncio.BaseProtocol]:
    loop = asyncio.get_running_loop()

    def factory() -> asyncio.BaseProtocol:
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

    return factory


async def start_server(
    client_connected_cb: ClientConnected,
    host: str | None = None,
    port: int | None = None,
    *,
    limit: int = 2**16,
    **kwargs: Any,
) -> Server | asyncio.Server:
    """``asyncio.start_server`` whose port is shared with the other workers."""
    if child.runtime() is None:
        return await asyncio.start_server(client_connected_cb, host, port, limit=limit, **kwargs)
    return await create_server(_stream_factory(client_connected_cb, limit), host, port, **kwargs)


async def start_unix_server(
    client_connected_cb: ClientConnected,
    path: str | None = None,
    *,
    limit: int = 2**16,
    **kwargs: Any,
) -> Server | asyncio.Server:
    """``asyncio.start_unix_server`` shared with the other workers."""
    if child.runtime() is None:
        return await asyncio.start_unix_server(client_connected_cb, path, limit=limit, **kwargs)
    return await create_unix_server(_stream_factory(client_connected_cb, limit), path, **kwargs)
