"""``socketserver`` integration: servers whose port is shared across the cluster.

Put :class:`ClusterMixIn` first in the bases of any TCP or UDP ``socketserver``
class, or use the drop-in classes below. Outside a cluster they are the standard
classes. In a worker:

* the listening socket comes from the primary (round-robin or shared);
* ``worker.disconnect()`` stops the server taking connections at once, waits until
  requests in progress have finished, and makes ``serve_forever()`` return;
* the serving loop beats the worker's heartbeat (hang detection) and reports when a
  request occupies it, so round-robin passes a busy single-threaded worker over.
"""

from __future__ import annotations

import socket as _socket
import socketserver as _socketserver
import threading
from typing import Any

from pycluster import _child as child
from pycluster import _ports as net

#: The standard class, whatever ``pycluster run`` later puts under its name.
_StdTCPServer = _socketserver.TCPServer


class ClusterMixIn:
    """Makes a ``socketserver.BaseServer`` subclass share its port with the other workers."""

    #: Bind privately in this worker instead of sharing the port.
    cluster_exclusive = False

    socket: Any
    server_address: Any
    address_family: int
    socket_type: int
    request_queue_size: int

    def server_bind(self) -> None:
        runtime = child.runtime()
        if runtime is None or self.cluster_exclusive:
            super().server_bind()  # type: ignore[misc]
            return
        if getattr(self, "_cluster_binding", False):
            # http.server.HTTPServer.server_bind calls socketserver.TCPServer.server_bind
            # by name; when that name is a cluster-aware class (``pycluster run``
            # installs them), this is that inner call: the standard one, whose bind the
            # outer call shares.
            _StdTCPServer.server_bind(self)  # type: ignore[arg-type]
            return
        # The standard server_bind runs as it is (options, bind, server_address); its
        # bind() of this server's own socket shares the address through the primary.
        self._cluster_binding = True
        try:
            with net.sharing(self.socket, backlog=self.request_queue_size):
                super().server_bind()  # type: ignore[misc]
        finally:
            self._cluster_binding = False
        self._cluster_runtime = runtime
        self._cluster_active = 0
        self._cluster_cond = threading.Condition()
        self._cluster_closing = False
        self._cluster_serving = False
        self._cluster_closed = threading.Event()
        taken = net.replace_closer(net.listener_of(self.socket), self._cluster_close)
        if not taken:
            # A disconnect came while binding and closed the listener itself: there
            # is nothing to serve (serve_forever() returns at once).
            self._cluster_closing = True
            self._cluster_closed.set()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        cond = getattr(self, "_cluster_cond", None)
        if cond is None:
            super().serve_forever(poll_interval)  # type: ignore[misc]
            return
        with cond:
            if self._cluster_closing:
                closing = True
            else:
                closing, self._cluster_serving = False, True
        if not closing:
            try:
                super().serve_forever(poll_interval)  # type: ignore[misc]
            except (OSError, ValueError):
                # A disconnect right after listening can close the listener before
                # the serving loop has registered it (fileno() is then -1): that
                # ends serving, it is not an error.
                if not self._cluster_closing:
                    raise
            finally:
                self._cluster_serving = False
        if self._cluster_closing:
            # Requests still in progress finish before the program goes on (and
            # perhaps ends, taking daemon handler threads with it).
            self._cluster_closed.wait()

    def get_request(self) -> Any:
        cond = getattr(self, "_cluster_cond", None)
        if cond is None:
            return super().get_request()  # type: ignore[misc]
        if self.socket_type != _socket.SOCK_DGRAM:
            request = super().get_request()  # type: ignore[misc]
        else:
            # Every worker wakes for a datagram on the shared socket but only one gets
            # it: a blocking read would leave the others stuck where disconnect cannot
            # end them. BlockingIOError is an OSError: "no request" to the serving loop.
            data, client_address = self.socket.recvfrom(
                self.max_packet_size,  # type: ignore[attr-defined]
                _socket.MSG_DONTWAIT,
            )
            request = (data, self.socket), client_address
        # Counted from here to close_request(): both run whatever mixes in before us
        # (``class S(ThreadingMixIn, HTTPServer)`` puts ThreadingMixIn's
        # process_request first), so the count never misses a request.
        with cond:
            self._cluster_active += 1
        return request

    def service_actions(self) -> None:
        runtime = getattr(self, "_cluster_runtime", None)
        if runtime is not None and runtime.status is not None:
            runtime.status.beat()
        super().service_actions()  # type: ignore[misc]

    def process_request(self, request: Any, client_address: Any) -> None:
        runtime = getattr(self, "_cluster_runtime", None)
        status = runtime.status if runtime is not None else None
        threaded = isinstance(self, (_socketserver.ForkingMixIn, _socketserver.ThreadingMixIn))
        if status is None or threaded:
            super().process_request(request, client_address)  # type: ignore[misc]
            return
        # A single-threaded serving loop is occupied: round robin passes it over.
        status.set_busy(True)
        try:
            super().process_request(request, client_address)  # type: ignore[misc]
        finally:
            status.set_busy(False)
            status.beat()

    def close_request(self, request: Any) -> None:
        try:
            super().close_request(request)  # type: ignore[misc]
        finally:
            if getattr(self, "_cluster_cond", None) is not None:
                self._cluster_done()

    def _cluster_done(self) -> None:
        with self._cluster_cond:
            self._cluster_active -= 1
            self._cluster_cond.notify_all()

    def _cluster_close(self) -> None:
        """For ``worker.disconnect()``: stop accepting, finish requests, end serving."""
        with self._cluster_cond:
            self._cluster_closing = True
            serving = self._cluster_serving
        try:
            net.wake_waiters(self.socket)
            self.socket.close()
            if serving:
                self.shutdown()  # type: ignore[attr-defined]
            self._cluster_wait_idle()
            self.server_close()  # type: ignore[attr-defined]
        finally:
            self._cluster_closed.set()

    def _cluster_wait_idle(self) -> None:
        with self._cluster_cond:
            self._cluster_cond.wait_for(lambda: self._cluster_active <= 0)


class TCPServer(ClusterMixIn, _socketserver.TCPServer):
    """``socketserver.TCPServer`` sharing its port."""


class UDPServer(ClusterMixIn, _socketserver.UDPServer):
    """``socketserver.UDPServer`` sharing its socket."""


class ThreadingTCPServer(ClusterMixIn, _socketserver.ThreadingTCPServer):
    """``socketserver.ThreadingTCPServer`` sharing its port."""


class ThreadingUDPServer(ClusterMixIn, _socketserver.ThreadingUDPServer):
    """``socketserver.ThreadingUDPServer`` sharing its socket."""


class ForkingTCPServer(ClusterMixIn, _socketserver.ForkingTCPServer):
    """``socketserver.ForkingTCPServer`` sharing its port (a process per connection)."""


class ForkingUDPServer(ClusterMixIn, _socketserver.ForkingUDPServer):
    """``socketserver.ForkingUDPServer`` sharing its socket."""


if hasattr(_socketserver, "UnixStreamServer"):

    class UnixStreamServer(ClusterMixIn, _socketserver.UnixStreamServer):
        """``socketserver.UnixStreamServer`` sharing its path."""

    class ThreadingUnixStreamServer(ClusterMixIn, _socketserver.ThreadingUnixStreamServer):
        """``socketserver.ThreadingUnixStreamServer`` sharing its path."""
