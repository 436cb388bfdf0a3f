"""``pycluster serve``: a WSGI or ASGI application in a cluster worker.

Both interfaces are served by pycluster's own HTTP/1.1 protocols, parsed by
httptools (llhttp): :mod:`pycluster._cli.asgi` for ASGI apps, :mod:`pycluster._cli.wsgi`
for WSGI apps (the environ built directly, the app inline or in a thread pool).
uvicorn's ``Server`` still runs each worker's life around them: the TLS context,
the lifespan, graceful shutdown, and a WebSocket upgrade, which the ASGI protocol
hands to uvicorn's WebSocket protocol. Measured on a hello-world app, uvicorn's own
HTTP protocol cost a third more CPU per keep-alive request and 8 % more per new
connection (see :mod:`pycluster._cli.asgi`), and
its WSGI route (a2wsgi over ASGI) ran at 0.4-0.8x gunicorn's sync workers. Both are
kept for ``--http h11`` and for when httptools is missing (:func:`native_http`);
there uvicorn's protocol writes through
:class:`~pycluster._cli.coalesce.CoalescingTransport`, so a small response's headers
and body leave in one system call rather than two.

The way through this module follows the data: the primary checked the options and
sent a :class:`~pycluster._cli.serveconf.ServeConfig`; :func:`build_app` wraps the
application (WSGI adapter, body limit, proxy headers); :func:`uvicorn_config` makes
uvicorn's configuration (TLS included); :class:`ClusterServer <_server_class>` serves
the cluster's listeners with it. A failure to start is sent to the primary, which
reports it once for all workers.

The listeners come from the primary. A shared listener (policy ``none``) is a real
socket, served by the loop's own ``create_server(sock=...)``. A round-robin listener
is served by :class:`HandoffServer`: the loop watches the hand-off socket, takes
each connection and gives it to ``loop.connect_accepted_socket``, which works on
uvloop as on asyncio, so round-robin keeps uvloop's speed. Both take the TLS
context, so every worker serves HTTPS under either policy.

On ``worker.disconnect()`` (reload, scale-down, stop, recycling) uvicorn shuts down
gracefully: it stops accepting, lets requests in progress finish, closes idle
keep-alive connections, runs the lifespan shutdown, and the worker exits.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, cast

import pycluster as cluster
from pycluster import _child as child
from pycluster import _ports as net
from pycluster import aio
from pycluster._cli import EXIT_APP_LOAD, binds, coalesce, logs, serveconf
from pycluster._cli.serveconf import (
    CERT_REQS,
    FATAL_CMD,
    PASSWORD_ENV,
    AppLoadError,
    ServeConfig,
    app_traceback,
    describe_load_error,
    detect_interface,
    load_app,
)

if TYPE_CHECKING:
    from pycluster._cli import asgi, wsgi

log = logging.getLogger("pycluster._cli")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
HEARTBEAT = 0.5


class WSGICalls:
    """Wraps a WSGI application and remembers since when each call runs without progress.

    a2wsgi runs WSGI calls in a thread pool, where the loop's heartbeat cannot see
    them: a handler stuck in a loop leaves the loop beating. So the heartbeat reports
    the oldest of these times as the last sign of life, and ``--timeout`` catches a
    call stuck in application code, as gunicorn's does. Time spent waiting for the
    client (reading the body, sending a chunk) does not count: a slow client is not
    a hung worker.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.running: dict[int, float] = {}
        self._ids = itertools.count()

    def __call__(self, environ: Any, start_response: Any) -> Iterator[bytes]:
        key = next(self._ids)
        running = self.running

        def resume() -> None:
            running[key] = time.monotonic()

        def pause() -> None:
            running.pop(key, None)

        if environ.get("wsgi.input") is not None:
            environ["wsgi.input"] = _ClientInput(environ["wsgi.input"], pause, resume)
        resume()
        try:
            result = self.app(environ, start_response)
            try:
                chunks = iter(result)
                while True:
                    try:
                        chunk = next(chunks)
                    except StopIteration:
                        break
                    pause()  # the server sends it: the client's pace
                    yield chunk
                    resume()
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        finally:
            pause()

    def oldest(self) -> float | None:
        """Since when the longest call without progress runs (monotonic clock), or None."""
        return min(list(self.running.values()), default=None)


class _ClientInput:
    """``wsgi.input`` whose reads pause the call's hang clock (they wait for the client)."""

    def __init__(self, stream: Any, pause: Callable[[], None], resume: Callable[[], None]):
        self._stream = stream
        self._pause = pause
        self._resume = resume

    def _waiting(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self._pause()
        try:
            return getattr(self._stream, method)(*args, **kwargs)
        finally:
            self._resume()

    def read(self, *args: Any, **kwargs: Any) -> bytes:
        """As ``wsgi.input.read``."""
        return cast(bytes, self._waiting("read", *args, **kwargs))

    def readline(self, *args: Any, **kwargs: Any) -> bytes:
        """As ``wsgi.input.readline``."""
        return cast(bytes, self._waiting("readline", *args, **kwargs))

    def readlines(self, *args: Any, **kwargs: Any) -> list[bytes]:
        """As ``wsgi.input.readlines``."""
        return cast("list[bytes]", self._waiting("readlines", *args, **kwargs))

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``limit`` bytes (declared or streamed)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._reject(send)
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    if not started:
                        await self._reject(send)
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            pass

    async def _reject(self, send: Send) -> None:
        body = b"request body too large\n"
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"text/plain"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def _server_class() -> type:
    import uvicorn

    from pycluster._cli import asgi, wsgi

    class ClusterServer(uvicorn.Server):
        """uvicorn's server on the cluster's listeners, stopped by ``worker.disconnect()``."""

        def __init__(
            self,
            config: Any,
            listeners: list[Any],
            backlog: int,
            calls: WSGICalls | None = None,
            native: wsgi.WSGIServer | None = None,
            native_asgi: bool = False,
        ) -> None:
            super().__init__(config)
            self.calls = calls
            self.native = native
            self.native_asgi = native_asgi
            self.asgi: asgi.ASGIServer | None = None
            self.listeners = listeners
            self.backlog = backlog
            self.finished = threading.Event()
            self._beat: asyncio.Task[None] | None = None
            for listener in listeners:
                found = net.listener_of(listener)
                if found is not None and not net.replace_closer(found, self.close_for_disconnect):
                    # The disconnect came between listening and here (it retired the
                    # listener): as replace_closer asks, serve nothing, and shut down
                    # as soon as uvicorn has started.
                    self.should_exit = True

        async def startup(self, sockets: list[Any] | None = None) -> None:
            await super().startup(sockets=[])
            if not self.started:
                return
            loop = asyncio.get_running_loop()

            config, state = self.config, self.server_state
            # Chosen once: the factory runs for every new connection.
            create_protocol: Callable[[], asyncio.Protocol]
            if self.native_asgi:
                self.asgi = native_asgi_server(config, state, self.lifespan.state, loop)
                create_protocol = functools.partial(asgi.Connection, self.asgi)
            elif self.native is not None:
                create_protocol = functools.partial(wsgi.Connection, self.native, state)
            else:
                # Headers and body in one write (see coalesce): uvicorn sends them apart.
                # The loop given, not found: uvicorn's get_event_loop() checks the
                # process id, a system call per connection on Python 3.11.
                create_protocol = functools.partial(
                    coalesce.coalescing(config.http_protocol_class, loop),
                    config=config,
                    server_state=state,
                    app_state=self.lifespan.state,
                    _loop=loop,
                )

            runtime = child.runtime()
            assert runtime is not None
            for listener in self.listeners:
                if listener.fileno() < 0 or self.should_exit:
                    continue  # closed by a disconnect that came while the app loaded
                server: Any = await aio.serve_socket(
                    loop,
                    runtime,
                    listener,
                    create_protocol,
                    self.backlog,
                    True,
                    {"ssl": self.config.ssl},
                )
                self.servers.append(server)
            if not self.servers:
                self.should_exit = True  # disconnected before serving: nothing to serve
            self._beat = loop.create_task(self._heartbeat())

        async def _heartbeat(self) -> None:
            runtime = child.runtime()
            status = runtime.status if runtime is not None else None
            clock = self.native or self.calls
            while status is not None:
                status.beat(clock.oldest() if clock is not None else None)
                await asyncio.sleep(HEARTBEAT)

        async def shutdown(self, sockets: list[Any] | None = None) -> None:
            if self._beat is not None:
                self._beat.cancel()
            if self.asgi is not None:
                self.asgi.close()
            await super().shutdown(sockets=sockets)
            if self.native is not None:
                self.native.close(self.server_state.connections)

        def close_for_disconnect(self) -> None:
            """Called by ``worker.disconnect()``: shut down gracefully and wait for it."""
            self.should_exit = True
            self.finished.wait()

    return ClusterServer


class WSGIInputTerminated:
    """WSGI middleware: tells the application that ``wsgi.input`` ends at the body's end.

    a2wsgi's input returns b"" once the body is read, chunked or not, so
    ``wsgi.input_terminated`` is true: without it, Werkzeug (Flask) reads nothing of
    a body that has no Content-Length, and a chunked upload arrives empty.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: Any, start_response: Any) -> Any:
        environ["wsgi.input_terminated"] = True
        return self.app(environ, start_response)


class UnixPeers:
    """ASGI middleware pair: lets ``--forwarded-allow-ips unix`` trust Unix-socket peers.

    uvicorn's proxy-header middleware knows peers by address, and a Unix-socket
    peer has none: the outer half names such a peer ``unix`` for it, and the inner
    half (under it) gives the application back the address it had, unless a
    trusted ``X-Forwarded-For`` replaced it.
    """

    MARK = ("unix", 0)

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan" and scope.get("client") is None:
            scope["client"] = self.MARK
        await self.app(scope, receive, send)

    @classmethod
    def restore(cls, app: ASGIApp) -> ASGIApp:
        """The inner half: ``client`` back to None where nobody replaced the mark."""

        async def restored(scope: Scope, receive: Receive, send: Send) -> None:
            if scope.get("client") == cls.MARK:
                scope["client"] = None
            await app(scope, receive, send)

        return restored


def build_app(config: ServeConfig, app: Any, interface: str) -> tuple[Any, str]:
    """The application as uvicorn serves it (adapters and middleware), and its interface.

    The order, from the outside: proxy headers (so the rest sees the client), the body
    limit, then the WSGI adapter or the ASGI 2 wrapper, then the application.
    """
    if interface == "wsgi":
        try:
            from a2wsgi import WSGIMiddleware
        except ImportError:
            raise StartupError(
                "serving a WSGI application needs a2wsgi: pip install 'pycluster[serve]'"
            ) from None
        # a2wsgi runs every call in a pool: under auto, the pool auto would move to.
        threads = config.threads if config.threads is not None else serveconf.AUTO_THREADS
        app = WSGIMiddleware(WSGIInputTerminated(app), workers=threads)
    elif inspect.isclass(app):
        from uvicorn.middleware.asgi2 import ASGI2Middleware

        app = ASGI2Middleware(cast(Any, app))
    if config.limit_request_body is not None:
        app = BodyLimit(app, config.limit_request_body)
    return proxy_layers(config, app), "asgi3"


def proxy_layers(config: ServeConfig, app: Any) -> Any:
    """``app`` behind uvicorn's proxy-header middleware, as ``--proxy-headers`` asks."""
    if config.proxy_headers:
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

        trusted = [ip.strip() for ip in config.forwarded_allow_ips.split(",") if ip.strip()]
        # Only a Unix socket (or an inherited descriptor, which may be one) has
        # peers without an address: TCP-only servers skip the two extra layers.
        unix_peers = "unix" in trusted and any(b["kind"] != "tcp" for b in config.binds)
        if unix_peers:
            app = UnixPeers.restore(app)
        app = ProxyHeadersMiddleware(cast(Any, app), trusted_hosts=trusted)
        if unix_peers:
            app = UnixPeers(app)
    return app


def native_http(config: ServeConfig) -> bool:
    """Whether serve's own HTTP serves the app: :mod:`~pycluster._cli.wsgi` for WSGI,
    :mod:`~pycluster._cli.asgi` for ASGI (else uvicorn's protocols, a2wsgi for WSGI).

    Always, unless ``--http h11`` asks for uvicorn's h11 protocol by name, or
    httptools (which both native servers parse with) is not installed.
    """
    if config.http == "h11":
        return False
    try:
        import httptools  # noqa: F401
    except ImportError:
        return False
    return True


def native_server(config: ServeConfig, app: Any) -> wsgi.WSGIServer:
    """The native WSGI server's shared state for ``app``, as ``config`` asks."""
    from pycluster._cli import wsgi

    proxy = (
        wsgi.proxy_chain(lambda inner: proxy_layers(config, inner))
        if config.proxy_headers
        else None
    )
    return wsgi.WSGIServer(
        app,
        threads=config.threads,
        keep_alive=config.keep_alive,
        limit_request_body=config.limit_request_body,
        limit_concurrency=config.limit_concurrency,
        root_path=config.root_path,
        access=config.access_log or config.access_logfile is not None,
        proxy=proxy,
    )


def native_asgi_server(
    config: Any, state: Any, app_state: dict[str, Any], loop: asyncio.AbstractEventLoop
) -> asgi.ASGIServer:
    """The native ASGI server's shared state, from uvicorn's loaded ``config``.

    The application is the one uvicorn loaded (and runs the lifespan of); a WebSocket
    upgrade goes to the WebSocket protocol uvicorn picked (``--ws``), if any.
    """
    from pycluster._cli import asgi

    ws_class = config.ws_protocol_class

    def websocket() -> asyncio.Protocol:
        protocol: asyncio.Protocol = ws_class(
            config=config, server_state=state, app_state=app_state, _loop=loop
        )
        return protocol

    return asgi.ASGIServer(
        config.loaded_app,
        loop,
        state=state,
        app_state=app_state,
        root_path=config.root_path,
        keep_alive=config.timeout_keep_alive,
        limit_concurrency=config.limit_concurrency,
        access=config.access_log,
        websocket=websocket if ws_class is not None else None,
    )


async def _not_served(scope: Scope, receive: Receive, send: Send) -> None:
    """uvicorn's placeholder app under the native WSGI server (which never calls it)."""
    raise RuntimeError("the native WSGI server serves this worker")


def uvicorn_config(
    config: ServeConfig, app: Any, interface: str, native: bool = False, native_asgi: bool = False
) -> Any:
    """uvicorn's ``Config`` for ``config`` (``app`` as :func:`build_app` made it).

    With ``native`` (WSGI), uvicorn only runs the server's life (TLS context, graceful
    shutdown): its protocol and the app it holds are not used. With ``native_asgi``
    it also runs the app's lifespan; its HTTP protocol is not used, so its
    ``server: uvicorn`` header is not sent.
    """
    import uvicorn

    lifespan = "off" if interface == "wsgi" else config.lifespan
    tls: dict[str, Any] = {}
    if config.tls:
        tls = {
            "ssl_certfile": config.certfile,
            "ssl_keyfile": config.keyfile,
            "ssl_keyfile_password": os.environ.pop(PASSWORD_ENV, None),
            "ssl_ca_certs": config.ca_certs,
            "ssl_cert_reqs": CERT_REQS[config.cert_reqs],
        }
        if config.ciphers is not None:
            tls["ssl_ciphers"] = config.ciphers
    if native:
        served, served_interface = _not_served, "asgi3"
    else:
        served, served_interface = build_app(config, app, interface)
    options: dict[str, Any] = dict(
        loop=config.loop,
        http=config.http,
        interface=served_interface,
        lifespan=lifespan,
        log_config=None,
        access_log=config.access_log or config.access_logfile is not None,
        proxy_headers=False,  # build_app applied them, Unix-socket peers included
        root_path=config.root_path,
        limit_concurrency=config.limit_concurrency,
        backlog=config.backlog,
        timeout_keep_alive=config.keep_alive,
        server_header=not native_asgi,
        **tls,
    )
    return uvicorn.Config(served, **options)


def _listen(config: ServeConfig) -> list[Any]:
    listeners = []
    for bind in config.binds:
        address, kwargs = binds.create_args(bind)
        try:
            listeners.append(net.create_server(address, backlog=config.backlog, **kwargs))
        except OSError as exc:
            for listener in listeners:
                listener.close()
            raise StartupError(serveconf.listen_error(bind, exc)) from None
    return listeners


class StartupError(Exception):
    """This worker cannot start for a reason every worker shares (reported once)."""

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail


def _report(exc: StartupError) -> int:
    """Tell the primary why this worker cannot start (it logs it once); exit status."""
    worker = cluster.worker
    message = {"cmd": FATAL_CMD, "message": str(exc), "detail": exc.detail}
    if worker is None:
        log.error("%s%s", exc, f"\n{exc.detail}" if exc.detail else "")
    elif not worker.send(message):
        # The channel is closed: the primary is stopping (another worker told it
        # the same) and has nobody to tell.
        log.debug("cannot start: %s", exc)
    return EXIT_APP_LOAD


def _load(config: ServeConfig) -> tuple[Any, str]:
    """The application and its interface; ``StartupError`` if it cannot be loaded."""
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        raise StartupError(
            "pycluster serve needs uvicorn: pip install 'pycluster[serve]'"
        ) from None
    try:
        app = load_app(config.app, config.app_dir, config.factory)
    except AppLoadError as exc:
        raise StartupError(describe_load_error(config.app, exc)) from None
    except Exception as exc:
        raise StartupError(describe_load_error(config.app, exc), app_traceback(exc)) from None
    interface = config.interface
    if interface == "auto":
        interface = detect_interface(app)
    return app, interface


def main(spec: dict[str, Any]) -> int:
    """Load the application and serve it until the worker is disconnected."""
    config = ServeConfig.from_json(spec["serve"])
    try:
        app, interface = _load(config)
        log.info("serving %s as %s", config.app, interface.upper())
        calls = native = None
        own_http = native_http(config)
        native_asgi = interface != "wsgi" and own_http
        if interface == "wsgi" and own_http:
            native = native_server(config, app)
        elif interface == "wsgi":
            calls = app = WSGICalls(app)
        if config.access_logfile is not None:
            logs.access_log_to(config.access_logfile)
        try:
            uv_config = uvicorn_config(config, app, interface, native is not None, native_asgi)
            uv_config.load()  # the TLS context too: a bad file is reported, not raised later
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot configure the server: {exc}") from None
        listeners = _listen(config)
    except StartupError as exc:
        return _report(exc)
    server = _server_class()(uv_config, listeners, config.backlog, calls, native, native_asgi)
    try:
        server.run(sockets=[])
    finally:
        server.finished.set()
    worker = cluster.worker
    if worker is not None and worker.exited_after_disconnect:
        worker.wait_disconnected(timeout=5.0)
    return 0
