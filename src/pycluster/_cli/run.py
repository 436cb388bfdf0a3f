"""``pycluster run``: make an unchanged program's servers cluster-aware, then run it.

Before the program starts, the worker puts pycluster under the standard library's
servers, at the few places every Python server goes through:

* ``socketserver`` and ``http.server`` server classes are replaced by pycluster's
  drop-ins (``ClusterMixIn``): graceful disconnect, heartbeats, busy marking;
* asyncio's ``loop.create_server`` / ``create_unix_server`` (and uvloop's) with an
  address go through ``pycluster.aio``;
* any other stream socket that the program binds (a plain ``bind()`` +
  ``listen()`` + ``accept()`` loop, tornado, twisted, ...) gets the cluster's
  listener behind its own descriptor (see :mod:`pycluster._cli.sockets`).

uvloop accepts in C, where a round-robin hand-off cannot reach: a server it runs is
shared (policy ``none``) instead, with a warning. ``--bind`` addresses replace the
addresses of the program's first servers, in order. A program still running a moment
after a disconnect has closed its servers is interrupted (SIGINT), as Ctrl-C would.
"""

from __future__ import annotations

import asyncio
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

log = logging.getLogger("pycluster._cli")

#: Seconds a disconnected worker's program gets to end by itself, then after SIGINT.
GRACE = 1.0

_overrides: list[binds.Bind] = []
_override_lock = threading.Lock()
_interrupted = threading.Event()


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
            or sockets.called_by_pycluster()
        ):
            return await orig(self, protocol_factory, host, port, **kwargs)
        from pycluster import aio

        family, address = await aio._resolve(
            self, host, port or 0, kwargs.pop("family", socket.AF_UNSPEC)
        )
        backlog = kwargs.pop("backlog", 100)
        for ignored in ("flags", "reuse_address", "reuse_port"):
            kwargs.pop(ignored, None)
        policy = sockets.shared_for_uvloop(address) if uvloop else None
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
        if runtime is None or kwargs.get("sock") is not None or sockets.called_by_pycluster():
            return await orig(self, protocol_factory, path, **kwargs)
        from pycluster import aio

        backlog = kwargs.pop("backlog", 100)
        kwargs.pop("cleanup_socket", None)
        policy = sockets.shared_for_uvloop(path) if uvloop else None
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
        "ForkingTCPServer",
        "ForkingUDPServer",
        "UnixStreamServer",
        "ThreadingUnixStreamServer",
    ):
        if hasattr(cluster_socketserver, name):
            setattr(socketserver, name, getattr(cluster_socketserver, name))
    http.server.HTTPServer = cluster_http.HTTPServer  # type: ignore[misc]
    http.server.ThreadingHTTPServer = cluster_http.ThreadingHTTPServer  # type: ignore[misc]


def install(bind_list: list[binds.Bind], round_robin: bool) -> None:
    """Make the standard library's servers cluster-aware in this worker."""
    _overrides[:] = bind_list
    _patch_socketserver()  # imports pycluster's integrations before anything is replaced
    net.create_server = _create_server
    sockets.install(round_robin)
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
