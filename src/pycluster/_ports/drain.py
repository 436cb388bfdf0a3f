"""How many connections a worker still has open on an address, from its own descriptors.

Counted from the kernel's view of each socket this process holds, so it sees every
connection however the program handles it (a C accept loop, a WebSocket upgrade, a
protocol with ``__slots__``). Only this process's own descriptors are looked at, never
the machine-wide tables: on a busy server ``/proc/net/tcp`` lists every TIME_WAIT
connection of the host (70,000 lines, 2.8 s to read, were seen on a benchmark machine).
"""

from __future__ import annotations

import _socket
import os
import socket
from typing import Any

from pycluster._ports.fdtable import descriptors

_C = _socket.socket  # the C socket type: pycluster's hooks are not on it
#: TCP states that are no connection any more: LISTEN and CLOSE.
_NOT_CONNECTED = (socket.TCP_LISTEN if hasattr(socket, "TCP_LISTEN") else 10, 7)


def _normal(family: int, name: Any) -> Any:
    """An address as getsockname() gives it, comparable across calls."""
    if family == socket.AF_UNIX:
        return os.fsencode(name) if isinstance(name, str) else bytes(name)
    return int(name[1])


def _is_connection_on(fd: int, family: int, wanted: Any) -> bool:
    try:
        sock = _C(fileno=fd)
    except OSError:
        return False  # closed meanwhile
    try:
        if sock.family != family or sock.type != socket.SOCK_STREAM:
            return False
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return False  # a listening socket, not a connection
        if _normal(family, sock.getsockname()) != wanted:
            return False
        if family == socket.AF_UNIX:
            return True
        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
        return state not in _NOT_CONNECTED
    except OSError:
        return False
    finally:
        sock.detach()


def connections_on(family: int, sockname: Any) -> int:
    """Open connections of this process whose local address is ``sockname``.

    For TCP, the port decides (a connection to a wildcard listener has a specific
    local address); for a Unix socket, the path or abstract name.
    """
    if family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
        return 0
    wanted = _normal(family, sockname)
    sockets = descriptors(lambda link: link.startswith("socket:["))
    return sum(1 for fd in sockets if _is_connection_on(fd, family, wanted))
