"""The hand-off floor in Python, for bench/http.py: ``hop.c`` written as plain Python.

    python hop.py PORT WORKERS rr PYTHON WORKER_SCRIPT

The same primary as ``hop.c`` under ``rr`` (the shared policy needs no primary, so the
C floor's ``floor-none`` is the base for both): it listens on 127.0.0.1:PORT, starts
WORKERS copies of ``PYTHON WORKER_SCRIPT FD rr``, and for each connection does
``accept4``, one ``sendmsg`` with the descriptor to the next worker in turn and
``close``, from a bare ``epoll`` loop under ``SCHED_BATCH``. No window, no
acknowledgements, no busy or lagging worker passed over, no hold: a worker that dies
loses what was sent to it.

Set beside ``floor-rr`` (C) and ``pyc-aio-rr`` (pycluster, same workers' handler), it
splits what pycluster's round robin costs into what Python costs and what the
guarantees cost.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import subprocess
import sys
from typing import NoReturn

_FD = struct.Struct("i").pack
_MESSAGE = [b"C"]  # one byte per hand-off, as pycluster's


def _serve(port: int, workers: int, python: str, script: str) -> NoReturn:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(511)
    listener.setblocking(False)
    ends: list[socket.socket] = []
    children: list[subprocess.Popen[bytes]] = []
    for _ in range(workers):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fd = theirs.fileno()
        children.append(subprocess.Popen([python, script, str(fd), "rr"], pass_fds=[fd]))
        theirs.close()
        ends.append(ours)

    def stop(signum: int, _frame: object) -> None:
        # The benchmark signals every process itself; this covers a signal to us alone.
        for child in children:
            child.terminate()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    poller = select.epoll()
    poller.register(listener.fileno(), select.EPOLLIN)
    accept = listener._accept  # type: ignore[attr-defined]
    level, kind = socket.SOL_SOCKET, socket.SCM_RIGHTS
    turn = 0
    while True:
        poller.poll()
        while True:
            try:
                conn, _addr = accept()
            except BlockingIOError:
                break
            ends[turn].sendmsg(_MESSAGE, [(level, kind, _FD(conn))])
            turn = (turn + 1) % workers
            os.close(conn)


def main() -> None:
    """Parse the arguments ``hop.c`` takes, and serve until signalled."""
    if len(sys.argv) != 6 or sys.argv[3] != "rr":
        sys.exit(f"usage: {sys.argv[0]} PORT WORKERS rr PYTHON WORKER_SCRIPT")
    _serve(int(sys.argv[1]), int(sys.argv[2]), sys.argv[4], sys.argv[5])


if __name__ == "__main__":
    main()
