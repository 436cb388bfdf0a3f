"""A page of memory the workers of one shared socket share: who took how much of a burst.

Under the shared policy every worker accepts from the same listening socket and the
kernel wakes them all; the one that happens to be on a CPU takes what waits. When
clients open many connections at once after a quiet spell (a pool of keep-alive
connections, a load balancer reconnecting), that decides for as long as the
connections live. So for a short while after such a quiet spell each worker counts
its accepts here, and one that is ahead of another worker steps off the CPU for a
moment before it accepts again, letting the worker behind (woken for the same
connections, but waiting for a CPU) take its share. A worker that does not catch up
within ``TURN_WAIT`` is not waited for again in that burst, so a stuck worker costs a
burst at most that long; under a steady stream nobody waits.

The primary creates the page with the server and gives each member a slot; members
write only their own slot and the header, with single aligned stores (no locks: two
workers that start a burst at once only make its count a little less exact).
Layout (native byte order)::

    header   0  double  last accept by any worker (time.monotonic(), system-wide)
             8  uint64  burst number
            16  double  when the burst began
            24  uint64  one past the highest slot given so far
    slot i at 64 + 32 * i:
            +0  uint64  1 while a member holds the slot
            +8  uint64  the burst number its count belongs to
           +16  uint64  connections it accepted in that burst
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from collections.abc import Callable

SIZE = 4096
_HEADER = 64
_SLOT = 32
SLOTS = (SIZE - _HEADER) // _SLOT
_F64 = struct.Struct("d")
_U64 = struct.Struct("Q")
#: Seconds without a connection after which new ones are a burst to be shared out ...
QUIET_SPELL = 0.05
#: ... for this long (long enough to cover a burst whose workers wait for a CPU).
FAIR_START = 0.25
#: Longest a worker that is ahead waits, in one burst, for one that is behind.
TURN_WAIT = 0.02
#: One step off the CPU while waiting (the kernel rounds a sleep up to ~50 µs).
STEP = 0.0001


class AcceptTurns:
    """The shared page of one shared socket, seen by the primary or by one worker."""

    def __init__(
        self,
        fd: int,
        slot: int = -1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._map = mmap.mmap(fd, SIZE)
        self.slot = slot
        self._clock = clock
        self._sleep = sleep
        # The burst in which this worker stopped waiting for each slot that fell behind.
        self._gave_up: dict[int, int] = {}

    # -- primary ------------------------------------------------------------------------
    @classmethod
    def create(cls) -> tuple[AcceptTurns, int]:
        """A new page (primary): the page and its descriptor, to pass to the workers."""
        fd = os.memfd_create("pycluster-turns", os.MFD_CLOEXEC)
        os.ftruncate(fd, SIZE)
        return cls(fd), fd

    def join(self) -> int:
        """Give a new member a free slot (-1 if all are taken: it then never waits)."""
        for i in range(SLOTS):
            at = _HEADER + _SLOT * i
            if not _U64.unpack_from(self._map, at)[0]:
                _U64.pack_into(self._map, at + 8, 0)
                _U64.pack_into(self._map, at + 16, 0)
                _U64.pack_into(self._map, at, 1)
                if i >= _U64.unpack_from(self._map, 24)[0]:
                    _U64.pack_into(self._map, 24, i + 1)
                return i
        return -1

    def leave(self, slot: int) -> None:
        """A member left: nobody waits for its slot any more."""
        if 0 <= slot < SLOTS:
            _U64.pack_into(self._map, _HEADER + _SLOT * slot, 0)

    def close(self) -> None:
        """Unmap the page."""
        try:
            self._map.close()
        except (BufferError, ValueError):
            pass

    # -- worker ---------------------------------------------------------------------------
    @classmethod
    def open_fd(
        cls,
        fd: int,
        slot: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> AcceptTurns:
        """Map the page the primary sent (the descriptor may be closed afterwards)."""
        return cls(fd, slot, clock, sleep)

    def wait_turn(self, pending: Callable[[], bool]) -> None:
        """Before an accept: early in a burst, step aside while ahead of a worker.

        Only while ``pending()`` (connections wait): once the queue is empty there is
        nothing to leave to the worker behind.
        """
        if not 0 <= self.slot < SLOTS:
            return
        m = self._map
        now = self._clock()
        burst = _U64.unpack_from(m, 8)[0]
        if now - _F64.unpack_from(m, 0)[0] > QUIET_SPELL:
            burst += 1  # the first connection after a quiet spell: a new burst
            _F64.pack_into(m, 16, now)
            _U64.pack_into(m, 8, burst)
            _F64.pack_into(m, 0, now)
        if now - _F64.unpack_from(m, 16)[0] >= FAIR_START:
            return
        mine = self._count(self.slot, burst)
        deadline = now + TURN_WAIT
        while True:
            behind = self._behind(mine, burst)
            if behind < 0 or not pending():
                return
            if self._clock() >= deadline:
                self._gave_up[behind] = burst  # it does not keep up: not waited for again
                return
            self._sleep(STEP)

    def took(self) -> None:
        """After an accept: count it in the current burst."""
        if not 0 <= self.slot < SLOTS:
            return
        m = self._map
        burst = _U64.unpack_from(m, 8)[0]
        at = _HEADER + _SLOT * self.slot
        count = self._count(self.slot, burst) + 1
        _U64.pack_into(m, at + 16, count)
        _U64.pack_into(m, at + 8, burst)
        _F64.pack_into(m, 0, self._clock())

    def _count(self, slot: int, burst: int) -> int:
        at = _HEADER + _SLOT * slot
        if _U64.unpack_from(self._map, at + 8)[0] != burst:
            return 0
        return int(_U64.unpack_from(self._map, at + 16)[0])

    def _behind(self, mine: int, burst: int) -> int:
        """A member slot with fewer accepts than ``mine`` in this burst, or -1."""
        m = self._map
        for i in range(min(SLOTS, _U64.unpack_from(m, 24)[0])):
            if i == self.slot or not _U64.unpack_from(m, _HEADER + _SLOT * i)[0]:
                continue
            if self._gave_up.get(i) == burst:
                continue
            if self._count(i, burst) < mine:
                return i
        return -1
