"""A worker of the hand-off floor (``bench/floor/hop.c``), for bench/http.py.

Usage (by ``hop`` itself): ``python floor_worker.py FD rr|none``. Plain asyncio, no
pycluster: the same handler as ``pyc_asyncio.py`` (``_asyncio_hello``), fed under
``rr`` with the descriptors that arrive on the hand-off socket ``FD`` (each one to
``connect_accepted_socket``, as pycluster's own worker does), under ``none`` by
``asyncio.start_server`` on the listening socket ``FD`` that every worker shares.
"""

from __future__ import annotations

import array
import asyncio
import os
import signal
import socket
import sys

import _asyncio_hello
from _asyncio_hello import handle
from _counts import announce_ready, write_count

_FD_SIZE = array.array("i").itemsize


def _record(*_: object) -> None:
    """SIGTERM from the benchmark: record this worker's count and leave at once."""
    write_count(f"floor-{os.getpid()}", _asyncio_hello.served, _asyncio_hello.fresh)
    os._exit(0)


def _handed_over(loop: asyncio.AbstractEventLoop, handoff: socket.socket) -> None:
    """Start a transport for every descriptor waiting on the hand-off socket."""

    def protocol() -> asyncio.StreamReaderProtocol:
        return asyncio.StreamReaderProtocol(asyncio.StreamReader(), handle)

    while True:
        try:
            data, ancillary, _flags, _addr = handoff.recvmsg(1, socket.CMSG_SPACE(_FD_SIZE))
        except BlockingIOError:
            return
        if not data and not ancillary:
            _record()  # the primary is gone
            return
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                for fd in array.array("i", payload[: len(payload) - len(payload) % _FD_SIZE]):
                    conn = socket.socket(fileno=fd)
                    loop.create_task(loop.connect_accepted_socket(protocol, conn))


async def _serve(fd: int, policy: str) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    if policy == "none":
        server = await asyncio.start_server(handle, sock=sock)
        announce_ready("floor worker")
        await server.serve_forever()
        return
    loop.add_reader(fd, _handed_over, loop, sock)
    announce_ready("floor worker")
    await asyncio.Event().wait()


def main() -> None:
    """Serve until the benchmark stops this worker."""
    fd, policy = int(sys.argv[1]), sys.argv[2]
    signal.signal(signal.SIGTERM, _record)
    asyncio.run(_serve(fd, policy))


if __name__ == "__main__":
    main()
