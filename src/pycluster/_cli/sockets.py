"""Plain sockets of an unchanged program, made cluster-aware (``pycluster run``).

A stream socket the program binds (``AF_INET``, ``AF_INET6``, ``AF_UNIX``) is bound
the cluster's way instead: the program keeps its own socket object, and behind its
descriptor is the cluster's listener (see :mod:`pycluster._ports`), so tornado,
werkzeug, waitress and any ``bind()`` + ``listen()`` + ``accept()`` loop run unchanged.
Errors of the primary's bind (``EADDRINUSE``) surface at the program's ``bind()``,
where it expects them. A socket that binds and then connects (a client choosing its
source address) gets its own socket back at ``connect()``.

``--bind`` addresses replace the addresses of the program's first servers, in order.
``os.unlink`` keeps a Unix socket where a server listens: another worker's program
removing "its stale socket" would otherwise cut the cluster off.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import sys
import threading
from typing import Any

from pycluster import _ports as net
from pycluster._cli import binds

log = logging.getLogger("pycluster.cli")

STREAM_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)

_orig_unlink = os.unlink
_overrides: list[binds.Bind] = []
_override_lock = threading.Lock()


def called_by_pycluster() -> bool:
    """Whether pycluster's own code (an exclusive or SO_REUSEPORT server) is calling."""
    frame = sys._getframe(2)
    for _ in range(16):
        if frame is None:
            return False
        name = str(frame.f_globals.get("__name__", ""))
        if name.startswith("pycluster.") and not name.startswith("pycluster._cli"):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def next_override() -> binds.Bind | None:
    """The next ``--bind`` address not yet given to a server, if any."""
    with _override_lock:
        return _overrides.pop(0) if _overrides else None


def _bind_filter(sock: socket.socket, address: Any) -> dict[str, Any] | None:
    """How to share a socket the program binds, or ``None`` to bind it as it asked."""
    if sock.type != socket.SOCK_STREAM or sock.family not in STREAM_FAMILIES:
        return None
    options: dict[str, Any] = {}
    override = next_override()
    if override is not None:
        where, extra = binds.create_args(override)
        if "fd" in extra:
            options["fd"] = extra["fd"]
        elif extra.get("family") == sock.family:
            options["address"] = where
        else:
            log.warning(
                "--bind %s does not fit a socket of family %s: serving %r instead",
                binds.describe(override),
                socket.AddressFamily(sock.family).name,
                address,
            )
    return options


def _unlink(path: Any, *, dir_fd: int | None = None) -> None:
    """``os.unlink`` that keeps a Unix socket a server listens on (another worker's)."""
    if dir_fd is None and _listening_unix_socket(path):
        log.debug("kept %s: the cluster listens there", path)
        return
    _orig_unlink(path, dir_fd=dir_fd)


def _listening_unix_socket(path: Any) -> bool:
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return False
        with open("/proc/net/unix") as f:
            table = f.read().splitlines()[1:]
    except (OSError, TypeError, ValueError):
        return False
    wanted = os.path.abspath(os.fsdecode(path))
    # The primary may have bound a path relative to its own directory.
    try:
        primary_cwd = os.readlink(f"/proc/{os.getppid()}/cwd")
    except OSError:
        primary_cwd = os.getcwd()
    for line in table:
        fields = line.split(None, 7)
        # Flags 00010000 is __SO_ACCEPTCONN: the socket listens.
        if len(fields) == 8 and int(fields[3], 16) & 0x10000:
            bound = fields[7]
            if os.path.normpath(os.path.join(primary_cwd, bound)) == wanted:
                return True
    return False


def install(bind_list: list[binds.Bind]) -> None:
    """Share the stream sockets this worker's program binds; keep listening Unix sockets."""
    _overrides[:] = bind_list
    net.set_bind_filter(_bind_filter)
    os.unlink = os.remove = _unlink
