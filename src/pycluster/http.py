"""``http.server`` integration: ``HTTPServer`` and ``ThreadingHTTPServer`` sharing a port.

Beyond :class:`pycluster.socketserver.ClusterMixIn`, a disconnecting HTTP server
ends keep-alive connections cleanly: a request in progress gets its full response
with ``Connection: close``, and a connection idle between requests is closed, so
clients reconnect to another worker instead of seeing an error.
"""

from __future__ import annotations

import http.server as _http
import socket
import threading
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
                server: Any = self.server
                if getattr(server, "_cluster_closing", False):
                    self.close_connection = True
                    return
                server._cluster_idle(self.connection, True)
                try:
                    super().handle_one_request()
                finally:
                    server._cluster_idle(self.connection, False)
                    if getattr(server, "_cluster_closing", False):
                        self.close_connection = True

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
    def __init__(
        self, server_address: Any, RequestHandlerClass: Any, bind_and_activate: bool = True
    ):
        self._cluster_idle_conns: set[socket.socket] = set()
        self._cluster_idle_lock = threading.Lock()
        super().__init__(server_address, _draining_handler(RequestHandlerClass), bind_and_activate)  # type: ignore[call-arg]

    def _cluster_idle(self, conn: socket.socket, idle: bool) -> None:
        with self._cluster_idle_lock:
            if idle:
                self._cluster_idle_conns.add(conn)
            else:
                self._cluster_idle_conns.discard(conn)

    def _cluster_wait_idle(self) -> None:
        # Connections waiting for their next request would hold the worker forever.
        with self._cluster_idle_lock:
            idle = list(self._cluster_idle_conns)
        for conn in idle:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        super()._cluster_wait_idle()


class HTTPServer(_DrainingMixIn, _http.HTTPServer):
    """``http.server.HTTPServer`` sharing its port."""


class ThreadingHTTPServer(_DrainingMixIn, _http.ThreadingHTTPServer):
    """``http.server.ThreadingHTTPServer`` sharing its port."""
