"""``create_server`` and the listeners a worker gets from the primary.

In a worker, ``create_server`` asks the primary for the address and returns one of:

* :class:`RoundRobinListener`: the primary accepts and hands connections over a
  dedicated socket; ``fileno()`` is that socket, readable when a connection is
  waiting, so ``selectors``, ``socketserver`` and asyncio readers all work on it.
* :class:`SharedListener`: the real listening socket, shared with the other
  workers (SCHED_NONE, UDP); a C-level server (uvloop) can accept on it directly.
* a socket this worker bound itself (``exclusive=True``, SCHED_REUSEPORT).

Outside a cluster, and in the primary, it is exactly ``socket.create_server``.
Every listener is registered so that ``worker.disconnect()`` can close it.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pycluster import _child as child
from pycluster._ipc.channel import ChannelClosedError
from pycluster._ipc.messages import Act
from pycluster._servers import address_type

if TYPE_CHECKING:
    from pycluster._child import ChildRuntime

_RECV_FLAGS = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
Closer = Callable[[], None]


class _ListenerMixin:
    """Registration, the primary's bookkeeping and the ``listening`` report."""

    _token: int | None = None
    _handle_id: int | None = None
    _runtime: ChildRuntime | None = None

    def _register(self, runtime: ChildRuntime, handle_id: int | None) -> None:
        self._runtime = runtime
        self._handle_id = handle_id
        self._token = runtime.servers.add(self._close_for_disconnect)

    def _unregister(self) -> None:
        runtime, token = self._runtime, self._token
        self._token = None
        if runtime is None or token is None:
            return
        runtime.servers.discard(token)
        if self._handle_id is not None:
            try:
                runtime.send_internal(Act.CLOSE, handle=self._handle_id)
            except OSError:
                pass

    def _close_for_disconnect(self) -> None:
        self.close()  # type: ignore[attr-defined]

    @property
    def registry_token(self) -> int | None:
        """The token under which ``worker.disconnect()`` closes this listener."""
        return self._token


class RoundRobinListener(_ListenerMixin):
    """A listening-socket look-alike fed by the primary's round-robin hand-off."""

    def __init__(
        self,
        handoff: socket.socket,
        family: int,
        type: int,
        sockname: Any,
        runtime: ChildRuntime,
        handle_id: int | None,
    ) -> None:
        self._handoff = handoff
        self.family = socket.AddressFamily(family)
        self.type = socket.SocketKind(type)
        self.proto = 0
        self._sockname = sockname
        self._closed = False
        self._timeout: float | None = None
        handoff.setblocking(False)
        self._register(runtime, handle_id)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "round-robin"
        return f"<RoundRobinListener {state} laddr={self._sockname!r}>"

    def fileno(self) -> int:
        """Readable when a connection is waiting for this worker."""
        return -1 if self._closed else self._handoff.fileno()

    def getsockname(self) -> Any:
        """The address the primary listens on."""
        return self._sockname

    def accept(self) -> tuple[socket.socket, Any]:
        """Take the next connection handed to this worker, like ``socket.accept()``."""
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            if self._closed:
                raise OSError(errno.EBADF, "the listener is closed")
            try:
                msg, fds, _flags, _addr = socket.recv_fds(self._handoff, 16, 4, _RECV_FLAGS)
            except (BlockingIOError, InterruptedError):
                if self._timeout == 0.0:
                    raise
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError("timed out") from None
                select.select([self._handoff], [], [], remaining)
                continue
            if not msg and not fds:
                # The primary stopped serving this port: shut the server down the
                # way a disconnect would, so its serving loop ends instead of spinning.
                runtime, token = self._runtime, self._token
                if runtime is not None and token is not None:
                    runtime.servers.close_one(token)
                raise OSError(errno.ECONNABORTED, "the primary stopped handing connections")
            for extra in fds[1:]:
                os.close(extra)
            if not fds:
                continue
            conn = socket.socket(fileno=fds[0])
            try:
                self._handoff.send(b"A")
            except OSError:
                # Not acknowledged (closed meanwhile by a disconnect, or the primary is
                # gone): the primary hands this connection to another worker, so it is
                # not ours to serve.
                conn.close()
                continue
            runtime = self._runtime
            if runtime is not None and runtime.status is not None:
                runtime.status.count_connection()
            conn.settimeout(socket.getdefaulttimeout())
            try:
                peer = conn.getpeername()
            except OSError:
                peer = None
            return conn, peer

    def setblocking(self, flag: bool) -> None:
        """Blocking or not, as for a socket."""
        self._timeout = None if flag else 0.0

    def settimeout(self, value: float | None) -> None:
        """A timeout for ``accept()``, as for a socket."""
        self._timeout = value

    def gettimeout(self) -> float | None:
        """The current ``accept()`` timeout."""
        return self._timeout

    def getblocking(self) -> bool:
        """Whether ``accept()`` blocks."""
        return self._timeout != 0.0

    def listen(self, backlog: int = 0) -> None:
        """Already listening (in the primary); kept for ``socketserver``."""

    def bind(self, address: Any) -> None:
        """Already bound (in the primary); kept for ``socketserver``."""

    def setsockopt(self, *args: Any) -> None:
        """Options belong to the primary's socket; kept for ``socketserver``."""

    def close(self) -> None:
        """Stop taking connections; one already handed to us goes to another worker."""
        if self._closed:
            return
        self._closed = True
        try:
            self._handoff.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept()
        except OSError:
            pass
        self._handoff.close()
        self._unregister()

    def detach(self) -> int:
        """Not supported: the listener is not a real socket."""
        raise OSError(errno.EOPNOTSUPP, "a round-robin listener has no socket to detach")

    def __enter__(self) -> RoundRobinListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SharedListener(_ListenerMixin, socket.socket):
    """The real socket, shared with other workers.

    Its descriptor stays non-blocking, because the flag is shared by every process
    holding the socket; a blocking ``accept()`` is emulated, and wakes up when the
    listener is closed.
    """

    def __init__(self, fd: int, runtime: ChildRuntime | None, handle_id: int | None) -> None:
        socket.socket.__init__(self, fileno=fd)
        self._user_timeout: float | None = None
        self._wake_r, self._wake_w = os.pipe()
        # Datagram sockets keep plain socket semantics: only accept() needs emulating.
        self._emulate = self.type == socket.SOCK_STREAM
        if runtime is not None:
            self._register(runtime, handle_id)
        if self._emulate:
            super().settimeout(0.0)

    def accept(self) -> tuple[socket.socket, Any]:
        """Accept a connection, honouring this listener's own timeout."""
        deadline = None if self._user_timeout is None else time.monotonic() + self._user_timeout
        while True:
            try:
                conn, addr = super().accept()
            except (BlockingIOError, InterruptedError):
                if self._user_timeout == 0.0:
                    raise
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError("timed out") from None
                if self._closed_flag():
                    raise OSError(errno.EBADF, "the listener is closed") from None
                ready, _, _ = select.select([self.fileno(), self._wake_r], [], [], remaining)
                if self._wake_r in ready:
                    raise OSError(errno.EBADF, "the listener is closed") from None
                continue
            conn.settimeout(socket.getdefaulttimeout())
            runtime = self._runtime
            if runtime is not None and runtime.status is not None:
                runtime.status.count_connection()
            return conn, addr

    def _closed_flag(self) -> bool:
        return self.fileno() == -1

    def setblocking(self, flag: bool) -> None:
        """Record the mode; a shared listening descriptor itself stays non-blocking."""
        if not self._emulate:
            super().setblocking(flag)
        self._user_timeout = None if flag else 0.0

    def settimeout(self, value: float | None) -> None:
        """Record the timeout; a shared listening descriptor itself stays non-blocking."""
        if not self._emulate:
            super().settimeout(value)
        self._user_timeout = value

    def gettimeout(self) -> float | None:
        """This listener's timeout."""
        return self._user_timeout

    def listen(self, backlog: int = 0) -> None:
        """Already listening (in the primary); kept for ``socketserver``."""
        if self.type == socket.SOCK_STREAM:
            return

    def bind(self, address: Any) -> None:
        """Already bound (in the primary); kept for ``socketserver``."""

    def close(self) -> None:
        """Close this worker's copy; the socket stays open for the other workers."""
        if self.fileno() != -1:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        super().close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1
        self._unregister()


def _normalize(
    address: Any, family: int | None, type_: int | None
) -> tuple[int, int, Any, int | None]:
    if type_ is None:
        type_ = socket.SOCK_STREAM
    if family is None:
        if isinstance(address, (str, bytes, os.PathLike)):
            family = socket.AF_UNIX
        elif isinstance(address, tuple) and address and ":" in str(address[0] or ""):
            family = socket.AF_INET6
        else:
            family = socket.AF_INET
    if family == socket.AF_UNIX:
        path = os.fsdecode(address) if isinstance(address, (bytes, os.PathLike)) else address
        return family, type_, path, None
    if address is None:
        raise TypeError("create_server() needs an address, not None (as socket.create_server)")
    if not isinstance(address, tuple) or len(address) < 2:
        raise TypeError(f"address must be a (host, port) tuple, not {address!r}")
    host, port = address[0], address[1]
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in 0..65535, not {port!r}")
    return family, type_, host or "", port


def _standalone(
    address: Any,
    family: int,
    type_: int,
    backlog: int | None,
    reuse_port: bool,
    dualstack_ipv6: bool,
    fd: int | None,
) -> socket.socket:
    if fd is not None:
        sock = socket.socket(fileno=fd)
        if sock.type == socket.SOCK_STREAM:
            sock.listen(*(() if backlog is None else (backlog,)))
        return sock
    if family != socket.AF_UNIX and type_ == socket.SOCK_STREAM:
        return socket.create_server(
            address,
            family=family,
            backlog=backlog,
            reuse_port=reuse_port,
            dualstack_ipv6=dualstack_ipv6,
        )
    sock = socket.socket(family, type_)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and dualstack_ipv6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        if type_ == socket.SOCK_STREAM:
            sock.listen(*(() if backlog is None else (backlog,)))
    except OSError:
        sock.close()
        raise
    return sock


def _closed_listener(
    family: int, type_: int, sockname: Any, runtime: ChildRuntime
) -> RoundRobinListener:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.close()
    listener = RoundRobinListener(ours, family, type_, sockname, runtime, None)
    listener.close()
    return listener


def create_server(
    address: Any,
    *,
    family: int | None = None,
    type: int | None = None,
    backlog: int | None = None,
    reuse_port: bool = False,
    dualstack_ipv6: bool = False,
    exclusive: bool = False,
    fd: int | None = None,
    policy: int | None = None,
) -> RoundRobinListener | SharedListener | socket.socket:
    """A listening (or, for UDP, bound) socket shared with the other workers.

    See the module docstring for what comes back. Errors of the primary's ``bind``
    (``EADDRINUSE``, ``EACCES``) are raised here as ``OSError``. ``policy`` asks for
    a scheduling policy for this server alone (the command line shares the port of a
    server whose accept runs in C, which a round-robin hand-off cannot reach).
    """
    given = ("", 0) if address is None and fd is not None else address  # fd=N: address ignored
    family, type_, addr, port = _normalize(given, family, type)
    runtime = child.runtime()
    host_addr: Any = addr if family == socket.AF_UNIX else (addr, port)
    if runtime is None or exclusive:
        own = _standalone(host_addr, family, type_, backlog, reuse_port, dualstack_ipv6, fd)
        if runtime is None:
            return own
        # Not reported to the primary (as in Node), but still one of this worker's
        # servers: worker.disconnect() closes it, waking a blocked accept().
        return SharedListener(own.detach(), runtime, None)
    query_addr = addr
    if fd is not None:
        query_addr, addr, port = None, None, None
    elif family == socket.AF_UNIX and addr and not addr.startswith("\0"):
        # Relative to this worker's directory, not the primary's (as Node resolves it).
        query_addr = os.path.abspath(addr)
    try:
        reply = runtime.request(
            Act.QUERY_SERVER,
            address=query_addr,
            port=port,
            family=int(family),
            type=int(type_),
            backlog=backlog,
            fd=fd,
            dualstack=dualstack_ipv6,
            policy=policy,
        )
    except ChannelClosedError:
        if not runtime.worker.exited_after_disconnect:
            raise
        reply = {"errno": errno.ECONNABORTED}
    fds: list[int] = reply.get("_fds", [])
    if "errno" in reply:
        for extra in fds:
            os.close(extra)
        err = int(reply["errno"])
        if err == errno.ECONNABORTED and runtime.worker.exited_after_disconnect:
            # The worker is being disconnected: its new server is closed from the
            # start, so serve_forever() returns and the program ends normally.
            return _closed_listener(family, type_, host_addr, runtime)
        where = f"fd={fd}" if fd is not None else host_addr
        raise OSError(err, str(reply.get("error") or os.strerror(err)), where)
    mode = reply.get("mode")
    handle_id = int(reply["handle"])
    family, type_ = int(reply.get("family", family)), int(reply.get("type", type_))
    host, real_port = reply.get("host"), reply.get("port")
    sockname: Any = host if family == socket.AF_UNIX else (host, real_port)
    if family == socket.AF_INET6 and isinstance(sockname, tuple):
        sockname = (host, real_port, 0, 0)
    listener: RoundRobinListener | SharedListener | socket.socket
    if mode == "rr":
        listener = RoundRobinListener(
            socket.socket(fileno=fds[0]), family, type_, sockname, runtime, handle_id
        )
    elif mode == "shared":
        listener = SharedListener(fds[0], runtime, handle_id)
    elif mode == "reuseport":
        sock = _standalone((addr, real_port), family, type_, backlog, True, dualstack_ipv6, None)
        listener = SharedListener(sock.detach(), runtime, handle_id)
    else:
        raise OSError(errno.EPROTO, f"the primary answered with an unknown mode {mode!r}")
    report = addr if family == socket.AF_UNIX and fd is None else host
    runtime.send_internal(
        Act.LISTENING,
        address=report,
        port=None if family == socket.AF_UNIX else real_port,
        addressType=address_type(family, type_),
    )
    return listener


Server = RoundRobinListener | SharedListener
