"""``http.server`` integration: ``HTTPServer`` and ``ThreadingHTTPServer`` sharing a port.

Beyond :class:`pycluster.socketserver.ClusterMixIn`, a disconnecting HTTP server
ends keep-alive connections cleanly: every response it still sends says
``Connection: close``, and a connection that stays idle between requests for
``cluster_idle_grace`` seconds is closed, so clients reconnect to another worker
instead of seeing an error.
"""

from __future__ import annotations

import http.server as _http
import select
import socket
import threading
import time
from typing import Any

from pycluster.socketserver import ClusterMixIn

_wrapped: dict[type, type] = {}
_wrap_lock = threading.Lock()


def _draining_handler(handler: type[_http.BaseHTTPRequestHandler]) -> type:
    """A subclass of ``handler`` that closes keep-alive connections while draining."""
    with _wrap_lock:
        found = _wrapped.get(handler)
        if found is not None:
            return found

        class Draining(handler):  # type: ignore[valid-type, misc]
            def handle_one_request(self) -> None:
                # Even while draining, a keep-alive connection is served until a
                # response has said "Connection: close": the client may already have
                # sent its next request, and closing now would fail that request.
                server: Any = self.server
                server._cluster_idle(self.connection, True)
                try:
                    super().handle_one_request()
                finally:
                    server._cluster_idle(self.connection, False)

            def parse_request(self) -> bool:
                server: Any = self.server
                server._cluster_idle(self.connection, False)
                return bool(super().parse_request())

            def end_headers(self) -> None:
                if getattr(self.server, "_cluster_closing", False) and not getattr(
                    self, "_cluster_said_close", False
                ):
                    self._cluster_said_close = True
                    self.send_header("Connection", "close")
                super().end_headers()

        Draining.__name__ = handler.__name__
        Draining.__qualname__ = handler.__qualname__
        _wrapped[handler] = Draining
        return Draining


class _DrainingMixIn(ClusterMixIn):
    #: While draining, a keep-alive connection waiting for its next request is closed
    #: once it has waited this many seconds with nothing to read; a request arriving
    #: sooner is answered, with ``Connection: close``. Closing at once would race with
    #: requests already on their way (a busy client sends the next one as soon as it
    #: has a response), and the client would see them fail.
    cluster_idle_grace = 1.0

    def __init__(
        self, server_address: Any, RequestHandlerClass: Any, bind_and_activate: bool = True
    ):
        self._cluster_idle_conns: dict[socket.socket, float] = {}
        self._cluster_idle_lock = threading.Lock()
        super().__init__(server_address, _draining_handler(RequestHandlerClass), bind_and_activate)  # type: ignore[call-arg]

    def _cluster_idle(self, conn: socket.socket, idle: bool) -> None:
        with self._cluster_idle_lock:
            if idle:
                self._cluster_idle_conns[conn] = time.monotonic()
            else:
                self._cluster_idle_conns.pop(conn, None)

    def _cluster_wait_idle(self) -> None:
        # Connections waiting for their next request would hold the worker forever:
        # close each one that has been idle for the grace period with no request pending.
        while True:
            now = time.monotonic()
            with self._cluster_idle_lock:
                idle = [
                    c
                    for c, t in self._cluster_idle_conns.items()
                    if now - t >= self.cluster_idle_grace
                ]
            for conn in idle:
                try:
                    pending = select.poll()  # not select(): descriptors may be >= 1024
                    pending.register(conn, select.POLLIN)
                    if pending.poll(0):
                        continue  # a request (or the client's close) is there to read
                    conn.shutdown(socket.SHUT_RDWR)
                except (OSError, ValueError):
                    pass  # the handler closed it meanwhile
                with self._cluster_idle_lock:
                    self._cluster_idle_conns.pop(conn, None)
            with self._cluster_cond:
                if self._cluster_cond.wait_for(lambda: self._cluster_active <= 0, 0.05):
                    return


class HTTPServer(_DrainingMixIn, _http.HTTPServer):
    """``http.server.HTTPServer`` sharing its port."""


class ThreadingHTTPServer(_DrainingMixIn, _http.ThreadingHTTPServer):
    """``http.server.ThreadingHTTPServer`` sharing its port."""
