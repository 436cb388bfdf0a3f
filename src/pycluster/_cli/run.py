"""``pycluster run``: make an unchanged program's servers cluster-aware, then run it.

Before the program starts, the worker puts pycluster under the standard library's
servers, at the few places every Python server goes through:

* ``socketserver`` and ``http.server`` server classes are replaced by pycluster's
  drop-ins (``ClusterMixIn``): graceful disconnect, heartbeats, busy marking;
* asyncio's ``loop.create_server`` / ``create_unix_server`` (and uvloop's) with an
  address go through ``pycluster.aio``;
* any other stream socket that the program binds (a plain ``bind()`` +
  ``listen()`` + ``accept()`` loop, tornado, werkzeug, waitress, ...) is bound the
  cluster's way (see :mod:`pycluster._cli.sockets`).

uvloop accepts in C, where a round-robin hand-off cannot reach and where one worker
would take a whole burst from a shared socket: on uvloop, pycluster accepts itself
(hand-offs, or a fair share of the shared queue) and gives each connection to
``connect_accepted_socket``.

When the worker is disconnected (``pycluster stop``, a reload, SIGTERM to the
primary), its listeners stop taking connections at once, and then the program is
stopped the way it expects to be:

* a program with its own SIGINT or SIGTERM handler (uvicorn, aiohttp, ...) gets that
  signal right away and runs its own graceful shutdown (in-flight requests, open
  WebSockets, lifespan hooks);
* any other program gets :data:`GRACE` seconds for its open connections to end and
  its serving loop to return (pycluster's ``socketserver`` and asyncio servers return
  by themselves once drained); if it still runs then, it is interrupted with SIGINT,
  as Ctrl-C would.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import runpy
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

import pycluster as cluster
from pycluster import _child as child
from pycluster import _ports as net
from pycluster._cli import binds, sockets

log = logging.getLogger("pycluster.cli")
#: The socket class pycluster hooks; a program that replaces it (gevent's monkey-patching)
#: binds its own sockets, out of pycluster's reach.
_STDLIB_SOCKET = socket.socket

#: Seconds a disconnected program without a graceful stop of its own gets to finish.
GRACE = 1.0
#: Seconds the program is left running at a disconnect while its listeners are retired.
RETIRE_WAIT = 1.0

_interrupted = threading.Event()
#: The program stops itself (it has its own signal handler): no watchdog.
_stops_itself = threading.Event()


# -- asyncio and uvloop -------------------------------------------------------------------------
Creator = Callable[..., Any]


_NOT_FOR_A_LISTENER = ("flags", "reuse_address", "reuse_port", "cleanup_socket")


async def _serve(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    kwargs: dict[str, Any],
    listen: Callable[[int], socket.socket | list[socket.socket]],
    owned: bool = True,
) -> Any:
    """Serve on the cluster listeners ``listen(backlog)`` makes (in a thread: it waits);
    ``owned``: not the program's own socket."""
    from pycluster import aio

    runtime = child.runtime()
    assert runtime is not None
    backlog = kwargs.pop("backlog", 100)
    for ignored in _NOT_FOR_A_LISTENER:
        kwargs.pop(ignored, None)
    listener = await asyncio.to_thread(listen, backlog)
    return await aio._serve(loop, runtime, listener, protocol_factory, backlog, kwargs, owned)


def _own_loop_accepts_it(loop: asyncio.AbstractEventLoop, sock: Any) -> bool:
    """Whether the loop's own create_server can serve ``sock`` (not so: a cluster
    listener on a loop that accepts in C, such as uvloop)."""
    from asyncio.selector_events import BaseSelectorEventLoop

    return isinstance(loop, BaseSelectorEventLoop) or not net.accepts_through_pycluster(sock)


def _wrap_create_server(orig: Creator) -> Creator:
    @functools.wraps(orig)
    async def create_server(
        self: asyncio.AbstractEventLoop,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: Any = None,
        port: Any = None,
        **kwargs: Any,
    ) -> Any:
        sock = kwargs.get("sock")
        if (
            child.runtime() is None
            or sockets.called_by_pycluster()
            or (sock is not None and _own_loop_accepts_it(self, sock))
            or (sock is None and kwargs.get("reuse_port"))
        ):
            return await orig(self, protocol_factory, host, port, **kwargs)
        # pycluster serves from here on: what the loop would refuse, it refuses first.
        from pycluster import aio

        aio.refuse_bad_options(orig, kwargs)
        if sock is not None:
            kwargs.pop("sock")
            return await _serve(self, protocol_factory, kwargs, lambda backlog: sock, owned=False)
        family = kwargs.pop("family", socket.AF_UNSPEC)
        override = sockets.next_override()
        if override is not None:
            where, extra = binds.create_args(override)
            if "fd" in extra:
                fd = extra["fd"]
                return await _serve(
                    self,
                    protocol_factory,
                    kwargs,
                    lambda backlog: net.create_server(None, fd=fd, backlog=backlog),
                )
            if extra.get("family") == socket.AF_UNIX:
                return await self.create_unix_server(protocol_factory, where, **kwargs)
            host, port, family = where[0], where[1], extra["family"]
        # Every address asyncio would listen on (0.0.0.0 and :: for host=None).
        addresses = await aio._resolve_all(self, host, port or 0, family)
        return await _serve(
            self, protocol_factory, kwargs, lambda backlog: aio._listen_on(addresses, backlog)
        )

    return create_server


def _wrap_create_unix_server(orig: Creator) -> Creator:
    @functools.wraps(orig)
    async def create_unix_server(
        self: asyncio.AbstractEventLoop,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        path: Any = None,
        **kwargs: Any,
    ) -> Any:
        sock = kwargs.get("sock")
        if (
            child.runtime() is None
            or sockets.called_by_pycluster()
            or (sock is not None and _own_loop_accepts_it(self, sock))
        ):
            return await orig(self, protocol_factory, path, **kwargs)
        # pycluster serves from here on: what the loop would refuse, it refuses first.
        from pycluster import aio

        aio.refuse_bad_options(orig, kwargs)
        if sock is not None:
            kwargs.pop("sock")
            return await _serve(self, protocol_factory, kwargs, lambda backlog: sock, owned=False)
        return await _serve(
            self,
            protocol_factory,
            kwargs,
            lambda backlog: net.create_server(path, family=socket.AF_UNIX, backlog=backlog),
        )

    return create_unix_server


def _patch_asyncio() -> None:
    import asyncio.base_events as base
    import asyncio.unix_events as unix
    import importlib.util

    base.BaseEventLoop.create_server = _wrap_create_server(  # type: ignore[method-assign]
        base.BaseEventLoop.create_server
    )
    unix._UnixSelectorEventLoop.create_unix_server = _wrap_create_unix_server(  # type: ignore[method-assign]
        unix._UnixSelectorEventLoop.create_unix_server
    )
    if importlib.util.find_spec("uvloop") is not None:
        import uvloop

        uvloop.Loop.create_server = _wrap_create_server(uvloop.Loop.create_server)  # type: ignore[method-assign]
        uvloop.Loop.create_unix_server = _wrap_create_unix_server(  # type: ignore[method-assign]
            uvloop.Loop.create_unix_server
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
        "ForkingTCPServer",
        "ForkingUDPServer",
        "UnixStreamServer",
        "ThreadingUnixStreamServer",
    ):
        if hasattr(cluster_socketserver, name):
            setattr(socketserver, name, getattr(cluster_socketserver, name))
    http.server.HTTPServer = cluster_http.HTTPServer  # type: ignore[misc]
    http.server.ThreadingHTTPServer = cluster_http.ThreadingHTTPServer  # type: ignore[misc]


def install(bind_list: list[binds.Bind]) -> None:
    """Make the standard library's servers cluster-aware in this worker."""
    _patch_socketserver()  # imports pycluster's integrations before anything is replaced
    sockets.install(bind_list)
    _patch_asyncio()


def _own_stop_signal() -> int | None:
    """SIGINT or SIGTERM if the program handles it itself (its graceful stop), else None.

    asyncio.run()'s own SIGINT handler only cancels the main task: that is Ctrl-C,
    not a graceful stop, so it does not count.
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if handler in (signal.SIG_DFL, signal.SIG_IGN, None, signal.default_int_handler):
            continue
        runner = getattr(asyncio, "Runner", None)  # Python >= 3.11
        bound = getattr(handler, "func", handler)  # Runner installs a functools.partial
        if runner is not None and isinstance(getattr(bound, "__self__", None), runner):
            continue
        return signum
    return None


def _interrupt(signum: int) -> None:
    _interrupted.set()
    signal.pthread_kill(threading.main_thread().ident or 0, signum)


def _stop_program() -> None:
    """At ``worker.disconnect()``, beside the listeners' own closing: end the program."""
    # The listeners' closing runs beside this: a program that is signalled stops
    # listening, and must not do so while its descriptors are being retired.
    net.wait_retired(net.history(), RETIRE_WAIT)
    own = _own_stop_signal()
    if own is not None:
        _stops_itself.set()
        log.debug("stopping the program with its own %s handler", signal.Signals(own).name)
        _interrupt(own)
        return
    deadline = threading.Event()
    net.wait_drained(net.history(), GRACE)
    for _ in range(int(GRACE / net.DRAIN_POLL)):
        if not threading.main_thread().is_alive():
            return  # its serving loop returned by itself
        deadline.wait(net.DRAIN_POLL)
    if threading.main_thread().is_alive():
        log.info("the program still runs after its servers closed: interrupting it")
        _interrupt(signal.SIGINT)


def _end_after_disconnect() -> None:
    """The channel is closed: a program that neither ended nor stops itself is ended."""
    if _stops_itself.is_set():
        return  # it runs its own graceful stop; the primary's shutdown_timeout bounds it

    def watch() -> None:
        if threading.Event().wait(GRACE):
            return
        if not _interrupted.is_set():
            _interrupt(signal.SIGINT)
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
    install(spec["binds"])
    worker = cluster.worker
    runtime = child.runtime()
    assert worker is not None and runtime is not None
    runtime.servers.add(_stop_program)
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
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE and socket.socket is not _STDLIB_SOCKET:
            log.error(
                "%s: the program's sockets are not the standard library's (socket.socket "
                "is %s.%s, as after gevent's or eventlet's monkey-patching), so pycluster "
                "cannot share their ports; such programs are not supported",
                exc,
                socket.socket.__module__,
                socket.socket.__qualname__,
            )
        raise
    return 0
