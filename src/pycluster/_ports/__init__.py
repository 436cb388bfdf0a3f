"""The worker side of port sharing: the listening sockets a worker's program gets.

A program in a worker gets a **real** ``socket.socket``, the very object it created
(``pycluster run``, ``socketserver``) or a fresh one (``create_server``); pycluster
never swaps its class or sets attributes on it. What changes is the descriptor behind
it, swapped with ``dup2`` when the program binds:

* round-robin: this worker's end of its *hand-off socket* (a ``SOCK_SEQPACKET`` pair
  with the primary, which accepts and sends each connection's descriptor down it).
  It is readable exactly when a connection waits, so ``select``, ``selectors``,
  asyncio and tornado readers all work on it unchanged;
* shared: the primary's listening socket itself, which the worker accepts on.

A few methods of ``socket.socket`` are hooked in worker processes (never in the
primary, never outside a cluster) so that, for those descriptors, the program
observes what it would observe without pycluster: ``accept()`` takes the next
hand-off and returns a real connected socket with the peer's address, honouring the
object's own blocking mode and timeout; ``getsockname()`` is the shared address;
``getsockopt``/``setsockopt`` reach a socket of the program's own kind (its original
descriptor, kept with the options it set); ``listen()`` only records that the program
listens (the primary's socket already does, with the backlog it needs); ``dup()``
works; a shared descriptor stays non-blocking underneath (its flags are shared by
every worker, so ``setblocking``/``settimeout`` record blocking mode, which
``gettimeout``/``getblocking`` answer) while a blocking ``accept()`` still blocks.
Every hook costs one dictionary look-up for other sockets.

When the worker disconnects, a program's listening socket is *retired*: a quiet
socket that never gets a connection takes its descriptor, so the program's accept
loop idles instead of failing, and the primary, seeing the hand-off socket close,
routes connections elsewhere. A socket pycluster created itself (``create_server``)
is closed instead, as Node closes a server.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from pycluster import _child as child
from pycluster._ports.drain import connections_on
from pycluster._ports.hooks import binding_privately, install, set_bind_filter, sharing
from pycluster._ports.listener import (
    DRAIN_POLL,
    Listener,
    accepts_through_pycluster,
    address_type,
    history,
    is_round_robin,
    listener_of,
    replace_closer,
    wait_drained,
    wait_retired,
    wake_waiters,
)
from pycluster._ports.query import adopt, query

__all__ = [
    "DRAIN_POLL",
    "Listener",
    "address_type",
    "connections_on",
    "create_server",
    "history",
    "install",
    "accepts_through_pycluster",
    "is_round_robin",
    "listener_of",
    "replace_closer",
    "set_bind_filter",
    "sharing",
    "wait_drained",
    "wait_retired",
    "wake_waiters",
]


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


def _fresh_socket(family: int, type_: int, dualstack_ipv6: bool) -> socket.socket:
    """A socket set up as ``socket.create_server`` sets it up, before binding."""
    sock = socket.socket(family, type_)
    try:
        if family != socket.AF_UNIX and type_ == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dualstack_ipv6 else 1)
    except OSError:
        sock.close()
        raise
    return sock


def _own_listener(sock: socket.socket, runtime: child.ChildRuntime) -> socket.socket:
    """A socket this worker bound by itself: not shared, but a disconnect still closes it."""

    def close() -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept()
        except OSError:
            pass
        sock.close()

    runtime.servers.add(close)
    return sock


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
) -> socket.socket:
    """A listening (or, for UDP, bound) socket shared with the other workers.

    A real ``socket.socket`` (see the module docstring). Errors of the primary's
    ``bind`` (``EADDRINUSE``, ``EACCES``) are raised here as ``OSError``. ``policy``
    asks for a scheduling policy for this server alone (a server whose accept loop
    runs in C cannot take round-robin hand-offs).
    """
    given = ("", 0) if address is None and fd is not None else address  # fd=N: address ignored
    family, type_, addr, port = _normalize(given, family, type)
    runtime = child.runtime()
    host_addr: Any = addr if family == socket.AF_UNIX else (addr, port)
    if runtime is None or exclusive:
        with binding_privately():
            own = _standalone(host_addr, family, type_, backlog, reuse_port, dualstack_ipv6, fd)
        return own if runtime is None else _own_listener(own, runtime)
    install()
    reply = query(runtime, family, type_, host_addr, backlog, fd, policy, dualstack_ipv6)
    # For fd=N, the primary says what the descriptor is: the socket is made of that kind.
    family = int(reply.get("family", family))
    type_ = int(reply.get("type", type_))
    sock = _fresh_socket(family, type_, dualstack_ipv6)
    try:
        adopt(runtime, sock, reply, host_addr, fd, created=True)
        if type_ == socket.SOCK_STREAM and sock.fileno() != -1:
            sock.listen(*(() if backlog is None else (backlog,)))
    except BaseException:
        for extra in reply.get("_fds", []):
            try:
                os.close(extra)
            except OSError:
                pass
        sock.close()
        raise
    return sock
