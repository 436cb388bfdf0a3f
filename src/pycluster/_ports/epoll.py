"""The program's epoll registrations of a listener's descriptor, moved when its file changes.

An epoll instance keys each registration by descriptor number *and* open file, and
drops it only when that file is released. When pycluster puts another file behind a
program's listening descriptor (a retirement's quiet socket), the registration would
stay on the old file: a shared listening socket lives on in the primary and the other
workers, so the program's loop would keep waking for connections it can no longer
take. These helpers find the registrations in ``/proc/self/fdinfo`` and move them
(or, for a descriptor being closed, drop them, as the release of the file would).

A move is not atomic: between the removal and the new registration, the program's
own ``epoll_ctl`` on that descriptor fails with ``ENOENT``. A disconnect therefore
stops the program only once the move is done (see ``listener.wait_retired``).
"""

from __future__ import annotations

import os
import select

from pycluster._ports.fdtable import descriptors

#: A registration: (epoll descriptor, its event mask).
Registration = tuple[int, int]


def _epoll_fds() -> list[int]:
    return descriptors("anon_inode:[eventpoll]".__eq__)


def registrations(fd: int, ino: int) -> list[Registration]:
    """Every epoll instance of this process that watches ``fd`` as the file ``ino``.

    Only registrations whose data is the descriptor itself (what ``select.epoll``,
    ``selectors``, asyncio and libuv register) are listed: they can be added back.
    """
    found: list[Registration] = []
    for epfd in _epoll_fds():
        try:
            with open(f"/proc/self/fdinfo/{epfd}") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            # "tfd: N events: HEX data: HEX pos:P ino:HEX sdev:HEX"
            fields = line.split()
            if len(fields) < 6 or fields[0] != "tfd:" or int(fields[1]) != fd:
                continue
            target = next((f[4:] for f in fields if f.startswith("ino:")), None)
            data = int(fields[5], 16) & 0xFFFFFFFF
            if target is not None and int(target, 16) == ino and data == fd:
                found.append((epfd, int(fields[3], 16)))
    return found


def _ctl(epfd: int, fd: int, events: int | None) -> bool:
    """Unregister ``fd`` (``events`` None) or register it; whether the change was made."""
    # A copy of the epoll descriptor names the same instance; closing it leaves the
    # program's own descriptor alone.
    poller = select.epoll.fromfd(os.dup(epfd))
    try:
        if events is None:
            poller.unregister(fd)
        else:
            poller.register(fd, events)
    except OSError:
        return False  # the program changed it meanwhile: its own change stands
    finally:
        poller.close()
    return True


def drop(fd: int, ino: int) -> list[Registration]:
    """Remove ``fd``'s registrations as the file ``ino``; returns what was removed.

    A registration the program removed itself after it was listed is not in the
    result: restoring it would watch a descriptor the program no longer watches.
    """
    return [(epfd, events) for epfd, events in registrations(fd, ino) if _ctl(epfd, fd, None)]


def restore(fd: int, found: list[Registration]) -> None:
    """Register ``fd`` again (now another file) where it was registered before."""
    for epfd, events in found:
        _ctl(epfd, fd, events)
