"""Plain sockets of an unchanged program, made cluster-aware (``pycluster run``).

A stream socket the program binds (``AF_INET``, ``AF_INET6``, ``AF_UNIX``) gets a
cluster listener instead of its own: the descriptor the primary hands out
(round-robin hand-off socket, or the shared listening socket) is ``dup2``-ed onto the
program's socket, whose class becomes :class:`ManagedSocket`, so that ``accept()``,
``listen()``, ``getsockname()`` and timeouts go to the listener while ``fileno()``,
``select``, ``selectors`` and asyncio readers see a descriptor that is readable when a
connection waits. Errors of the primary's bind (``EADDRINUSE``) surface at the
program's ``bind()``, where it expects them.

When the worker disconnects, a listener is swapped for a quiet socket that never gets
a connection, so the program's accept loop idles instead of failing. A bound socket
that then connects (a client choosing its source address) gets its own socket back.
``os.unlink`` keeps a Unix socket where a server listens: another worker's program
removing "its stale socket" would otherwise cut the cluster off.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import sys
import threading
import weakref
from typing import Any

import pycluster as cluster
from pycluster import _child as child
from pycluster import _ports as net

log = logging.getLogger("pycluster._cli")

STREAM_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)
#: Seconds an accept() waits for its listener's retirement to finish.
RETIRE_WAIT = 1.0

_orig_bind = socket.socket.bind
_orig_unlink = os.unlink
_round_robin = True


def called_by_pycluster() -> bool:
    """Whether pycluster's own code (an exclusive or SO_REUSEPORT server) is calling."""
    frame = sys._getframe(2)
    for _ in range(16):
        if frame is None:
            return False
        name = str(frame.f_globals.get("__name__", ""))
        if name.startswith("pycluster.") and not name.startswith("pycluster._cli"):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def uvloop_running() -> bool:
    """Whether this thread's event loop (running, or the policy's next one) is uvloop's."""
    if "uvloop" not in sys.modules:
        return False
    try:
        loop: Any = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        return type(loop).__module__.startswith("uvloop")
    return type(asyncio.get_event_loop_policy()).__module__.startswith("uvloop")


def shared_for_uvloop(where: Any) -> int | None:
    """The policy to ask for a server that uvloop will accept on."""
    if not _round_robin:
        return None
    worker = cluster.worker
    level = logging.WARNING if worker is not None and worker.slot == 0 else logging.DEBUG
    log.log(
        level,
        "uvloop accepts connections in C, out of reach of round-robin hand-offs: "
        "the workers share the listening socket of %s instead (policy none)",
        where,
    )
    return cluster.SCHED_NONE


class _Managed:
    """A program socket that carries a cluster listener."""

    def __init__(self, sock: socket.socket, listener: Any, address: Any) -> None:
        self.fd = sock.fileno()
        self.sock = weakref.ref(sock)
        self.listener = listener
        self.address = address
        self.timeout: float | None = None
        self.round_robin = isinstance(listener, net.RoundRobinListener)
        self.retired = threading.Event()

    def retire(self) -> None:
        """For a disconnect: the program's socket becomes one that never gets a connection."""
        quiet = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        _orig_bind(quiet, "")  # an unnamed abstract address: nobody can connect to it
        quiet.listen(1)
        sock = self.sock()
        if sock is not None and sock.fileno() == self.fd:
            os.dup2(quiet.fileno(), self.fd, inheritable=False)
            socket.socket.settimeout(sock, self.timeout)
        quiet.close()
        self.listener.close()
        self.retired.set()


_state: weakref.WeakKeyDictionary[socket.socket, _Managed] = weakref.WeakKeyDictionary()


class ManagedSocket(socket.socket):
    """The class of a program's socket once it carries a cluster listener."""

    __slots__ = ()

    def _m(self) -> _Managed | None:
        m = _state.get(self)
        return None if m is None or m.retired.is_set() else m

    def listen(self, backlog: int = 0, /) -> None:
        """Already listening, in the primary (or on the shared socket)."""
        if self._m() is None:
            socket.socket.listen(self, backlog)

    def accept(self) -> tuple[socket.socket, Any]:
        """The next connection for this worker."""
        m = self._m()
        if m is None:
            return socket.socket.accept(self)
        try:
            conn: socket.socket
            conn, addr = m.listener.accept()
        except (BlockingIOError, InterruptedError, TimeoutError):
            raise
        except OSError:
            if not m.retired.wait(RETIRE_WAIT):
                raise
            return socket.socket.accept(self)  # the quiet socket: blocks, or EAGAIN
        return conn, addr

    def getsockname(self) -> Any:
        """The address the cluster listens on."""
        m = self._m()
        return socket.socket.getsockname(self) if m is None else m.listener.getsockname()

    def settimeout(self, value: float | None, /) -> None:
        """Recorded for ``accept()``; the descriptor itself is shared and stays as it is."""
        m = self._m()
        if m is None:
            socket.socket.settimeout(self, value)
            return
        m.timeout = value
        m.listener.settimeout(value)

    def setblocking(self, flag: bool, /) -> None:
        """As ``settimeout(None)`` / ``settimeout(0.0)``."""
        self.settimeout(None if flag else 0.0)

    def gettimeout(self) -> float | None:
        """This socket's ``accept()`` timeout."""
        m = self._m()
        return socket.socket.gettimeout(self) if m is None else m.timeout

    def getblocking(self) -> bool:
        """Whether ``accept()`` blocks."""
        return self.gettimeout() != 0.0

    def setsockopt(self, *args: Any) -> None:
        """Options of a hand-off socket belong to the primary's listening socket."""
        m = self._m()
        if m is None or not m.round_robin:
            socket.socket.setsockopt(self, *args)

    def connect(self, address: Any, /) -> None:
        """A bound socket that connects was a client after all: give it back its own."""
        _unmanage(self)
        socket.socket.connect(self, address)

    def connect_ex(self, address: Any, /) -> int:
        """As :meth:`connect`."""
        _unmanage(self)
        return socket.socket.connect_ex(self, address)

    def close(self) -> None:
        """Close the program's socket and the listener behind it."""
        m = _state.pop(self, None)
        if m is not None and not m.retired.is_set():
            m.listener.close()
        socket.socket.close(self)


def _unmanage(sock: socket.socket) -> None:
    m = _state.pop(sock, None)
    if m is None:
        return
    fresh = socket.socket(sock.family, sock.type)
    os.dup2(fresh.fileno(), sock.fileno(), inheritable=False)
    fresh.close()
    sock.__class__ = socket.socket
    m.listener.close()
    _orig_bind(sock, m.address)
    if m.timeout is not None:
        socket.socket.settimeout(sock, m.timeout)


def _bind(self: socket.socket, address: Any, /) -> None:
    runtime = child.runtime()
    if (
        runtime is None
        or self.type != socket.SOCK_STREAM
        or self.family not in STREAM_FAMILIES
        or isinstance(self, ManagedSocket)
        or called_by_pycluster()
    ):
        _orig_bind(self, address)
        return
    kwargs: dict[str, Any] = {"family": self.family}
    where: Any = address
    if self.family != socket.AF_UNIX:
        where = (address[0], address[1])
        if self.family == socket.AF_INET6:
            v6only = self.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
            kwargs["dualstack_ipv6"] = not v6only
    if uvloop_running():
        kwargs["policy"] = shared_for_uvloop(where)
    listener = net.create_server(where, **kwargs)
    os.dup2(listener.fileno(), self.fileno(), inheritable=False)
    managed = _Managed(self, listener, address)
    _state[self] = managed
    self.__class__ = ManagedSocket
    token = getattr(listener, "registry_token", None)
    if token is not None:
        runtime.servers.replace(token, managed.retire)


def _unlink(path: Any, *, dir_fd: int | None = None) -> None:
    """``os.unlink`` that keeps a Unix socket a server listens on (another worker's)."""
    if dir_fd is None and _listening_unix_socket(path):
        log.debug("kept %s: the cluster listens there", path)
        return
    _orig_unlink(path, dir_fd=dir_fd)


def _listening_unix_socket(path: Any) -> bool:
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return False
        with open("/proc/net/unix") as f:
            table = f.read().splitlines()[1:]
    except (OSError, TypeError, ValueError):
        return False
    wanted = os.path.abspath(os.fsdecode(path))
    for line in table:
        fields = line.split(None, 7)
        # Flags 00010000 is __SO_ACCEPTCON: the socket listens.
        if len(fields) == 8 and int(fields[3], 16) & 0x10000 and fields[7] == wanted:
            return True
    return False


# -- asyncio and uvloop -------------------------------------------------------------------------


def install(round_robin: bool) -> None:
    """Intercept ``socket.socket.bind`` and ``os.unlink`` in this worker."""
    global _round_robin
    _round_robin = round_robin
    socket.socket.bind = _bind  # type: ignore[assignment]
    os.unlink = os.remove = _unlink
