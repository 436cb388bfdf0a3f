"""``pycluster serve``'s own HTTP/1.1 for ASGI applications: httptools parsing, one write.

Why not uvicorn's ``HttpToolsProtocol``, which served ASGI before: on the project's
2-core machine, uvicorn's workers spent 17.5-18.0 µs of CPU per keep-alive request of
a hello-world app and 42.5-42.9 µs per ``Connection: close`` one; ``serve``'s
workers on this protocol 13.2-13.7 and 38.9-39.9 (shared policy, alternating runs).
The difference is bookkeeping around each request rather than HTTP:
two system calls for the addresses of every connection through a socket object,
an ``asyncio.Event`` and a flow-control object per request, a keep-alive timer set
and cancelled per response, two regular-expression scans per header, and headers
and body in two writes (which ``serve`` had to merge with a transport wrapper and a
loop callback). Here the addresses come from the transport, a waiting ``receive()``
waits on a bare future made only when needed, idle connections are swept once a
second instead of timed one by one, and a response's headers leave with its first
body chunk, in one ``transport.write``.

What an application sees is what uvicorn gives it (the same scope keys, the same
``http.disconnect`` rule, 100-continue sent when the body is first asked for, 500
for an app that fails before it starts its response), so frameworks run unchanged;
``tests/thirdparty`` runs them. Parsing is httptools (llhttp), never hand-written.
A WebSocket upgrade is handed to uvicorn's WebSocket protocol on the same transport,
as uvicorn's own HTTP protocol hands it over. Graceful shutdown is uvicorn's
``Server`` as before: the connections and the running requests live in its
``ServerState``, and :meth:`Connection.shutdown` closes a connection once idle.

A response without ``Content-Length`` whose whole body comes in its first body
message gets one computed here (uvicorn would send it chunked); a streamed one is
sent chunked, or to HTTP/1.0 clients delimited by the close.
"""

from __future__ import annotations

import asyncio
import collections
import http
import logging
import re
import time
from collections.abc import Callable, MutableMapping
from typing import Any, cast
from urllib.parse import unquote

import httptools

from pycluster._cli.serveconf import HeadTooLarge, grow_head

log = logging.getLogger("uvicorn.error")
access_log = logging.getLogger("uvicorn.access")

Message = MutableMapping[str, Any]
#: Body bytes buffered for an app that has not asked for them, before reading pauses.
BODY_HIGH_WATER = 65536
#: Most parsed requests queued behind the one running (pipelining) before reading pauses.
MAX_PIPELINED = 16

_STATUS_LINES: dict[int, bytes] = {}
#: A header name must be an RFC 9110 token; a value must hold no control character
#: but tab (a line break in either would let the app's data forge headers).
_BAD_NAME = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_INTERNAL_ERROR = b"Internal Server Error"
_UNAVAILABLE = b"Service Unavailable"


class ClientDisconnected(OSError):
    """``send()`` after the client went: ASGI 2.4's signal that nobody reads any more."""


def status_line(code: int) -> bytes:
    """``HTTP/1.1 CODE REASON\\r\\n``, made once per code; RuntimeError for a code
    that is not an HTTP status (100 to 599)."""
    line = _STATUS_LINES.get(code)
    if line is None:
        if not isinstance(code, int) or not 100 <= code < 600:
            raise RuntimeError(f"invalid HTTP status {code!r}")
        try:
            reason = http.HTTPStatus(code).phrase
        except ValueError:
            reason = ""
        line = _STATUS_LINES[code] = f"HTTP/1.1 {code} {reason}\r\n".encode("latin-1")
    return line


class ASGIServer:
    """What every connection of one worker shares: the app, its settings, uvicorn's state.

    ``state`` is uvicorn's ``ServerState`` (connections and running requests, for its
    graceful shutdown; the default headers its clock refreshes every second),
    ``app_state`` the lifespan's state dict that each request gets a copy of, and
    ``websocket`` makes the protocol a WebSocket upgrade is handed to (None: no
    WebSocket library, and the request is served as plain HTTP).
    """

    def __init__(
        self,
        app: Callable[..., Any],
        loop: asyncio.AbstractEventLoop,
        *,
        state: Any,
        app_state: dict[str, Any],
        root_path: str,
        keep_alive: float,
        limit_concurrency: int | None,
        access: bool,
        websocket: Callable[[], asyncio.Protocol] | None,
    ) -> None:
        self.app = app
        self.loop = loop
        self.state = state
        self.app_state = app_state
        self.root_path = root_path
        self.raw_root = root_path.encode("latin-1")
        self.keep_alive = keep_alive
        self.limit_concurrency = limit_concurrency
        self.access = access and access_log.hasHandlers()
        self.websocket = websocket
        self._headers_of: list[tuple[bytes, bytes]] | None = None
        self._headers = b""
        self._sweeper: asyncio.TimerHandle | None = None
        #: Exchanges whose head waits for a body message: sent together at the end of
        #: the loop's turn, by one callback for all of them.
        self._held: list[Exchange] = []

    def hold(self, exchange: Exchange) -> None:
        """Send ``exchange``'s head on the loop's next turn unless its body comes first."""
        if not self._held:
            self.loop.call_soon(self._flush_held)
        self._held.append(exchange)

    def _flush_held(self) -> None:
        held, self._held = self._held, []
        for exchange in held:
            exchange.flush_head()

    def default_headers(self) -> bytes:
        """uvicorn's default headers (``date``, ``--header``), encoded once per change."""
        current = self.state.default_headers
        if current is not self._headers_of:
            self._headers_of = current
            self._headers = b"".join(b"%s: %s\r\n" % (name, value) for name, value in current)
        return self._headers

    def watch_idle(self) -> None:
        """Start sweeping idle keep-alive connections (once per server)."""
        if self._sweeper is None and self.keep_alive > 0:
            self._sweeper = self.loop.call_later(self._sweep_every(), self._sweep)

    def _sweep_every(self) -> float:
        # A quarter of the timeout, at most a second: an idle connection closes
        # between the timeout and 1.25 times it (or a second after it).
        return max(0.01, min(1.0, self.keep_alive / 4))

    def _sweep(self) -> None:
        deadline = time.monotonic() - self.keep_alive
        for connection in list(self.state.connections):
            if isinstance(connection, Connection):
                connection.close_if_idle(deadline)
        self._sweeper = self.loop.call_later(self._sweep_every(), self._sweep)

    def close(self) -> None:
        """Stop the idle sweep (the server is shutting down)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


class Exchange:
    """One request and its response: the state behind an app's ``receive`` and ``send``."""

    __slots__ = (
        "connection",
        "scope",
        "keep_alive",
        "expect_continue",
        "body",
        "more_body",
        "ended",
        "waiters",
        "started",
        "complete",
        "lost",
        "head",
        "chunked",
        "remaining",
        "bodiless",
        "refuse",
    )

    def __init__(self, connection: Connection, scope: dict[str, Any], keep_alive: bool) -> None:
        self.connection = connection
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_continue = False
        self.body = bytearray()
        self.more_body = True
        #: The last ``http.request`` (``more_body`` false) was given to the app.
        self.ended = False
        #: A future per ``receive()`` that waits (each its own: one cancelled waiter
        #: must not cancel another), made only when one has to wait.
        self.waiters: list[asyncio.Future[None]] | None = None
        self.started = False
        self.complete = False
        self.lost = False
        #: The status line and headers, held until the first body message (or the
        #: loop's next turn) so that a small response leaves in one write.
        self.head: list[bytes] | None = None
        self.chunked = False
        #: Body bytes still owed to a declared Content-Length (None: not declared).
        self.remaining: int | None = None
        self.bodiless = False
        #: 503 decided by --limit-concurrency: the app is not called.
        self.refuse = False

    def wake(self) -> None:
        """Something a waiting ``receive()`` is owed arrived (body, its end, the end)."""
        waiters = self.waiters
        if waiters is not None:
            self.waiters = None
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    # -- the application's side --------------------------------------------------------
    async def receive(self) -> Message:
        """ASGI ``receive``: the body as it arrives, then ``http.disconnect``."""
        connection = self.connection
        if self.expect_continue:
            self.expect_continue = False
            if not self.started:
                connection.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if not self.lost and not self.complete and (self.ended or not self.body and self.more_body):
            # Wait for more of the body; or, once it was all given, for the end of the
            # exchange (the response complete, or the client gone).
            connection.resume_reading()
            waiter = connection.loop.create_future()
            if self.waiters is None:
                self.waiters = [waiter]
            else:
                self.waiters.append(waiter)  # two tasks of the app both wait
            await waiter
        if self.lost or self.complete:
            return {"type": "http.disconnect"}
        body = bytes(self.body)
        self.body.clear()
        self.ended = not self.more_body
        connection.resume_reading()
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    async def send(self, message: Message) -> None:
        """ASGI ``send``: the response's start, then its body in one or more pieces."""
        connection = self.connection
        if connection.write_paused and not self.lost:
            await connection.drained()
        if self.lost:
            # ASGI 2.4 (the version the scope names): an app streaming to a client that
            # went stops here, with no need to watch receive() for http.disconnect.
            raise ClientDisconnected("the client closed the connection")
        kind = message["type"]
        if not self.started:
            if kind != "http.response.start":
                raise RuntimeError(f"expected ASGI message 'http.response.start', got {kind!r}")
            self._start(message)
            return
        if self.complete:
            raise RuntimeError(f"ASGI message {kind!r} sent after the response completed")
        if kind != "http.response.body":
            raise RuntimeError(f"expected ASGI message 'http.response.body', got {kind!r}")
        body = message.get("body", b"")
        more = message.get("more_body", False)
        head = self.head
        out: list[bytes] = []
        if head is not None:
            self.head = None
            if self.remaining is None and not self.chunked and not self.bodiless:
                self._frame(head, None if more else len(body))
            head.append(b"\r\n")
            out = head
        if self.bodiless:
            pass
        elif self.chunked:
            if body:
                out += (b"%x\r\n" % len(body), body, b"\r\n")
            if not more:
                out.append(b"0\r\n\r\n")
        elif body:
            if self.remaining is not None:
                self.remaining -= len(body)
                if self.remaining < 0:
                    raise RuntimeError("response body longer than its Content-Length")
            out.append(body)
        if out:
            connection.write(b"".join(out) if len(out) > 1 else out[0])
        if not more:
            if self.remaining and not self.bodiless:
                raise RuntimeError("response body shorter than its Content-Length")
            self.complete = True
            self.wake()
            connection.exchange_done(self)

    def _start(self, message: Message) -> None:
        """``http.response.start``: the head, checked, held for the first body message."""
        code = message["status"]
        scope = self.scope
        head = [status_line(code)]
        remaining: int | None = None
        chunked = False
        for name, value in message.get("headers", ()):
            if _BAD_NAME.search(name) or not name:
                raise RuntimeError(f"invalid HTTP header name {name!r}")
            if _BAD_VALUE.search(value):
                raise RuntimeError(f"invalid HTTP header value {value!r}")
            lower = name.lower()
            if lower == b"content-length":
                remaining = int(value)
            elif lower == b"transfer-encoding":
                chunked = chunked or value.lower() == b"chunked"
            elif lower == b"connection":
                if b"close" in [token.strip() for token in value.lower().split(b",")]:
                    self.keep_alive = False
                    continue  # written once, below
            head += (name, b": ", value, b"\r\n")
        head.append(self.connection.server.default_headers())
        # Set only now: a head refused above leaves the exchange as it was (for a 500).
        self.chunked = chunked
        self.remaining = None if chunked else remaining
        self.bodiless = scope["method"] == "HEAD" or code < 200 or code in (204, 304)
        self.started = True
        self.expect_continue = False
        if not self.keep_alive or self.connection.closing:
            self.keep_alive = False
            head.append(b"connection: close\r\n")
        self.head = head
        if self.connection.server.access:
            query = scope["query_string"]
            client = scope.get("client")  # as the proxy-header middleware left it
            access_log.info(
                '%s - "%s %s HTTP/%s" %d',
                f"{client[0]}:{client[1]}" if client else "",
                scope["method"],
                scope["raw_path"].decode("latin-1")
                + ("?" + query.decode("latin-1") if query else ""),
                scope["http_version"],
                code,
            )
        # Sent with the first body message if it comes in this step of the app; else
        # on the loop's next turn (an app that waits before its body, say for the
        # request body the client sends only once it has the headers).
        self.connection.server.hold(self)

    def _frame(self, head: list[bytes], length: int | None) -> None:
        """Framing for a response that declared none: its length if known, else chunks."""
        if length is not None:
            head.append(b"content-length: %d\r\n" % length)
            self.remaining = length
        elif self.scope["http_version"] == "1.1":
            self.chunked = True
            head.append(b"transfer-encoding: chunked\r\n")
        elif self.keep_alive:
            # HTTP/1.0 has no chunks: the end of the body is the close.
            self.keep_alive = False
            head.append(b"connection: close\r\n")

    def flush_head(self) -> None:
        """Send the held head now: no body message came in the step that started it."""
        head = self.head
        if head is None or self.lost:
            return
        self.head = None
        if self.remaining is None and not self.chunked and not self.bodiless:
            self._frame(head, None)
        head.append(b"\r\n")
        self.connection.write(b"".join(head))

    async def run(self, app: Callable[..., Any]) -> None:
        """Run the application for this exchange; answer its failures as uvicorn does."""
        try:
            if self.refuse:
                await self._simple(503, _UNAVAILABLE)
                return
            result = await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            if self.lost:
                # The client went first: what the app raised follows from that (a send
                # that raised ClientDisconnected, or the framework's own wrapper of it).
                log.debug("ASGI application ended after its client went: %r", exc)
                return
            log.error("Exception in ASGI application\n", exc_info=exc)
            if self._unsent():
                await self._simple(500, _INTERNAL_ERROR)
            else:
                self.connection.abort_exchange(self)
        else:
            if result is not None:
                log.error("ASGI callable should return None, but returned %r.", result)
                self.connection.abort_exchange(self)
            elif not self.started and not self.lost:
                log.error("ASGI callable returned without starting response.")
                await self._simple(500, _INTERNAL_ERROR)
            elif not self.complete and not self.lost:
                log.error("ASGI callable returned without completing response.")
                if self._unsent():
                    await self._simple(500, _INTERNAL_ERROR)
                else:
                    self.connection.abort_exchange(self)

    def _unsent(self) -> bool:
        """Whether nothing of the response left yet: the app's answer can become a 500.

        A head is held until the first body message (or the loop's next turn), so an
        app that fails right after ``http.response.start`` still gets a clean 500
        rather than a cut connection.
        """
        if self.started and self.head is None:
            return False
        self.started = self.chunked = False
        self.head = self.remaining = None
        return True

    async def _simple(self, code: int, body: bytes) -> None:
        """A response of the server's own (500, 503), then the connection closes."""
        self.keep_alive = False
        await self.send(
            {
                "type": "http.response.start",
                "status": code,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", b"%d" % len(body)),
                ],
            }
        )
        await self.send({"type": "http.response.body", "body": body})


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: parses requests and runs each exchange in turn."""

    def __init__(self, server: ASGIServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser: Any = httptools.HttpRequestParser(self)
        try:
            # A request after one that asked to close is ignored, not an error (the
            # first still gets its answer).
            self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        except AttributeError:
            pass  # httptools older than 0.6.3
        self.exchange: Exchange | None = None  # the one running
        self.parsing: Exchange | None = None  # the one being parsed
        self.pipeline: collections.deque[Exchange] = collections.deque()
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_size = 0
        self.expect_continue = False
        self.closing = False
        self.read_paused = False
        self.write_paused = False
        #: A future per ``send()`` waiting for the client to catch up.
        self.drains: list[asyncio.Future[None]] = []
        self.idle_since = 0.0
        self.server_address: tuple[str, int | None] | None = None
        self.client: tuple[str, int] | None = None
        self.scheme = "http"

    # -- connection events -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Remember the addresses: every request's scope starts from them."""
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        self.server.state.connections.add(self)
        sockname = transport.get_extra_info("sockname")
        if isinstance(sockname, tuple) and len(sockname) >= 2:
            self.server_address = (str(sockname[0]), int(sockname[1]))
        elif isinstance(sockname, str) and sockname:
            self.server_address = (sockname, None)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.client = (str(peer[0]), int(peer[1]))
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
        self.idle_since = time.monotonic()
        self.server.watch_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection; an app still running sees ``http.disconnect``."""
        self.server.state.connections.discard(self)
        for exchange in (self.exchange, *self.pipeline):
            if exchange is not None and not exchange.complete:
                exchange.lost = True
                exchange.wake()
        self.pipeline.clear()
        self.write_paused = False
        self._release_drain()
        self.parser = None  # the parser refers to this protocol: no cycle for the GC

    def eof_received(self) -> bool | None:
        """The client half-closed: answer what it sent, then close."""
        self.closing = True
        if self.exchange is None and self.transport is not None:
            self.transport.close()
            return None
        # Keep the write half open for the answers still due (a TLS transport cannot).
        return None if self.scheme == "https" else True

    def shutdown(self) -> None:
        """Graceful shutdown (uvicorn's ``Server.shutdown``): close once idle."""
        self.closing = True
        exchange = self.exchange
        if exchange is None:
            if self.transport is not None:
                self.transport.close()
            return
        if exchange.head is not None and exchange.keep_alive:
            exchange.head.append(b"connection: close\r\n")  # the head is not sent yet
        exchange.keep_alive = False

    def close_if_idle(self, deadline: float) -> None:
        """Close the connection if no request runs and nothing came since ``deadline``."""
        if self.exchange is None and self.idle_since < deadline and self.transport is not None:
            self.transport.close()

    def pause_writing(self) -> None:
        """The client reads slower than the app writes: ``send()`` waits."""
        self.write_paused = True

    def resume_writing(self) -> None:
        """The client caught up: a waiting ``send()`` goes on."""
        self.write_paused = False
        self._release_drain()

    def _release_drain(self) -> None:
        drains, self.drains = self.drains, []
        for drain in drains:
            if not drain.done():
                drain.set_result(None)

    async def drained(self) -> None:
        """Wait until the transport takes writes again (or the connection is gone)."""
        drain = self.loop.create_future()
        self.drains.append(drain)
        await drain

    def write(self, data: bytes) -> None:
        """Send bytes on the connection, unless it is closing."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def resume_reading(self) -> None:
        """Read again after a pause for a full body buffer or pipeline."""
        parsing = self.parsing
        if (
            self.read_paused
            and self.transport is not None
            and len(self.pipeline) <= MAX_PIPELINED
            and (parsing is None or parsing.complete or len(parsing.body) <= BODY_HIGH_WATER)
        ):
            self.read_paused = False
            self.transport.resume_reading()

    def _pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        """Parse what arrived; the parser's callbacks start the exchanges."""
        self.idle_since = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrade(data, upgrade)
        except httptools.HttpParserError as exc:
            # An exception of a callback below comes back wrapped, as the context.
            too_large = isinstance(exc.__context__, HeadTooLarge)
            self._bad_request(str(exc.__context__ or exc), 431 if too_large else 400)

    # -- parser callbacks (httptools) --------------------------------------------------
    def on_message_begin(self) -> None:
        """A new request starts."""
        self.url = b""
        self.headers = []
        self.head_size = 0
        self.expect_continue = False

    def on_url(self, url: bytes) -> None:
        """A piece of the request target."""
        self.url += url
        self.head_size = grow_head(self.head_size, len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        """One header line (llhttp leaves trailing whitespace on the value)."""
        self.head_size = grow_head(self.head_size, len(name) + len(value) + 4)
        name = name.lower()
        value = value.rstrip(b" \t")
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        """The head is complete: make its exchange, and run it unless one runs."""
        parser = self.parser
        if parser.should_upgrade() and self._websocket_upgrade():
            return  # handed over once the parser stops (see _upgrade)
        server = self.server
        url = self.url
        if url[:1] == b"/":
            raw_path, _, query = url.partition(b"?")
            raw_path = raw_path.partition(b"#")[0]
        else:
            parsed = httptools.parse_url(url)  # absolute form, or "*"
            raw_path, query = parsed.path or b"/", parsed.query or b""
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path)
        version = parser.get_http_version()
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": version,
            "server": self.server_address,
            "client": self.client,
            "scheme": self.scheme,
            "method": parser.get_method().decode("ascii"),
            "root_path": server.root_path,
            "path": server.root_path + path,
            "raw_path": server.raw_root + raw_path,
            "query_string": query,
            "headers": self.headers,
            "state": server.app_state.copy(),
        }
        exchange = Exchange(self, scope, parser.should_keep_alive() and not self.closing)
        exchange.expect_continue = self.expect_continue and version == "1.1"
        limit = server.limit_concurrency
        if limit is not None and (
            len(server.state.connections) > limit or len(server.state.tasks) >= limit
        ):
            log.warning("Exceeded concurrency limit.")
            exchange.refuse = True
        self.parsing = exchange
        if self.exchange is None:
            self._run(exchange)
        else:
            self.pipeline.append(exchange)
            if len(self.pipeline) > MAX_PIPELINED:
                self._pause_reading()

    def on_body(self, body: bytes) -> None:
        """A piece of the request body, kept for the app's next ``receive()``."""
        exchange = self.parsing
        if exchange is None or exchange.complete or exchange.lost:
            return  # answered without it: the rest is read and dropped
        exchange.body += body
        if len(exchange.body) > BODY_HIGH_WATER:
            self._pause_reading()
        exchange.wake()

    def on_message_complete(self) -> None:
        """The request is whole."""
        exchange, self.parsing = self.parsing, None
        if exchange is not None:
            exchange.more_body = False
            exchange.wake()

    # -- exchanges ---------------------------------------------------------------------
    def _run(self, exchange: Exchange) -> None:
        self.exchange = exchange
        state = self.server.state
        task = self.loop.create_task(exchange.run(self.server.app))
        state.tasks.add(task)
        task.add_done_callback(state.tasks.discard)

    def exchange_done(self, exchange: Exchange) -> None:
        """A response is complete: close, or start the next request, or wait for one."""
        self.server.state.total_requests += 1
        if exchange is not self.exchange:
            return
        self.exchange = None
        exchange.body.clear()  # what the app did not read
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not exchange.keep_alive:
            transport.close()
            return
        if self.pipeline:
            self._run(self.pipeline.popleft())
            self.resume_reading()
        elif self.closing:
            transport.close()
        else:
            self.idle_since = time.monotonic()
            self.resume_reading()

    def abort_exchange(self, exchange: Exchange) -> None:
        """The app broke its response (failed midway, or left it unfinished): cut it."""
        exchange.complete = True
        exchange.wake()
        if self.transport is not None:
            self.transport.close()
        if exchange is self.exchange:
            self.exchange = None

    # -- protocol errors and upgrades --------------------------------------------------
    def _bad_request(self, reason: str, code: int = 400) -> None:
        log.warning("Invalid HTTP request received.")
        transport = self.transport
        if transport is None:
            return
        if self.exchange is None:
            body = (
                b"Invalid HTTP request received."
                if code == 400
                else b"Request header fields too large."
            )
            transport.write(
                status_line(code)
                + self.server.default_headers()
                + b"content-type: text/plain; charset=utf-8\r\n"
                + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
                + body
            )
        log.debug("closing a connection: %s", reason)
        transport.close()

    def _websocket_upgrade(self) -> bool:
        """Whether the request asks for a WebSocket this server can hand over."""
        if self.server.websocket is None:
            return False
        upgrade = None
        tokens: list[bytes] = []
        for name, value in self.headers:
            if name == b"connection":
                tokens = [token.strip().lower() for token in value.split(b",")]
            elif name == b"upgrade":
                upgrade = value.lower()
        return upgrade == b"websocket" and b"upgrade" in tokens

    def _upgrade(self, data: bytes, upgrade: httptools.HttpParserUpgrade) -> None:
        """The parser stopped at an upgrade: a WebSocket goes to uvicorn's protocol."""
        if not self._websocket_upgrade():
            # Another protocol (h2c, say), or no WebSocket library: the request was
            # served as plain HTTP, as uvicorn serves it.
            log.warning("Unsupported upgrade request.")
            return
        transport = self.transport
        websocket = self.server.websocket
        if transport is None or websocket is None:
            return
        self.server.state.connections.discard(self)
        request = [self.parser.get_method(), b" ", self.url, b" HTTP/1.1\r\n"]
        for name, value in self.headers:
            request += (name, b": ", value, b"\r\n")
        request.append(b"\r\n")
        offset = upgrade.args[0] if upgrade.args and isinstance(upgrade.args[0], int) else None
        if offset is not None and 0 <= offset < len(data):
            request.append(data[offset:])  # the client's first frames, sent right after
        protocol = websocket()
        protocol.connection_made(transport)
        transport.set_protocol(protocol)
        self.parser = None
        protocol.data_received(b"".join(request))
