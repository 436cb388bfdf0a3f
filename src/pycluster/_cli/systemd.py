"""systemd integration: readiness notifications and socket activation, by hand.

* ``sd_notify``: a datagram to ``$NOTIFY_SOCKET`` (a leading ``@`` means Linux's
  abstract namespace). The primary says ``READY=1`` once every worker listens,
  ``RELOADING=1`` (with ``MONOTONIC_USEC``, as ``Type=notify-reload`` wants) while a
  reload runs, ``STOPPING=1`` when it shuts down, and ``WATCHDOG=1`` at half the
  watchdog period when the unit sets ``WatchdogSec=``.
* Socket activation: ``LISTEN_PID`` / ``LISTEN_FDS`` give the primary listening sockets
  from descriptor 3 on; they become ``fd://3``, ... binds, shared with the workers.

The variables are removed from the environment once read, so workers and their
children don't take them as their own.
"""

from __future__ import annotations

import os
import socket
import time

SD_LISTEN_FDS_START = 3


#: Seconds a state change (READY, RELOADING, STOPPING) may wait for room in the queue.
NOTIFY_WAIT = 0.5


class Notifier:
    """Sends state changes to the service manager, if one asked for them."""

    def __init__(self) -> None:
        address = os.environ.pop("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if address.startswith("@"):
            self.address = "\0" + address[1:]
        elif address.startswith("/"):
            self.address = address
        self.watchdog: float | None = None
        usec = os.environ.pop("WATCHDOG_USEC", "")
        pid = os.environ.pop("WATCHDOG_PID", "")
        if usec.isdigit() and (not pid or pid == str(os.getpid())):
            self.watchdog = int(usec) / 1e6

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens."""
        return self.address is not None

    def notify(self, *lines: str, wait: float = NOTIFY_WAIT) -> None:
        """Send ``lines`` (``READY=1``, ``STATUS=...``) as one datagram; errors are ignored.

        The primary's loop never waits long on the manager: a full queue (a manager
        that does not read) costs at most ``wait`` seconds, and a watchdog ping none.
        """
        if self.address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(wait)
                sock.connect(self.address)
                sock.sendall("\n".join(lines).encode())
        except OSError:
            pass  # the manager went away or does not read: nothing to tell

    def ready(self, status: str) -> None:
        """The cluster serves."""
        self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def reloading(self) -> None:
        """A rolling reload starts."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def stopping(self) -> None:
        """A graceful shutdown starts."""
        self.notify("STOPPING=1", "STATUS=stopping")


def listen_fds() -> list[int]:
    """Descriptors passed by socket activation (empty when not activated)."""
    pid = os.environ.pop("LISTEN_PID", "")
    count = os.environ.pop("LISTEN_FDS", "")
    os.environ.pop("LISTEN_FDNAMES", None)
    if pid != str(os.getpid()) or not count.isdigit():
        return []
    fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)))
    for fd in fds:
        os.set_inheritable(fd, False)  # the primary shares them; workers get copies on request
    return fds
