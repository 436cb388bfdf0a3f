"""``pycluster serve``'s own HTTP/1.1 for WSGI applications: httptools parsing, no ASGI hop.

Why not uvicorn with a2wsgi, as before: every request then went through an ASGI
scope, two asyncio tasks, a thread-pool hand-off and a queue per body chunk, and a
hello-world WSGI app ran at 0.4-0.8x gunicorn's sync workers. This server parses
with httptools (llhttp, the parser uvicorn and Node use; never hand-written here),
builds the environ directly and writes the response in one ``transport.write``.

Where the application runs, chosen by ``--threads`` as gunicorn chooses its worker:

- ``--threads 1``: inline, on the worker's event loop, one request at a time, as a
  gunicorn *sync* worker runs it. Nothing is handed between threads, so this is the
  fastest for handlers that do not wait; while one runs the worker takes no other
  request, exactly as a sync worker.
- ``--threads N`` (N > 1): in a pool of N threads, as gunicorn's *gthread* worker, so
  up to N requests wait on a database at once. Each request costs one hand-off to a
  pool thread and one back to the loop: 30 µs of CPU per request on this project's
  2-core benchmark machine, a third of a hello-world request's cost.
- ``--threads auto`` (the default): inline until the application waits, then a pool
  of 10 threads for good. A watchdog thread looks every few milliseconds: if it
  finds the GIL free while an inline call has run for over a millisecond, the call
  let go of it (a socket, a sleep, a lock, a C extension working without it), and
  the worker moves to the pool with its next request. A handler that computes keeps
  the GIL (the watchdog then waits the interpreter's switch interval for it, which
  tells the two apart), as does a call the kernel preempted; neither moves it. At
  worst a waiting app serves its first slow requests one at a time, and then runs
  as with ``--threads 10``. A computing handler that runs over a millisecond and
  writes (a log line to a file, say) may move too; at that length the pool's
  hand-offs cost under 3 %.

Inline calls run with no running event loop, as in a pool thread or a sync worker,
so a handler may call ``asyncio.run`` or asgiref's ``async_to_sync``.

In both, the event loop (uvloop when installed) owns the sockets: it accepts under
either policy through :func:`pycluster.aio.serve_socket`, does TLS, keeps idle
keep-alive connections without holding a thread, and reads each request body whole
before the application runs (as nginx buffers bodies), so a slow client never holds
a thread or the inline worker, and ``wsgi.input`` never blocks. Bodies over 1 MiB
go to a temporary file. ``Expect: 100-continue`` is answered when the headers
arrive (unless the declared length is over ``--limit-request-body``).

The connections live in uvicorn's ``ServerState`` so that ``ClusterServer`` (in
:mod:`pycluster._cli.serve`) shuts this server down gracefully exactly as it shuts
down uvicorn's own protocols: on ``worker.disconnect()`` each idle connection
closes, each busy one closes after its response.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import queue
import sys
import tempfile
import threading
import time
from asyncio.events import _set_running_loop
from collections.abc import Callable, Iterable, Iterator
from email.utils import formatdate
from io import BytesIO
from typing import IO, Any, TypeVar, cast
from urllib.parse import unquote_to_bytes

import httptools

from pycluster._cli.serveconf import AUTO_THREADS, HeadTooLarge, grow_head

log = logging.getLogger("pycluster._cli")
access_log = logging.getLogger("uvicorn.access")

#: A request body larger than this is kept in a temporary file, not in memory.
SPOOL_SIZE = 1 << 20
#: Parsed requests waiting behind the one running (pipelining) before reading pauses.
MAX_PIPELINED = 16
#: How long an inline call must have run when the watchdog finds the GIL free.
WAIT_SPAN = 0.001
#: The watchdog's look while requests come, and its longest sleep while none do.
TICK, IDLE_TICK = 0.01, 0.25
#: Longest the watchdog may wait for the GIL and still call it free (a call that
#: holds it makes the watchdog wait the switch interval, 5 ms by default).
FREE_GIL_WAIT = 0.002

_T = TypeVar("_T")
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
ExcInfo = Any


class WSGIServer:
    """What every connection of one worker shares: the app, its settings, the pool.

    ``proxy`` is an ASGI callable that rewrites a scope's ``client`` and ``scheme``
    from trusted ``X-Forwarded-*`` headers (uvicorn's middleware, as ``serve`` builds
    it for ASGI apps), or None without ``--proxy-headers``.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        threads: int | None,
        keep_alive: float,
        limit_request_body: int | None,
        limit_concurrency: int | None,
        root_path: str,
        access: bool,
        proxy: Callable[..., Any] | None,
    ) -> None:
        self.app = app
        self.keep_alive = keep_alive
        self.limit_request_body = limit_request_body
        self.limit_concurrency = limit_concurrency
        self.root_path = root_path
        self.access = access and access_log.hasHandlers()
        self.proxy = proxy
        #: ``threads`` None is ``--threads auto``: inline until the app waits (see _watch).
        self.pool: Pool | None = Pool(threads) if threads is not None and threads > 1 else None
        #: Whether the app may be called from several threads at once (PEP 3333).
        self.multithread = threads is None or threads > 1
        #: When the inline call in progress began (``perf_counter``), or 0.0.
        self.inline_since = 0.0
        self.calls = 0  # inline calls so far: the watchdog slows down while none come
        self.closed = False
        if threads is None:
            threading.Thread(target=self._watch, name="pycluster-wsgi-watch", daemon=True).start()
        self.active = 0  # requests running or queued to the pool (for --limit-concurrency)
        # The hang clock for --timeout: since when each pool call runs without progress.
        self.running: dict[int, float] = {}
        self._ids = itertools.count()
        self._date_second = -1
        self._date = b""

    def date_header(self) -> bytes:
        """``Date: ...\\r\\n``, formatted once a second."""
        now = time.time()
        if int(now) != self._date_second:
            self._date_second = int(now)
            self._date = b"date: %s\r\n" % formatdate(now, usegmt=True).encode()
        return self._date

    def oldest(self) -> float | None:
        """Since when the longest pool call without progress runs (monotonic), or None.

        Inline calls need no clock: they block the loop, whose heartbeat then stops.
        """
        return min(list(self.running.values()), default=None)

    def clock(self) -> int:
        """Start the hang clock of a pool call; its key."""
        key = next(self._ids)
        self.running[key] = time.monotonic()
        return key

    def close(self, connections: Iterable[Any]) -> None:
        """Let the pool's threads go once the calls in progress return.

        A call still streaming to a client that stopped reading would wait for it
        forever, and the interpreter joins pool threads at exit: the connections
        left at the end of the graceful shutdown are given up, so such a call stops.
        """
        self.closed = True
        for connection in list(connections):
            if isinstance(connection, Connection):
                connection.give_up()
        if self.pool is not None:
            self.pool.close()

    def _watch(self) -> None:
        """``--threads auto``: move to a pool the first time an inline call waits.

        Each look sleeps, then needs the GIL to run. Got at once while an inline call
        has run for over ``WAIT_SPAN``, the GIL was free: the call let go of it, so
        other requests could have run meanwhile. Held by a computing call (or one
        the kernel preempted), the GIL comes only after the switch interval.
        """
        free = min(FREE_GIL_WAIT, sys.getswitchinterval() / 2)
        tick, calls = TICK, -1
        while not self.closed:
            due = time.perf_counter() + tick
            time.sleep(tick)
            now = time.perf_counter()
            since = self.inline_since
            if since and now - since >= WAIT_SPAN and now - due < free:
                self.pool = Pool(AUTO_THREADS)
                log.info(
                    "the WSGI application waited %.0f ms on the event loop: its requests run "
                    "in a pool of %d threads from now on (--threads sets this)",
                    (now - since) * 1000,
                    AUTO_THREADS,
                )
                return
            active = since or self.calls != calls
            tick = TICK if active else min(tick * 2, IDLE_TICK)
            calls = self.calls


class Pool:
    """N threads taking calls from one queue: the WSGI calls of ``--threads N``.

    Lighter than ``concurrent.futures.ThreadPoolExecutor`` where it counts, per
    request: no future, no lock or idle-thread bookkeeping on submit, only a put on
    a C queue; the calls report their own results to the loop. The threads are
    daemons, so a call that never returns cannot keep the worker from exiting
    (the supervisor's ``--timeout`` and shutdown timeout deal with such calls).
    """

    def __init__(self, size: int) -> None:
        self.calls: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self.threads = [
            threading.Thread(target=self._take, name=f"pycluster-wsgi-{i}", daemon=True)
            for i in range(size)
        ]
        for thread in self.threads:
            thread.start()

    def run(self, function: Callable[..., None], *args: Any) -> None:
        """Queue ``function(*args)`` for the next free thread."""
        self.calls.put((function, args))

    def close(self) -> None:
        """Each thread ends after the calls queued before this."""
        for _ in self.threads:
            self.calls.put(None)

    def _take(self) -> None:
        while (call := self.calls.get()) is not None:
            function, args = call
            try:
                function(*args)
            except BaseException:  # the calls report their own errors; never lose a thread
                log.exception("error in a WSGI pool thread")


class FileWrapper:
    """``wsgi.file_wrapper``: a file sent in blocks as the client takes them; closed after."""

    def __init__(self, file: IO[bytes], block_size: int = 65536) -> None:
        self.file = file
        self.block_size = block_size

    def __iter__(self) -> Iterator[bytes]:
        while block := self.file.read(self.block_size):
            yield block

    def close(self) -> None:
        """Close the file (PEP 3333: the server calls this when the response is done)."""
        close = getattr(self.file, "close", None)
        if close is not None:
            close()


class _Request:
    """One parsed request, waiting for its turn on the connection."""

    __slots__ = ("method", "url", "version", "headers", "body", "keep_alive", "refused")

    def __init__(self) -> None:
        self.method = ""
        self.url = b""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: IO[bytes] | None = None
        self.keep_alive = True
        self.refused = 0  # a status already decided (413): the app is not called


class _Response:
    """``start_response`` and the response state of one call (PEP 3333)."""

    __slots__ = ("status", "headers", "sent", "chunked", "length", "close", "head", "code")

    def __init__(self, head: bool) -> None:
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.sent = False
        self.chunked = False
        self.length: int | None = None
        self.close = False
        self.head = head
        self.code = 0

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo = None
    ) -> Callable[[bytes], None]:
        """PEP 3333's ``start_response``; the ``write`` it returns is set by the caller."""
        if exc_info is not None:
            try:
                if self.sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise RuntimeError("start_response called a second time without exc_info")
        if not isinstance(status, str) or len(status) < 4 or not status[:3].isdigit():
            raise ValueError(f"WSGI status must be like '200 OK', not {status!r}")
        self.status = status
        self.headers = headers
        self.code = int(status[:3])
        return _no_write  # replaced per call: see Connection._call


def _no_write(data: bytes) -> None:
    raise RuntimeError("write() is not available here")


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: parses requests, runs the app, writes the responses."""

    def __init__(self, server: WSGIServer, state: Any) -> None:
        self.server = server
        self.state = state  # uvicorn's ServerState: connections, for graceful shutdown
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser: Any = httptools.HttpRequestParser(self)
        self.pending: collections.deque[_Request] = collections.deque()
        self.request = _Request()
        self.body_size = 0
        self.head_size = 0  # bytes of the target and headers (see MAX_HEAD_SIZE)
        self.busy = False
        self.closing = False
        self.lost = False
        self.read_paused = False
        self.write_paused = False
        # Made when the client first falls behind: a pool thread streaming a response
        # waits on it (most connections never need one; each costs a lock and a condition).
        self.writable: threading.Event | None = None
        self.idle: asyncio.TimerHandle | None = None
        self.pump: Iterator[bytes] | None = None
        self.pumping: tuple[_Request, _Response, Iterable[bytes]] | None = None
        self.tls = False
        self.base: dict[str, Any] = {}
        self.client = ""

    # -- connection events -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Remember the addresses; every request's environ starts from them."""
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        self.state.connections.add(self)
        peer = transport.get_extra_info("peername")
        sockname = transport.get_extra_info("sockname")
        tls = self.tls = transport.get_extra_info("sslcontext") is not None
        base: dict[str, Any] = {
            "SCRIPT_NAME": self.server.root_path,
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "443" if tls else "80",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "https" if tls else "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": self.server.multithread,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            "wsgi.file_wrapper": FileWrapper,
        }
        if isinstance(sockname, tuple):
            base["SERVER_NAME"], base["SERVER_PORT"] = str(sockname[0]), str(sockname[1])
        if isinstance(peer, tuple) and peer:
            base["REMOTE_ADDR"], base["REMOTE_PORT"] = str(peer[0]), str(peer[1])
            self.client = f"{peer[0]}:{peer[1]}"
        self.base = base
        self._wait_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection; a call in progress finishes and its output is dropped."""
        self.give_up()
        self.state.connections.discard(self)
        self.parser = None  # the parser refers to this protocol: no cycle for the GC
        if self.idle is not None:
            self.idle.cancel()
        if self.pump is not None:
            _close_iterable(self.pump)
            self.pump = None

    def give_up(self) -> None:
        """The connection is gone (or abandoned at shutdown): a streaming call stops."""
        self.lost = True
        self.write_paused = False
        if self.writable is not None:
            self.writable.set()

    def pause_writing(self) -> None:
        """The client reads slower than the app writes: stop producing."""
        if self.writable is None:
            self.writable = threading.Event()
        self.writable.clear()
        self.write_paused = True

    def resume_writing(self) -> None:
        """The client caught up: go on producing."""
        self.write_paused = False
        if self.writable is not None:
            self.writable.set()
        if self.pump is not None:
            self.loop.call_soon(self._pump_inline)

    def data_received(self, data: bytes) -> None:
        """Parse; start the next request if none runs."""
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No upgrade (WebSocket, h2c) for WSGI: the request is served as plain HTTP.
            pass
        except httptools.HttpParserError as exc:
            # An exception of a callback below comes back wrapped, as the context.
            if isinstance(exc.__context__, HeadTooLarge):
                self._error(431, f"request header fields too large: {exc.__context__}")
            else:
                self._error(400, f"bad request: {exc}")
            return
        if not self.busy and self.pending:
            self._next()

    def eof_received(self) -> bool | None:
        """The client half-closed: answer what it sent, then close."""
        self.closing = True
        if not self.busy and not self.pending and self.transport is not None:
            self.transport.close()
        # Keep the write half open for the answers still due (a TLS transport cannot).
        return None if self.tls else True

    def shutdown(self) -> None:
        """Graceful shutdown (uvicorn's ``Server.shutdown``): close when idle."""
        self.closing = True
        if not self.busy and not self.pending and self.transport is not None:
            self.transport.close()

    # -- parser callbacks (httptools) --------------------------------------------------
    def on_message_begin(self) -> None:
        """A new request starts."""
        self.request = _Request()
        self.body_size = 0
        self.head_size = 0

    def on_url(self, url: bytes) -> None:
        """A piece of the request target."""
        self.request.url += url
        self.head_size = grow_head(self.head_size, len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        """One header line."""
        self.head_size = grow_head(self.head_size, len(name) + len(value) + 4)
        self.request.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        """The head is complete: refuse a declared body over the limit, or send 100."""
        request = self.request
        parser = self.parser
        request.method = parser.get_method().decode("ascii")
        request.version = parser.get_http_version()
        request.keep_alive = parser.should_keep_alive()
        limit = self.server.limit_request_body
        expect = False
        for name, value in request.headers:
            if name == b"content-length" and limit is not None:
                if value.strip().isdigit() and int(value) > limit:
                    request.refused = 413
            elif name == b"expect" and value.lower() == b"100-continue":
                expect = True
        if expect and not request.refused and request.version == "1.1":
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if request.refused:
            # Answer now, without reading a body that will not be used.
            request.keep_alive = False
            self.pending.append(request)
            if self.transport is not None and not self.read_paused:
                self.transport.pause_reading()
                self.read_paused = True

    def on_body(self, body: bytes) -> None:
        """A piece of the body: kept in memory, or in a file past ``SPOOL_SIZE``."""
        request = self.request
        if request.refused:
            return
        self.body_size += len(body)
        limit = self.server.limit_request_body
        if limit is not None and self.body_size > limit:
            request.refused = 413
            request.keep_alive = False
            request.body = None
            self.pending.append(request)  # answered now; the rest of the body is ignored
            return
        if request.body is None:
            request.body = BytesIO()
        elif self.body_size > SPOOL_SIZE and isinstance(request.body, BytesIO):
            spooled = tempfile.TemporaryFile()
            spooled.write(request.body.getbuffer())
            request.body = spooled
        request.body.write(body)

    def on_message_complete(self) -> None:
        """The request is whole: queue it behind the one running."""
        request = self.request
        if request.refused:
            return  # queued when it was refused
        if request.body is not None:
            request.body.seek(0)
        self.pending.append(request)
        if len(self.pending) > MAX_PIPELINED and not self.read_paused:
            assert self.transport is not None
            self.transport.pause_reading()
            self.read_paused = True

    # -- running requests --------------------------------------------------------------
    def _next(self) -> None:
        """Run the next parsed request (one at a time per connection, in order)."""
        request = self.pending.popleft()
        server = self.server
        if request.refused:
            self._simple(request, request.refused, b"request body too large\n")
            return
        if server.limit_concurrency is not None and server.active >= server.limit_concurrency:
            self._simple(request, 503, b"service unavailable\n")
            return
        environ = self._environ(request)
        response = _Response(request.method == "HEAD")
        self.busy = True
        server.active += 1
        if server.pool is None:
            self._call_inline(environ, request, response)
        else:
            server.pool.run(self._call_in_thread, environ, request, response)

    def _environ(self, request: _Request) -> dict[str, Any]:
        environ = self.base.copy()
        url = request.url
        if url[:1] != b"/" and url != b"*":
            parsed = httptools.parse_url(url)  # absolute form: http://host/path?query
            path, query = parsed.path or b"/", parsed.query or b""
        else:
            path, _, query = url.partition(b"?")
            path, _, _ = path.partition(b"#")
        path_info = unquote_to_bytes(path).decode("latin-1")
        root = self.server.root_path
        if root and (path_info == root or path_info.startswith(root + "/")):
            path_info = path_info[len(root) :]
        environ["REQUEST_METHOD"] = request.method
        environ["PATH_INFO"] = path_info
        environ["QUERY_STRING"] = query.decode("latin-1")
        environ["SERVER_PROTOCOL"] = "HTTP/" + request.version
        environ["wsgi.input"] = request.body if request.body is not None else BytesIO()
        environ["RAW_URI"] = url.decode("latin-1")
        forwarded = False
        for name, value in request.headers:
            if name == b"content-type":
                environ["CONTENT_TYPE"] = value.decode("latin-1")
                continue
            if name == b"content-length":
                environ["CONTENT_LENGTH"] = value.decode("latin-1")
                continue
            if name.startswith(b"x-forwarded-"):
                forwarded = True
            key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
            text = value.decode("latin-1")
            if key in environ:
                joiner = "; " if key == "HTTP_COOKIE" else ","
                environ[key] = environ[key] + joiner + text
            else:
                environ[key] = text
        if forwarded and self.server.proxy is not None:
            self._apply_proxy(environ, request)
        return environ

    def _apply_proxy(self, environ: dict[str, Any], request: _Request) -> None:
        """Trusted ``X-Forwarded-*``: the client and scheme the proxy saw (uvicorn's rules)."""
        client = None
        if "REMOTE_ADDR" in environ:
            client = (environ["REMOTE_ADDR"], int(environ["REMOTE_PORT"]))
        scope: dict[str, Any] = {
            "type": "http",
            "client": client,
            "scheme": environ["wsgi.url_scheme"],
            "headers": request.headers,
        }
        assert self.server.proxy is not None
        _run_sync(self.server.proxy(scope, None, None))
        environ["wsgi.url_scheme"] = scope["scheme"]
        if scope["client"] is not None and scope["client"] != client:
            environ["REMOTE_ADDR"] = str(scope["client"][0])
            environ["REMOTE_PORT"] = str(scope["client"][1])

    def _inline(self, call: Callable[..., _T], *args: Any) -> _T:
        """``call(*args)``, the application's code, run on the loop's thread.

        As in a pool thread or a sync worker, it sees no running loop (``asyncio.run()``
        works in it), and ``--threads auto``'s watchdog sees since when it runs.
        """
        server = self.server
        server.inline_since = time.perf_counter()
        _set_running_loop(None)
        try:
            return call(*args)
        finally:
            _set_running_loop(self.loop)
            server.inline_since = 0.0

    def _call_inline(self, environ: dict[str, Any], request: _Request, response: _Response) -> None:
        """Run the app on the loop; stream a long response as the client takes it."""
        chunks: list[bytes] = []
        self.server.calls += 1
        try:
            result = self._inline(self._call, environ, response, chunks.append)
        except Exception:
            self._failed(request, response, chunks)
            return
        if isinstance(result, (list, tuple)):
            try:
                chunks.extend(result)
                _close_iterable(result)
            except Exception:
                self._failed(request, response, chunks)
                return
            self._finish(request, response, chunks, True)
            return
        # A generator, a file wrapper: produced one piece at a time as the client reads.
        self._write(request, response, chunks, False)
        self.pump = iter(result)
        self.pumping = (request, response, result)
        self._pump_inline()

    def _pump_inline(self) -> None:
        if self.pump is None or self.pumping is None:
            return
        request, response, result = self.pumping
        chunks: list[bytes] = []
        try:
            while not self.write_paused and not self.lost:
                try:
                    chunk = self._inline(next, self.pump)
                except StopIteration:
                    break
                if chunk:
                    chunks.append(chunk)
                    self._write(request, response, chunks, False)
                    chunks = []
            else:
                if self.lost:
                    self.pump = None
                    _close_iterable(result)
                return  # resume_writing calls again
        except Exception:
            self.pump = None
            _close_iterable(result)
            self._failed(request, response, chunks)
            return
        self.pump = None
        _close_iterable(result)
        self._finish(request, response, chunks, False)

    def _call_in_thread(
        self, environ: dict[str, Any], request: _Request, response: _Response
    ) -> None:
        """Run the app in a pool thread; the loop writes what it produces."""
        server = self.server
        key = server.clock()
        chunks: list[bytes] = []
        call = self.loop.call_soon_threadsafe
        try:

            def write(data: bytes) -> None:
                chunks.append(data)

            try:
                result = self._call(environ, response, write)
                whole = isinstance(result, (list, tuple))
                try:
                    for chunk in result:
                        if whole or not chunk:
                            chunks.append(chunk)
                            continue
                        chunks.append(chunk)
                        # Streamed: each piece goes out as produced, at the client's pace.
                        server.running.pop(key, None)
                        out, chunks[:] = list(chunks), []
                        call(self._write_streamed, request, response, out)
                        writable = self.writable
                        if self.write_paused and writable is not None:
                            writable.wait()
                        if self.lost:
                            break
                        server.running[key] = time.monotonic()
                finally:
                    _close_iterable(result)
            except Exception:
                exc_info = sys.exc_info()
                call(self._failed, request, response, chunks, exc_info)
                return
            call(self._finish, request, response, chunks, whole)
        finally:
            server.running.pop(key, None)

    def _call(
        self, environ: dict[str, Any], response: _Response, write: Callable[[bytes], None]
    ) -> Iterable[bytes]:
        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo = None
        ) -> Callable[[bytes], None]:
            response.start_response(status, headers, exc_info)
            return write

        return self.server.app(environ, start_response)

    # -- writing responses -------------------------------------------------------------
    def _head(
        self, request: _Request, response: _Response, chunks: list[bytes], whole: bool
    ) -> bytes:
        """The status line and headers, with the framing this response needs."""
        if response.status is None:
            raise RuntimeError("the WSGI application returned without calling start_response")
        code = response.code
        out = [b"HTTP/1.1 ", response.status.encode("latin-1"), b"\r\n"]
        length: int | None = None
        close = not request.keep_alive or self.closing
        for name, value in response.headers:
            lower = name.lower()
            if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
                raise ValueError(f"a response header holds a line break: {name!r}")
            if lower == "content-length":
                length = int(value)
                continue  # written below, once
            elif lower == "connection":
                if value.lower() == "close":
                    close = True
                continue
            elif lower == "transfer-encoding":
                continue  # the server frames the body
            out += (name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n")
        bodiless = code < 200 or code in (204, 304)
        if length is not None:
            out += (b"content-length: ", str(length).encode(), b"\r\n")
        elif response.head and not whole:
            pass  # a streamed answer to HEAD: no body, and no length known
        elif whole or bodiless:
            if not bodiless:
                length = sum(map(len, chunks))
                out += (b"content-length: ", str(length).encode(), b"\r\n")
        elif request.version == "1.1":
            response.chunked = True
            out.append(b"transfer-encoding: chunked\r\n")
        else:
            close = True  # HTTP/1.0 without a length: the end of the body is the close
        response.length = length
        response.close = close
        if close:
            out.append(b"connection: close\r\n")
        elif request.version == "1.0":
            out.append(b"connection: keep-alive\r\n")
        out += (self.server.date_header(), b"\r\n")
        if self.server.access:
            access_log.info(
                '%s - "%s %s HTTP/%s" %d',
                self.client,
                request.method,
                request.url.decode("latin-1"),
                request.version,
                code,
            )
        return b"".join(out)

    def _write(
        self, request: _Request, response: _Response, chunks: list[bytes], whole: bool
    ) -> None:
        """Send what the app produced so far (the headers with the first piece)."""
        if self.lost or self.transport is None:
            return
        data = b"".join(chunks)
        out: list[bytes] = []
        if not response.sent:
            if not data and not whole:
                return  # PEP 3333: headers wait for the first non-empty piece
            out.append(self._head(request, response, chunks, whole))
            response.sent = True
        if response.head or response.code in (204, 304):
            data = b""
        if data:
            if response.chunked:
                out += (b"%x\r\n" % len(data), data, b"\r\n")
            else:
                out.append(data)
        if out:
            self.transport.write(b"".join(out))

    def _write_streamed(self, request: _Request, response: _Response, chunks: list[bytes]) -> None:
        """A piece a pool thread produced; a fault (no start_response) cuts the connection."""
        try:
            self._write(request, response, chunks, False)
        except Exception:
            log.exception("error in the WSGI application's response")
            if self.transport is not None:
                self.transport.close()  # the thread sees the loss and stops producing

    def _finish(
        self, request: _Request, response: _Response, chunks: list[bytes], whole: bool
    ) -> None:
        """The response is complete: write its end, then keep the connection or close it."""
        try:
            if not response.sent:
                self._write(request, response, chunks, True)
            else:
                self._write(request, response, chunks, False)
                if response.chunked and not response.head and not self.lost:
                    assert self.transport is not None
                    self.transport.write(b"0\r\n\r\n")
        except Exception:
            self._failed(request, response, [])
            return
        self._done(response.close)

    def _failed(
        self,
        request: _Request,
        response: _Response,
        chunks: list[bytes],
        exc_info: ExcInfo = None,
    ) -> None:
        """The app raised: a 500 if nothing was sent yet, else the connection is cut."""
        log.error("error in the WSGI application", exc_info=exc_info or True)
        if response.sent or self.lost:
            if self.transport is not None:
                self.transport.close()
            self._done(True)
            return
        self.server.active -= 1
        self.busy = False
        request.keep_alive = False
        self._simple(request, 500, b"internal server error\n")

    def _simple(self, request: _Request, code: int, body: bytes) -> None:
        """A response of the server's own (400, 413, 431, 500, 503), then close."""
        reasons = {
            400: "Bad Request",
            413: "Content Too Large",
            431: "Request Header Fields Too Large",
            500: "Internal Server Error",
        }
        response = _Response(request.method == "HEAD")
        response.start_response(
            f"{code} {reasons.get(code, 'Service Unavailable')}",
            [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
        )
        request.keep_alive = False
        self.busy = True
        self.server.active += 1
        self._write(request, response, [body], True)
        self._done(True)

    def _error(self, code: int, reason: str) -> None:
        log.debug("closing a connection: %s", reason)
        if self.busy:
            if self.transport is not None:
                self.transport.close()
            return
        request = _Request()
        request.method = "GET"
        self.pending.clear()
        self._simple(request, code, reason.encode() + b"\n")

    def _done(self, close: bool) -> None:
        self.server.active -= 1
        self.busy = False
        if self.lost or self.transport is None:
            return
        if close or (self.closing and not self.pending):
            self.transport.close()
            return
        if self.read_paused and len(self.pending) <= MAX_PIPELINED:
            self.read_paused = False
            self.transport.resume_reading()
        if self.pending:
            self._next()
        else:
            self._wait_idle()

    def _wait_idle(self) -> None:
        if self.server.keep_alive > 0 and self.transport is not None:
            self.idle = self.loop.call_later(self.server.keep_alive, self._idle_timeout)

    def _idle_timeout(self) -> None:
        self.idle = None
        if not self.busy and not self.pending and self.transport is not None:
            self.transport.close()


def _close_iterable(result: object) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()


def _run_sync(coroutine: Any) -> None:
    """Run a coroutine that never suspends (uvicorn's proxy-header middleware on a scope)."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    raise RuntimeError("the proxy-header middleware suspended")


async def _accept_scope(scope: Any, receive: Any, send: Any) -> None:
    """The innermost ASGI app of the proxy chain: the scope is all it was for."""


def proxy_chain(wrap: Callable[[Any], Any]) -> Callable[..., Any]:
    """The proxy-header middleware ``serve`` builds, around an app that only takes the scope."""
    return wrap(_accept_scope)  # type: ignore[no-any-return]
