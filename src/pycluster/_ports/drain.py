"""How many connections a worker still has open on an address, from the kernel's tables."""

from __future__ import annotations

import os
import socket
from typing import Any


def socket_inodes() -> set[str]:
    inodes: set[str] = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    return inodes


def connections_on(family: int, sockname: Any) -> int:
    """Open connections of this process whose local address is ``sockname``.

    Read from the kernel's tables, so it sees every connection however the program
    handles it (a C accept loop, a WebSocket upgrade, a protocol with ``__slots__``).
    """
    ours = socket_inodes()
    if not ours:
        return 0
    count = 0
    if family == socket.AF_UNIX:
        if isinstance(sockname, bytes):
            sockname = os.fsdecode(sockname)
        if isinstance(sockname, str) and sockname.startswith("\0"):
            sockname = "@" + sockname[1:]  # how the table writes an abstract name
        try:
            with open("/proc/net/unix") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            return 0
        for line in lines:
            fields = line.split(None, 7)
            # Flags 00010000 is __SO_ACCEPTCONN: a listening socket, not a connection.
            if (
                len(fields) == 8
                and fields[6] in ours
                and fields[7] == sockname
                and not int(fields[3], 16) & 0x10000
            ):
                count += 1
        return count
    port = f":{int(sockname[1]):04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            if port not in line:
                continue  # most lines, on a busy host: only split the candidates
            fields = line.split()
            # State 0A is LISTEN; 07 (CLOSE) is a socket no longer connected.
            if (
                len(fields) > 9
                and fields[9] in ours
                and fields[1].endswith(port)
                and fields[3] not in ("0A", "07")
            ):
                count += 1
    return count
