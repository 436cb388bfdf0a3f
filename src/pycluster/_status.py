"""A page of memory shared by the primary and one worker: heartbeat and counters.

The worker writes, the primary reads, with no message and no system call on the
hot path: a heartbeat is one store of the monotonic clock (system-wide on Linux, so
comparable across processes), a served connection one counter increment. Layout
(native byte order, 8-byte aligned fields, so each store is a single write)::

    offset 0   double  last heartbeat from the serving loop (time.monotonic())
    offset 8   uint64  connections this worker has accepted
    offset 16  uint64  1 while a request occupies a single-threaded serving loop
"""

from __future__ import annotations

import os
import time

from pycluster._pages import WordPage

SIZE = 64


class StatusPage:
    """One worker's shared status page."""

    def __init__(self, fd: int, owner: bool) -> None:
        self.fd = fd
        self._owner = owner
        # Whole-word stores: a heartbeat half written read as 0.0, a worker silent for
        # hours.
        self._page = WordPage(fd, SIZE)
        self._f64 = self._page.f64
        self._u64 = self._page.u64

    @classmethod
    def create(cls) -> StatusPage:
        """A new page, in the primary (its descriptor is passed to the worker)."""
        page = cls(WordPage.new_fd("pycluster-status", SIZE), owner=True)
        page.beat()
        return page

    @classmethod
    def open_fd(cls, fd: int) -> StatusPage:
        """Map the page whose descriptor the worker inherited."""
        os.set_inheritable(fd, False)
        return cls(fd, owner=False)

    def beat(self, at: float | None = None) -> None:
        """Record that the serving loop is alive now (or was last known free ``at``)."""
        self._f64[0] = time.monotonic() if at is None else at

    @property
    def last_beat(self) -> float:
        """When the serving loop last beat, on the monotonic clock."""
        return float(self._f64[0])

    def count_connection(self) -> None:
        """Add one accepted connection."""
        self._u64[1] += 1

    @property
    def connections(self) -> int:
        """Connections the worker has accepted so far."""
        return int(self._u64[1])

    def set_busy(self, busy: bool) -> None:
        """Say whether a request occupies the serving loop (round-robin skips busy workers)."""
        self._u64[2] = 1 if busy else 0

    @property
    def busy(self) -> bool:
        """Whether a request occupies the worker's serving loop."""
        return bool(self._u64[2])

    def close(self) -> None:
        """Unmap the page and close its descriptor."""
        self._page.close()
        try:
            os.close(self.fd)
        except OSError:
            pass
