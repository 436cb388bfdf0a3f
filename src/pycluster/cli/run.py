"""``pycluster run``: make an unchanged program's servers cluster-aware, then run it.

Before the program starts, the worker puts pycluster under the standard library's
servers, at the few places every Python server goes through:

* ``socketserver`` and ``http.server`` server classes are replaced by pycluster's
  drop-ins (``ClusterMixIn``): graceful disconnect, heartbeats, busy marking;
* asyncio's ``loop.create_server`` / ``create_unix_server`` (and uvloop's) with an
  address go through ``pycluster.aio``;
* any other stream socket that the program binds (a plain ``bind()`` +
  ``listen()`` + ``accept()`` loop, tornado, twisted, ...) gets the cluster's
  listener instead: the descriptor the primary hands out is ``dup2``-ed onto the
  program's own socket, whose class becomes :class:`ManagedSocket` so that
  ``accept()``, ``listen()``, ``getsockname()`` and timeouts go to the listener.
  ``select``/``selectors``/asyncio readers work since the descriptor is readable
  when a connection waits.

uvloop accepts in C, where a round-robin hand-off cannot reach: a server it runs is
shared (policy ``none``) instead, with a warning. When the worker disconnects, each
listener of a plain socket is swapped for a quiet socket that never gets a
connection, and a program still running a moment after its servers have drained is
interrupted (SIGINT), as Ctrl-C would.
"""

from __future__ import annotations

import asyncio
import logging
import os
import runpy
import signal
import socket
import stat
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

import pycluster as cluster
from pycluster import child, net
from pycluster.cli import binds

log = logging.getLogger("pycluster.cli")

STREAM_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)
#: Seconds a disconnected worker's program gets to end by itself, then after SIGINT.
GRACE = 1.0

_orig_bind = socket.socket.bind
_orig_unlink = os.unlink
_overrides: list[binds.Bind] = []
_override_lock = threading.Lock()
_rr_policy = True
_interrupted = threading.Event()


def _called_by_pycluster() -> bool:
    """Whether pycluster's own code (an exclusive or SO_REUSEPORT server) is calling."""
    frame = sys._getframe(2)
    for _ in range(16):
        if frame is None:
            return False
        name = str(frame.f_globals.get("__name__", ""))
        if name.startswith("pycluster.") and not name.startswith("pycluster.cli"):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _uvloop_running() -> bool:
    if "uvloop" not in sys.modules:
        return False
    try:
        loop: Any = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        return type(loop).__module__.startswith("uvloop")
    return type(asyncio.get_event_loop_policy()).__module__.startswith("uvloop")


def _shared_for_uvloop(where: Any) -> int | None:
    """The policy to ask for a server that uvloop will accept on."""
    if not _rr_policy:
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


# -- one choke point for every cluster listener: --bind overrides ---------------------------
_net_create_server = net.create_server


def _create_server(address: Any, **kwargs: Any) -> Any:
    """``net.create_server``, listening on the next ``--bind`` address if one is left."""
    stream = kwargs.get("type") in (None, socket.SOCK_STREAM)
    if stream and not kwargs.get("exclusive") and kwargs.get("fd") is None:
        with _override_lock:
            override = _overrides.pop(0) if _overrides else None
        if override is not None:
            address, extra = binds.create_args(override)
            kwargs.pop("family", None)
            kwargs.pop("dualstack_ipv6", None)
            kwargs.update(extra)
    return _net_create_server(address, **kwargs)


# -- plain sockets ------------------------------------------------------------------------------
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
            if not m.retired.wait(GRACE):
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
        or _called_by_pycluster()
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
    if _uvloop_running():
        kwargs["policy"] = _shared_for_uvloop(where)
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
Creator = Callable[..., Any]


def _wrap_create_server(orig: Creator, uvloop: bool) -> Creator:
    async def create_server(
        self: asyncio.AbstractEventLoop,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: Any = None,
        port: Any = None,
        **kwargs: Any,
    ) -> Any:
        runtime = child.runtime()
        if (
            runtime is None
            or kwargs.get("sock") is not None
            or kwargs.get("reuse_port")
            or not (host is None or isinstance(host, str))
            or _called_by_pycluster()
        ):
            return await orig(self, protocol_factory, host, port, **kwargs)
        from pycluster import aio

        family, address = await aio._resolve(
            self, host, port or 0, kwargs.pop("family", socket.AF_UNSPEC)
        )
        backlog = kwargs.pop("backlog", 100)
        for ignored in ("flags", "reuse_address", "reuse_port"):
            kwargs.pop(ignored, None)
        policy = _shared_for_uvloop(address) if uvloop else None
        listener = await asyncio.to_thread(
            net.create_server, address, family=family, backlog=backlog, policy=policy
        )
        return await aio._serve(self, runtime, listener, protocol_factory, backlog, kwargs)

    return create_server


def _wrap_create_unix_server(orig: Creator, uvloop: bool) -> Creator:
    async def create_unix_server(
        self: asyncio.AbstractEventLoop,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        path: Any = None,
        **kwargs: Any,
    ) -> Any:
        runtime = child.runtime()
        if runtime is None or kwargs.get("sock") is not None or _called_by_pycluster():
            return await orig(self, protocol_factory, path, **kwargs)
        from pycluster import aio

        backlog = kwargs.pop("backlog", 100)
        kwargs.pop("cleanup_socket", None)
        policy = _shared_for_uvloop(path) if uvloop else None
        listener = await asyncio.to_thread(
            net.create_server, path, family=socket.AF_UNIX, backlog=backlog, policy=policy
        )
        return await aio._serve(self, runtime, listener, protocol_factory, backlog, kwargs)

    return create_unix_server


def _patch_asyncio() -> None:
    import asyncio.base_events as base
    import asyncio.unix_events as unix
    import importlib.util

    base.BaseEventLoop.create_server = _wrap_create_server(  # type: ignore[method-assign]
        base.BaseEventLoop.create_server, False
    )
    unix._UnixSelectorEventLoop.create_unix_server = _wrap_create_unix_server(  # type: ignore[method-assign]
        unix._UnixSelectorEventLoop.create_unix_server, False
    )
    if importlib.util.find_spec("uvloop") is not None:
        import uvloop

        uvloop.Loop.create_server = _wrap_create_server(uvloop.Loop.create_server, True)  # type: ignore[method-assign]
        uvloop.Loop.create_unix_server = _wrap_create_unix_server(  # type: ignore[method-assign]
            uvloop.Loop.create_unix_server, True
        )


def _patch_socketserver() -> None:
    import http.server
    import socketserver

    from pycluster import http as cluster_http
    from pycluster import socketserver as cluster_socketserver

    for name in (
        "TCPServer",
        "UDPServer",
        "ThreadingTCPServer",
        "ThreadingUDPServer",
        "UnixStreamServer",
        "ThreadingUnixStreamServer",
    ):
        if hasattr(cluster_socketserver, name):
            setattr(socketserver, name, getattr(cluster_socketserver, name))
    http.server.HTTPServer = cluster_http.HTTPServer  # type: ignore[misc]
    http.server.ThreadingHTTPServer = cluster_http.ThreadingHTTPServer  # type: ignore[misc]


def install(bind_list: list[binds.Bind], round_robin: bool) -> None:
    """Make the standard library's servers cluster-aware in this worker."""
    global _rr_policy
    _rr_policy = round_robin
    _overrides[:] = bind_list
    _patch_socketserver()  # imports pycluster's integrations before anything is replaced
    net.create_server = _create_server
    socket.socket.bind = _bind  # type: ignore[assignment]
    os.unlink = os.remove = _unlink
    _patch_asyncio()


def _end_after_disconnect() -> None:
    """The servers have drained and the channel is closed: the program should end now."""

    def watch() -> None:
        if threading.Event().wait(GRACE):
            return
        log.info("the program still runs after disconnecting: interrupting it")
        _interrupted.set()
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
        threading.Event().wait(GRACE)
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(0)

    threading.Thread(target=watch, name="pycluster-end", daemon=True).start()


def main(spec: dict[str, Any]) -> int:
    """Run the program the spec names, cluster-aware; returns its exit status."""
    install(spec["binds"], spec.get("policy", "rr") == "rr")
    worker = cluster.worker
    assert worker is not None
    worker.on("disconnect", _end_after_disconnect)
    args: list[str] = spec["args"]
    try:
        if spec["script"] is not None:
            script: str = spec["script"]
            sys.argv = [script, *args]
            sys.path[0] = os.path.dirname(script)
            runpy.run_path(script, run_name="__main__")
        else:
            sys.argv = [spec["module"], *args]
            runpy.run_module(spec["module"], run_name="__main__", alter_sys=True)
    except KeyboardInterrupt:
        if not _interrupted.is_set():
            raise
    return 0
