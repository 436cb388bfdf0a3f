"""Sending and receiving descriptors with SCM_RIGHTS, without ever leaking one."""

from __future__ import annotations

import array
import socket

from pycluster._ipc.framing import MAX_FDS, ProtocolError, close_fds

_FD_SIZE = array.array("i").itemsize
#: Room for the most descriptors one frame may carry, for ``recvmsg``.
ANCILLARY_SIZE = _ANCILLARY = socket.CMSG_SPACE(MAX_FDS * _FD_SIZE)
# Received descriptors are close-on-exec, so a worker's own subprocesses never
# inherit a connection or a listening socket by accident.
RECV_FLAGS = _RECV_FLAGS = int(getattr(socket, "MSG_CMSG_CLOEXEC", 0))
# Plain ints: an operator on the socket module's IntFlag members costs a Python call.
CTRUNC = _CTRUNC = int(socket.MSG_CTRUNC)
_SOL_SOCKET = int(socket.SOL_SOCKET)
_SCM_RIGHTS = int(socket.SCM_RIGHTS)


def recv_chunk(sock: socket.socket, bufsize: int) -> tuple[bytes, list[int]]:
    """Read one chunk and the descriptors that came with it (the channels read into a
    reused buffer with ``recvmsg_into`` instead: see channel.py).

    Raises :class:`ProtocolError` when the kernel had to drop descriptors because
    more arrived than one frame may carry (the rest are closed).
    """
    data, ancdata, flags, _addr = sock.recvmsg(bufsize, _ANCILLARY, _RECV_FLAGS)
    fds = fds_from_ancillary(ancdata)
    if flags & _CTRUNC:
        close_fds(fds)
        raise ProtocolError("descriptors were truncated: more than a frame may carry")
    return data, fds


def fds_from_ancillary(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """Extract every SCM_RIGHTS descriptor from ``recvmsg`` ancillary data."""
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == _SOL_SOCKET and kind == _SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - (len(data) % _FD_SIZE)])
            fds.extend(arr)
    return fds


def ancillary_for(fds: list[int]) -> list[tuple[int, int, bytes]]:
    """Ancillary data that sends ``fds`` with a ``sendmsg``."""
    if not fds:
        return []
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]


def close_sent(sock: socket.socket) -> None:
    """After sending ``sock`` without ``keep_open``: close it if it is a connected stream.

    A stand-in without ``close()`` (asyncio's ``TransportSocket``) stays open: its
    transport owns it.
    """
    close = getattr(sock, "close", None)
    if close is not None and is_connected_stream(sock):
        close()


def is_connected_stream(sock: socket.socket) -> bool:
    """Whether ``sock`` is a connected stream socket (which ``send()`` closes unless kept open)."""
    try:
        sock.getpeername()
    except OSError:
        return False
    return sock.type == socket.SOCK_STREAM
