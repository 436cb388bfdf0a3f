"""asyncio integration: ``start_server`` and ``create_server`` that share their port.

In a worker, the listening socket comes from the primary (see :mod:`pycluster._ports`);
pycluster accepts on it and gives each connection to the running loop's own
``connect_accepted_socket``, so protocols, transports and TLS are exactly asyncio's (or
uvloop's); pycluster never wraps, patches or sets attributes on the protocols it
creates (a protocol class with ``__slots__``, or one written in C, works). The returned
server also:

* ends ``serve_forever()`` normally (no ``CancelledError``) when pycluster closes it
  for ``worker.disconnect()``;
* makes a disconnect wait until its connections have ended, counted from the
  kernel's tables, so a connection upgraded to a WebSocket (a new protocol on the
  same transport) is still seen;
* beats the worker's heartbeat from the loop, for hang detection;
* has ``close_clients()`` and ``abort_clients()`` (asyncio.Server's since Python 3.13)
  on every Python, for the connections pycluster accepted.

Outside a cluster these are ``asyncio.start_server`` / ``loop.create_server``.
"""

from __future__ import annotations

import _socket
import asyncio
import concurrent.futures
import errno
import logging
import os
import socket
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from pycluster import _child as child
from pycluster import _ports as net
from pycluster._ports.hooks import _py_real_close

ClientConnected = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]
HEARTBEAT_INTERVAL = 0.5

log = logging.getLogger("pycluster")


class Server:
    """An ``asyncio.Server`` whose port is shared with the other workers."""

    def __init__(
        self,
        server: asyncio.AbstractServer | None,
        runtime: child.ChildRuntime,
        listeners: list[net.Listener | None],
    ) -> None:
        self._server = server
        self._runtime = runtime
        #: One per listening socket (asyncio listens on every address a host names).
        self._listeners = [listener for listener in listeners if listener is not None]
        self._loop = asyncio.get_running_loop()
        self._closed_by_cluster = False
        self._stopped = asyncio.Event()
        self._beat: asyncio.Task[None] | None = None
        # No listener (a disconnect closed one while the server was being set up) or a
        # refused take-over: there is nothing to serve.
        taken = [net.replace_closer(one, self._close_from_disconnect) for one in listeners]
        if server is None or not listeners or not all(taken):
            self._closed_by_cluster = True
            self._close_inner()
        if runtime.status is not None:
            self._beat = self._loop.create_task(self._heartbeat())

    # -- asyncio.Server's surface --------------------------------------------------------
    @property
    def sockets(self) -> tuple[Any, ...]:
        """The listening sockets."""
        return tuple(getattr(self._server, "sockets", None) or ())

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """The loop this server runs on."""
        return self._loop

    def is_serving(self) -> bool:
        """Whether the server accepts connections."""
        return self._server is not None and self._server.is_serving()

    def close(self) -> None:
        """Stop accepting; existing connections go on."""
        self._stopped.set()
        self._close_inner()
        if self._beat is not None:
            self._beat.cancel()

    def close_clients(self) -> None:
        """Close every connection this server accepted (``transport.close()``).

        asyncio.Server's own since Python 3.13; here on every Python where pycluster
        accepts. A server the loop accepts on itself (a worker's own socket under
        ``SCHED_REUSEPORT``) needs the loop's server to have it.
        """
        if self._server is not None:
            _clients_call(self._server, "close_clients")

    def abort_clients(self) -> None:
        """Close every connection this server accepted at once (``transport.abort()``),
        without flushing what they have not sent; see :meth:`close_clients`."""
        if self._server is not None:
            _clients_call(self._server, "abort_clients")

    def _close_inner(self) -> None:
        if self._server is None:
            return
        try:
            self._server.close()
        except (OSError, ValueError):
            pass  # the listener was already closed by a disconnect: nothing to stop

    async def wait_closed(self) -> None:
        """Wait until the server is closed and its connections have ended."""
        if self._server is not None:
            await self._server.wait_closed()
        await self._drained()

    async def _drained(self) -> None:
        # Polled: the kernel's tables have no event to wait on.
        while any(one.open_connections() for one in self._listeners):  # noqa: ASYNC110
            await asyncio.sleep(net.DRAIN_POLL)

    async def start_serving(self) -> None:
        """Start accepting connections."""
        if self._server is not None and not self._closed_by_cluster:
            await self._server.start_serving()
            self._listening()

    def _listening(self) -> None:
        for one in self._listeners:
            one.listen()  # a loop that listens in C (uvloop) does not say so

    async def serve_forever(self) -> None:
        """Serve until closed; returns normally when pycluster disconnects the worker.

        Waits on the server's own close rather than the loop's ``serve_forever``, whose
        ending on close differs between asyncio and uvloop.
        """
        if not self._closed_by_cluster:
            await self.start_serving()
            try:
                await self._stopped.wait()
            except asyncio.CancelledError:
                self.close()
                await self.wait_closed()
                raise
        if self._closed_by_cluster:
            # Requests in progress finish before the program goes on (and perhaps
            # ends, which would cancel their tasks mid-answer).
            await self._drained()
            return
        raise asyncio.CancelledError  # closed by the program: as asyncio's serve_forever

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

    # -- pycluster's part ---------------------------------------------------------------
    async def _heartbeat(self) -> None:
        status = self._runtime.status
        while status is not None:
            status.beat()
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    def _close_from_disconnect(self) -> None:
        # The listener takes no more connections already (disconnect() stopped it).
        async def close() -> None:
            self._closed_by_cluster = True
            self.close()
            await self.wait_closed()

        try:
            asyncio.run_coroutine_threadsafe(close(), self._loop).result()
        except (RuntimeError, concurrent.futures.CancelledError):
            pass  # the loop is closed, or the program ended it: nothing is served any more


class _AcceptServer(asyncio.AbstractServer):
    """A server that accepts through pycluster and gives each connection to the loop.

    A loop that accepts in C (uvloop) cannot read a round-robin hand-off socket, and
    on a shared socket it takes every waiting connection at once (one worker then
    gets a whole burst). So this server watches the listener, takes connections
    through pycluster's ``accept()`` (hand-offs under round robin, a fair share of the
    shared queue under ``none``) and gives each to the loop's
    ``connect_accepted_socket``, which makes the same transport the loop's own accept
    would. On asyncio's selector loop it serves too, for less than the loop's own
    accept costs: no task per connection, no ``stat`` of the listener per accept and,
    for a hand-off, no socket object made to ask for the peer's address.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        factory: Callable[[], asyncio.BaseProtocol],
        kwargs: dict[str, Any],
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._factory = factory
        self._options = {k: v for k, v in kwargs.items() if k in _ACCEPTED_SOCKET_OPTIONS}
        self._serving = False
        #: The transports of the connections taken, for close_clients(): weak (or, where
        #: a transport cannot be, until its connection is lost), so that a connection
        #: that ended is not kept; the ended ones are dropped now and then.
        self._clients: list[Callable[[], asyncio.BaseTransport | None]] = []
        self._prune_at = _PRUNE_MIN
        self._handed_over = net.is_round_robin(sock)
        self._paused: asyncio.TimerHandle | None = None
        #: The cluster listener behind the socket and its descriptor, for the direct
        #: accept (see _accept); None where the socket is not one.
        self._listener = net.listener_of(sock)
        self._fd = sock.fileno()
        # uvloop takes a bare descriptor (see _Descriptor); another loop gets a socket,
        # made non-blocking here unless the loop does it anyway (asyncio's do).
        self._wrap: Callable[[int, int, int], Any] = (
            _Descriptor
            if type(loop).__module__.startswith("uvloop")
            else _connection
            if isinstance(loop, asyncio.BaseEventLoop)
            else _nonblocking_connection
        )

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening socket, while open."""
        return () if self._sock.fileno() == -1 else (self._sock,)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """The loop this server runs on."""
        return self._loop

    def is_serving(self) -> bool:
        """Whether connections are taken."""
        return self._serving

    async def start_serving(self) -> None:
        """Take connections from now on."""
        if self._serving or self._sock.fileno() == -1:
            return
        self._serving = True
        self._sock.setblocking(False)
        self._sock.listen()
        self._loop.add_reader(self._sock.fileno(), self._take)

    def _accept(self) -> Any:
        """The next connection, as ``sock.accept()`` gives it, by the shortest way.

        Straight to the listener's accept while the descriptor is still its own (the
        hooked ``accept()`` checks that with a ``stat`` call each time; a retirement
        takes the descriptor out of ``fds``), and without the peer's address, which
        the loop's transport asks for itself: every connection of a ``Connection:
        close`` stream pays this path.
        """
        listener = self._listener
        if listener is None or self._fd not in listener.fds or listener.retired:
            conn = self._sock.accept()[0]
            # A new connection is no listener: the C method, not the hooked one.
            _socket.socket.setblocking(conn, False)
            return conn
        fd, _addr = listener.accept(self._sock, want_peer=False)
        try:
            return self._wrap(listener.family, listener.proto, fd)
        except BaseException:
            os.close(fd)
            raise

    def _take(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn = self._accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                if self._handed_over:
                    self.close()  # the primary stopped handing connections to us
                    return
                continue  # a client gave up before it was accepted
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._pause(exc)
                else:
                    self.close()  # the listener was closed, or the primary stopped
                return
            _start(
                self._loop.connect_accepted_socket(self._factory, conn, **self._options),
                conn,
                self._started,
            )

    def _started(self, transport: asyncio.BaseTransport) -> None:
        clients = self._clients
        try:
            clients.append(weakref.ref(transport))
        except TypeError:  # uvloop's TLS transport takes no weak reference
            clients.append(_Held(transport))
        if len(clients) >= self._prune_at:
            clients[:] = [one for one in clients if one() is not None]
            self._prune_at = max(_PRUNE_MIN, 2 * len(clients))

    def _transports(self) -> list[asyncio.BaseTransport]:
        return [t for t in (one() for one in self._clients) if t is not None]

    def close_clients(self) -> None:
        """Close the transport of every connection taken (asyncio 3.13's method)."""
        for transport in self._transports():
            transport.close()

    def abort_clients(self) -> None:
        """Abort the transport of every connection taken (asyncio 3.13's method)."""
        for transport in self._transports():
            transport.abort()  # type: ignore[attr-defined]

    def _pause(self, exc: OSError) -> None:
        # As asyncio does: out of descriptors or memory, stop accepting for a while
        # rather than spin on a socket that stays readable.
        log.error("accept failed (%s); accepting again in %s s", exc, ACCEPT_RETRY_DELAY)
        self._loop.remove_reader(self._sock.fileno())
        self._paused = self._loop.call_later(ACCEPT_RETRY_DELAY, self._resume)

    def _resume(self) -> None:
        self._paused = None
        if self._serving and self._sock.fileno() != -1:
            self._loop.add_reader(self._sock.fileno(), self._take)

    def close(self) -> None:
        """Stop taking connections; those already taken go on."""
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        if self._serving:
            self._serving = False
            if self._sock.fileno() != -1:
                self._loop.remove_reader(self._sock.fileno())
        self._sock.close()

    async def wait_closed(self) -> None:
        """Connections are waited for by :class:`Server` (from the kernel's tables)."""

    async def serve_forever(self) -> None:
        """Not used: :class:`Server` serves."""
        raise NotImplementedError


class _Held:
    """A transport that takes no weak reference, held until its connection is lost
    (when the loop lets go of its protocol); called, it gives the transport until then.
    """

    __slots__ = ("_transport",)

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self._transport: asyncio.BaseTransport | None = transport

    def __call__(self) -> asyncio.BaseTransport | None:
        transport = self._transport
        if transport is not None and transport.get_protocol() is None:
            self._transport = transport = None
        return transport


class _Connection(socket.socket):
    """An accepted connection for the ``connect_accepted_socket`` of a loop other than
    uvloop (which takes a :class:`_Descriptor`), made without the ``socket.socket``
    constructor and with plain-integer ``family`` and ``type``.

    ``socket.socket`` converts both to enums on every read, and its constructor goes
    through pycluster's hook: a few microseconds per connection that a ``Connection:
    close`` stream pays for each request. A loop that detaches a ``socket.socket``
    when its transport closes then closes the descriptor once, itself.
    """

    __slots__ = ()
    family = _socket.socket.family  # type: ignore[assignment]
    type = _socket.socket.type  # type: ignore[assignment]
    # A connection is never a listener, so pycluster's socket hooks (which look the
    # descriptor up among the listeners first) have nothing to do for it: the loop's
    # transport calls these four once per connection.
    getsockname = _socket.socket.getsockname
    getpeername = _socket.socket.getpeername
    setblocking = _socket.socket.setblocking
    _real_close = _py_real_close


class _Descriptor:
    """An accepted connection for uvloop's ``connect_accepted_socket``: no socket object.

    uvloop reads ``family`` and ``type``, opens its transport on ``fileno()`` (libuv
    owns the descriptor from then on, makes it non-blocking and closes it with the
    transport) and calls ``close()`` when the transport ends, where a socket would be
    detached. A ``socket.socket`` costs two system calls per connection that this does
    not: the constructor asks for the descriptor's address to check it, and
    ``setblocking(False)`` repeats what libuv does.
    """

    __slots__ = ("family", "type", "proto", "_fd", "_owned")

    def __init__(self, family: int, proto: int, fd: int) -> None:
        self.family = family
        self.type = socket.SOCK_STREAM
        self.proto = proto
        self._fd = fd
        self._owned = True  # until the loop takes the descriptor

    def fileno(self) -> int:
        """The descriptor, given to the loop for good."""
        self._owned = False
        return self._fd

    def close(self) -> None:
        """Close the descriptor if the loop never took it (else the loop closes it)."""
        if self._owned:
            self._owned = False
            os.close(self._fd)


def _connection(family: int, proto: int, fd: int) -> socket.socket:
    """A :class:`_Connection` for descriptor ``fd``, for a loop that makes it
    non-blocking itself (asyncio's ``connect_accepted_socket`` does).
    """
    conn = _Connection.__new__(_Connection)
    _socket.socket.__init__(conn, family, socket.SOCK_STREAM, proto, fd)
    conn._io_refs = 0  # type: ignore[attr-defined]
    conn._closed = False  # type: ignore[attr-defined]
    return conn


def _nonblocking_connection(family: int, proto: int, fd: int) -> socket.socket:
    """A non-blocking :class:`_Connection` for descriptor ``fd``."""
    conn = _connection(family, proto, fd)
    _socket.socket.setblocking(conn, False)
    return conn


def _start(
    coro: Coroutine[Any, Any, Any],
    conn: socket.socket | _Descriptor | None = None,
    started: Callable[[asyncio.BaseTransport], None] | None = None,
) -> None:
    """Run ``connect_accepted_socket``'s coroutine without a task of its own.

    It only waits for the transport's waiter, so stepping it inline, and again from
    that future's callback, is all a task would do, for one loop callback instead of
    three (task start, wake-up, done callback) per connection. ``conn``, on the first
    step: closed if the coroutine fails (a socket the transport took stays open until
    the transport lets it go). ``started`` is given the transport once it is made.
    """
    try:
        awaited = coro.send(None)
    except StopIteration as done:
        if started is not None:
            started(done.value[0])  # (transport, protocol)
        return
    except asyncio.CancelledError:
        return  # its waiter was cancelled (the loop is closing)
    except Exception as exc:
        if conn is not None:
            conn.close()
        # A client's doing (a failed TLS handshake, a reset) is routine, and asyncio
        # reports it only in debug mode; anything else is the program's.
        report = log.debug if isinstance(exc, OSError) else log.warning
        report("a handed-over connection failed to start: %s", exc)
        return
    if awaited is None:  # a bare yield (asyncio.sleep(0)): go on at the next turn
        asyncio.get_running_loop().call_soon(_start, coro, None, started)
        return
    awaited._asyncio_future_blocking = False
    awaited.add_done_callback(lambda _: _start(coro, None, started))


def _clients_call(server: asyncio.AbstractServer, method: str) -> None:
    """Call ``server``'s ``close_clients`` or ``abort_clients``, which a loop's own
    server has only from Python 3.13 on."""
    call = getattr(server, method, None)
    if call is None:
        raise AttributeError(
            f"{method}() needs Python 3.13 or later for a server the loop accepts on "
            f"itself ({type(server).__module__}.{type(server).__qualname__} has none)"
        )
    call()


def _ssl_context_class() -> type:
    try:
        import ssl
    except ImportError:  # a Python built without it: nothing is a context
        return type(None)
    return ssl.SSLContext


def refuse_bad_options(method: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """Raise what the loop's own ``method`` would raise for options it refuses, before
    any port is taken.

    Without this a cluster would bind and listen first, and a connection accepted
    meanwhile would be lost when the loop then refuses; and a server that hands its
    connections to ``connect_accepted_socket`` would only find a bad ``ssl`` at each
    connection. Options the loop does not take at all: asyncio's and uvloop's methods
    carry code objects, so their parameters are known (through ``pycluster run``'s
    wrapper too, which keeps the original as ``__wrapped__``); a loop without one says
    so itself. Then the TLS options' own rules, as both loops check them.
    """
    context = kwargs.get("ssl")
    if context is not None and not isinstance(context, _ssl_context_class()):
        raise TypeError("ssl argument must be an SSLContext or None")
    if context is None:
        for timeout in ("ssl_handshake_timeout", "ssl_shutdown_timeout"):
            if kwargs.get(timeout) is not None:
                raise ValueError(f"{timeout} is only meaningful with ssl")
    func = getattr(method, "__func__", method)
    func = getattr(func, "__wrapped__", func)
    code = getattr(func, "__code__", None)
    if code is None or code.co_flags & _CO_VARKEYWORDS:
        return
    known = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
    for name in kwargs:
        if name not in known:
            raise TypeError(f"{func.__qualname__}() got an unexpected keyword argument {name!r}")


def _counting(
    factory: Callable[[], asyncio.BaseProtocol], runtime: child.ChildRuntime
) -> Callable[[], asyncio.BaseProtocol]:
    """Counts connections where pycluster's accept does not see them (uvloop's C accept)."""
    status = runtime.status
    if status is None:
        return factory

    def make() -> asyncio.BaseProtocol:
        status.count_connection()
        return factory()

    return make


#: What ``create_server`` takes that ``connect_accepted_socket`` takes too.
_ACCEPTED_SOCKET_OPTIONS = ("ssl", "ssl_handshake_timeout", "ssl_shutdown_timeout")
#: ``create_server`` options an :class:`_AcceptServer` honours: those above, and those
#: about binding, which the cluster's listener has done already.
_HANDED_OVER_OPTIONS = frozenset(
    (*_ACCEPTED_SOCKET_OPTIONS, "family", "flags", "reuse_address", "reuse_port")
)
#: A code object's flag for a ``**kwargs`` parameter (``inspect.CO_VARKEYWORDS``).
_CO_VARKEYWORDS = 0x08
#: Connections taken per wake-up of the loop (a shared socket gives fewer: see _ports).
ACCEPT_BATCH = 64
#: Transports tracked before the ended ones are first dropped (then twice the live ones).
_PRUNE_MIN = 256
#: Seconds without accepting after running out of descriptors (asyncio's delay).
ACCEPT_RETRY_DELAY = 1.0
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


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
    refuse_bad_options(loop.create_server, kwargs)
    addresses = await _resolve_all(loop, host, port or 0, family)
    listeners = await asyncio.to_thread(_listen_on, addresses, backlog)
    return await _serve(loop, runtime, listeners, protocol_factory, backlog, kwargs)


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
    refuse_bad_options(loop.create_unix_server, kwargs)
    listener = await asyncio.to_thread(
        net.create_server,
        path,
        family=socket.AF_UNIX,
        backlog=backlog,
    )
    return await _serve(loop, runtime, listener, protocol_factory, backlog, kwargs)


async def serve_socket(
    loop: asyncio.AbstractEventLoop,
    runtime: child.ChildRuntime,
    listener: socket.socket,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    backlog: int,
    start: bool,
    kwargs: dict[str, Any],
) -> asyncio.AbstractServer:
    """The loop's server on a cluster listener, whatever the loop and the policy.

    A round-robin or shared socket is served by :class:`_AcceptServer`, which accepts
    through pycluster and gives each connection to the loop's
    ``connect_accepted_socket``: the transport the loop's own accept would make, for
    less of the worker's CPU (see :class:`_AcceptServer`). A loop that accepts in C
    (uvloop) must be served so; a selector loop is, unless an option asks for more
    than that call takes (``keep_alive``), when its own ``create_server`` serves it
    through the hooked ``accept()``. A socket of the worker's own
    (``SCHED_REUSEPORT``) is the loop's, counted on uvloop by the protocol factory.
    For pycluster's own servers (``serve``), not part of the public API.
    """
    from asyncio.selector_events import BaseSelectorEventLoop

    selector = isinstance(loop, BaseSelectorEventLoop)
    if net.accepts_through_pycluster(listener) and not (
        selector and set(kwargs) - _HANDED_OVER_OPTIONS
    ):
        server = _AcceptServer(loop, listener, protocol_factory, kwargs)
        if start:
            await server.start_serving()
        return server
    # A selector loop accepts through the hooked accept(), which counts; uvloop does not.
    return await loop.create_server(
        protocol_factory if selector else _counting(protocol_factory, runtime),
        sock=listener,
        backlog=backlog,
        start_serving=start,
        **kwargs,
    )


async def _serve(
    loop: asyncio.AbstractEventLoop,
    runtime: child.ChildRuntime,
    listeners: socket.socket | list[socket.socket],
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    backlog: int,
    kwargs: dict[str, Any],
    owned: bool = True,
) -> Server:
    """Serve ``listeners``; ``owned``: made for this server (closed if the loop refuses
    it), not the program's own socket."""
    if isinstance(listeners, socket.socket):
        listeners = [listeners]
    if any(one.fileno() == -1 for one in listeners):
        # A disconnect closed a listener meanwhile: hand back a closed server.
        for one in listeners:
            one.close()
        return Server(None, runtime, [])
    found = [net.listener_of(one) for one in listeners]
    start = kwargs.pop("start_serving", True)
    inners: list[asyncio.AbstractServer] = []
    try:
        for one in listeners:
            inners.append(
                await serve_socket(loop, runtime, one, protocol_factory, backlog, start, kwargs)
            )
    except BaseException:
        # The loop refused (an option it does not take, say): the port is given back,
        # so that the program can try again, as after a failed create_server.
        for inner in inners:
            inner.close()
        if owned:
            for one in listeners:
                one.close()
        raise
    inner = inners[0] if len(inners) == 1 else _Group(loop, inners)
    server = Server(inner, runtime, found)
    if start:
        server._listening()
    return server


async def _resolve_all(
    loop: asyncio.AbstractEventLoop, host: Any, port: int, family: int
) -> list[tuple[int, tuple[str, int]]]:
    """Every address ``loop.create_server(host=..., port=...)`` listens on, as asyncio
    finds them: ``None`` or ``""`` means every interface of every family (``0.0.0.0``
    and ``::``), a name every address it resolves to, and a sequence each of its hosts.
    """
    if host == "" or host is None:
        hosts: list[str | None] = [None]
    elif isinstance(host, str):
        hosts = [host]
    elif isinstance(host, (list, tuple)) and all(isinstance(h, str) for h in host):
        hosts = list(host)
    else:
        raise TypeError(f"host must be a str, a sequence of str or None, not {host!r}")
    found: list[tuple[int, tuple[str, int]]] = []
    for one in hosts:
        infos = await loop.getaddrinfo(
            one, port, family=family, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for fam, _type, _proto, _canon, sockaddr in infos:
            if fam not in (socket.AF_INET, socket.AF_INET6):
                continue
            address = (int(fam), (str(sockaddr[0]), int(sockaddr[1])))
            if address not in found:
                found.append(address)
    if not found:
        raise OSError(f"getaddrinfo({host!r}) returned an empty list")
    return found


def _listen_on(addresses: list[tuple[int, tuple[str, int]]], backlog: int) -> list[socket.socket]:
    """A cluster listener for each address (blocking: the primary answers each).

    As asyncio, an address whose family this host does not have (no IPv6) is left
    out; any other failure closes what was opened and is raised.
    """
    import errno

    listeners: list[socket.socket] = []
    last: OSError | None = None
    try:
        for family, address in addresses:
            try:
                listeners.append(net.create_server(address, family=family, backlog=backlog))
            except OSError as exc:
                if exc.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    raise
                last = exc
    except BaseException:
        for one in listeners:
            one.close()
        raise
    if not listeners:
        assert last is not None
        raise last
    return listeners


class _Group(asyncio.AbstractServer):
    """The loop's servers of one ``create_server`` call, one per listening socket.

    asyncio listens on every address a host resolves to (``0.0.0.0`` and ``::`` for
    ``host=None``) with one server; the loop serves one socket per ``sock=``, so the
    cluster's listeners are served one by one and grouped here.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, servers: list[asyncio.AbstractServer]
    ) -> None:
        self._loop = loop
        self._servers = servers

    @property
    def sockets(self) -> tuple[Any, ...]:
        """Every listening socket of the group."""
        return tuple(sock for one in self._servers for sock in getattr(one, "sockets", ()) or ())

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """The loop the servers run on."""
        return self._loop

    def is_serving(self) -> bool:
        """Whether any of the servers accepts connections."""
        return any(one.is_serving() for one in self._servers)

    async def start_serving(self) -> None:
        """Start accepting on every socket."""
        for one in self._servers:
            await one.start_serving()

    def close(self) -> None:
        """Stop accepting on every socket."""
        for one in self._servers:
            try:
                one.close()
            except (OSError, ValueError):
                pass  # closed already by a disconnect

    def close_clients(self) -> None:
        """Close the connections of every server."""
        for one in self._servers:
            _clients_call(one, "close_clients")

    def abort_clients(self) -> None:
        """Abort the connections of every server."""
        for one in self._servers:
            _clients_call(one, "abort_clients")

    async def wait_closed(self) -> None:
        """Wait until every server is closed."""
        for one in self._servers:
            await one.wait_closed()

    async def serve_forever(self) -> None:
        """Not used: :class:`Server` serves."""
        raise NotImplementedError


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
