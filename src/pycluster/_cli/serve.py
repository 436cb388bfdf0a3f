"""``pycluster serve``: a WSGI or ASGI application on uvicorn's HTTP, in a cluster worker.

Why uvicorn for both interfaces: it is a well-kept server whose HTTP comes from
httptools (llhttp) or h11, with keep-alive, pipelining, flow control, a connection
limit and graceful shutdown; it serves sockets it is given; and one server means one
set of options and one behaviour on reload. A WSGI application runs in a thread pool
through a2wsgi, the adapter uvicorn itself recommends.

The listeners come from the primary. A shared listener (policy ``none``) is a real
socket, served by the loop's own ``create_server(sock=...)``. A round-robin listener
is served by :class:`HandoffServer`: the loop watches the hand-off socket, takes
each connection and gives it to ``loop.connect_accepted_socket``, which works on
uvloop as on asyncio, so round-robin keeps uvloop's speed.

On ``worker.disconnect()`` (reload, scale-down, stop, recycling) uvicorn shuts down
gracefully: it stops accepting, lets requests in progress finish, closes idle
keep-alive connections, runs the lifespan shutdown, and the worker exits.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import itertools
import logging
import socket
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any, cast

import pycluster as cluster
from pycluster import _child as child
from pycluster import _ports as net
from pycluster._cli import EXIT_APP_LOAD, binds

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


class AppLoadError(Exception):
    """The application named on the command line cannot be loaded."""


def load_app(target: str, app_dir: str, factory: bool) -> Any:
    """Import ``module:attribute`` (attributes may be dotted); call it if ``factory``."""
    module_name, _, attr = target.partition(":")
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise AppLoadError(f"no module {module_name!r} (looked in {app_dir})") from None
        raise
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(f"module {module_name!r} has no attribute {attr!r}") from None
    if factory:
        obj = obj()
    if not callable(obj):
        raise AppLoadError(f"{target} is not callable: {type(obj).__name__}")
    return obj


def detect_interface(app: Any) -> str:
    """``asgi`` for a coroutine callable (or an ASGI 2 class), else ``wsgi``."""
    if inspect.isclass(app):
        return "asgi"  # ASGI 2: instantiated per connection scope
    call = app if inspect.isroutine(app) else getattr(app, "__call__", None)  # noqa: B004
    if inspect.iscoroutinefunction(call):
        return "asgi"
    try:
        params = inspect.signature(call).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "wsgi"
    return "asgi" if len(params) == 3 else "wsgi"


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


class HandoffServer:
    """Serves a round-robin listener on the running loop (asyncio or uvloop)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        listener: socket.socket,
        factory: Callable[[], asyncio.Protocol],
    ) -> None:
        self._loop = loop
        self._listener = listener
        self._factory = factory
        self._fd = listener.fileno()
        self._serving = True
        listener.setblocking(False)
        loop.add_reader(self._fd, self._take)

    def _take(self) -> None:
        for _ in range(64):
            try:
                conn, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close()  # the primary stopped handing connections to us
                return
            conn.setblocking(False)
            task = self._loop.create_task(self._loop.connect_accepted_socket(self._factory, conn))
            task.add_done_callback(_log_failure)

    def close(self) -> None:
        """Stop taking connections; those already taken go on."""
        if self._serving:
            self._serving = False
            self._loop.remove_reader(self._fd)
            self._listener.close()

    def is_serving(self) -> bool:
        """Whether connections are still taken."""
        return self._serving

    async def wait_closed(self) -> None:
        """Nothing to wait for: uvicorn waits for the connections itself."""


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("a handed-over connection failed to start: %s", task.exception())


def _server_class() -> type:
    import uvicorn

    class ClusterServer(uvicorn.Server):
        """uvicorn's server on the cluster's listeners, stopped by ``worker.disconnect()``."""

        def __init__(
            self,
            config: Any,
            listeners: list[Any],
            backlog: int,
            calls: WSGICalls | None = None,
        ) -> None:
            super().__init__(config)
            self.calls = calls
            self.listeners = listeners
            self.backlog = backlog
            self.finished = threading.Event()
            self._beat: asyncio.Task[None] | None = None
            for listener in listeners:
                net.replace_closer(net.listener_of(listener), self.close_for_disconnect)

        async def startup(self, sockets: list[Any] | None = None) -> None:
            await super().startup(sockets=[])
            if not self.started:
                return
            loop = asyncio.get_running_loop()
            uvloop = type(loop).__module__.startswith("uvloop")

            def create_protocol() -> asyncio.Protocol:
                protocol_class: Any = self.config.http_protocol_class
                protocol: asyncio.Protocol = protocol_class(
                    config=self.config,
                    server_state=self.server_state,
                    app_state=self.lifespan.state,
                )
                return protocol

            def counted() -> asyncio.Protocol:
                # uvloop accepts a shared socket in C, where pycluster cannot count.
                status = runtime.status if runtime is not None else None
                if status is not None:
                    status.count_connection()
                return create_protocol()

            runtime = child.runtime()
            for listener in self.listeners:
                if net.is_round_robin(listener):
                    handoff: Any = HandoffServer(loop, listener, create_protocol)
                    self.servers.append(handoff)
                else:
                    factory = counted if uvloop else create_protocol
                    server = await loop.create_server(factory, sock=listener, backlog=self.backlog)
                    self.servers.append(server)
            self._beat = loop.create_task(self._heartbeat())

        async def _heartbeat(self) -> None:
            runtime = child.runtime()
            status = runtime.status if runtime is not None else None
            while status is not None:
                status.beat(self.calls.oldest() if self.calls is not None else None)
                await asyncio.sleep(HEARTBEAT)

        async def shutdown(self, sockets: list[Any] | None = None) -> None:
            if self._beat is not None:
                self._beat.cancel()
            await super().shutdown(sockets=sockets)

        def close_for_disconnect(self) -> None:
            """Called by ``worker.disconnect()``: shut down gracefully and wait for it."""
            self.should_exit = True
            self.finished.wait()

    return ClusterServer


def _config(spec: dict[str, Any], app: Any, interface: Any) -> Any:
    import uvicorn

    lifespan = spec["lifespan"]
    if interface == "wsgi":
        lifespan = "off"
        try:
            from a2wsgi import WSGIMiddleware
        except ImportError:
            log.warning("a2wsgi is not installed: using uvicorn's own WSGI adapter")
        else:
            app = WSGIMiddleware(app, workers=spec["threads"])
            interface = "asgi3"
    else:
        interface = "auto"  # uvicorn tells ASGI 2 from ASGI 3
    if spec["limit_request_body"] is not None:
        if interface == "wsgi":
            log.warning("--limit-request-body needs a2wsgi for WSGI apps; not applied")
        else:
            app = BodyLimit(app, spec["limit_request_body"])
            interface = "asgi3"
    return uvicorn.Config(
        app,
        loop=spec["loop"],
        http=spec["http"],
        interface=interface,
        lifespan=lifespan,
        log_config=None,
        access_log=spec["access_log"],
        proxy_headers=spec["proxy_headers"],
        forwarded_allow_ips=spec["forwarded_allow_ips"],
        root_path=spec["root_path"],
        limit_concurrency=spec["limit_concurrency"],
        backlog=spec["backlog"],
        timeout_keep_alive=spec["keep_alive"],
    )


def _listen(spec: dict[str, Any]) -> list[Any]:
    listeners = []
    for bind in spec["binds"]:
        address, kwargs = binds.create_args(bind)
        listeners.append(net.create_server(address, backlog=spec["backlog"], **kwargs))
    return listeners


def main(spec: dict[str, Any]) -> int:
    """Load the application and serve it until the worker is disconnected."""
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        log.error("pycluster serve needs uvicorn: pip install 'pycluster[serve]'")
        return EXIT_APP_LOAD
    try:
        app = load_app(spec["app"], spec["app_dir"], spec["factory"])
    except AppLoadError as exc:
        log.error("cannot load the application: %s", exc)
        return EXIT_APP_LOAD
    except Exception:
        log.error("cannot load the application %s:\n%s", spec["app"], traceback.format_exc())
        return EXIT_APP_LOAD
    interface = spec["interface"]
    if interface == "auto":
        interface = detect_interface(app)
    log.info("serving %s as %s", spec["app"], interface.upper())
    calls = None
    if interface == "wsgi":
        calls = app = WSGICalls(app)
    config = _config(spec, app, interface)
    listeners = _listen(spec)
    server = _server_class()(config, listeners, spec["backlog"], calls)
    try:
        server.run(sockets=[])
    finally:
        server.finished.set()
    worker = cluster.worker
    if worker is not None and worker.exited_after_disconnect:
        worker.wait_disconnected(timeout=5.0)
    return 0
