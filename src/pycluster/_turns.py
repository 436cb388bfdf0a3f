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

import time
from collections.abc import Callable

from pycluster._pages import WordPage
from pycluster._scheduling.bursts import BURST_SPAN, QUIET_SPELL

SIZE = 4096
_HEADER = 64
_SLOT = 32
SLOTS = (SIZE - _HEADER) // _SLOT
#: Word (8-byte) indices of the header's fields.
_LAST, _BURST, _BEGAN, _TOP = 0, 1, 2, 3
#: Longest a worker that is ahead waits, in one burst, for one that is behind.
TURN_WAIT = 0.02
#: One step off the CPU while waiting (the kernel rounds a sleep up to ~50 µs).
STEP = 0.0001


def _word(slot: int) -> int:
    """The word index of ``slot`` (its in-use flag; its burst and count follow)."""
    return (_HEADER + _SLOT * slot) // 8


class AcceptTurns:
    """The shared page of one shared socket, seen by the primary or by one worker."""

    def __init__(
        self,
        fd: int,
        slot: int = -1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        # Whole-word stores: a last accept half written read as 0.0, a quiet spell of
        # hours, and began a new burst of turn-taking every half second or so under a
        # steady stream of connections.
        self._page = WordPage(fd, SIZE)
        self._f64 = self._page.f64
        self._u64 = self._page.u64
        self.slot = slot
        self._clock = clock
        self._sleep = sleep
        # The burst in which this worker stopped waiting for each slot that fell behind.
        self._gave_up: dict[int, int] = {}

    # -- primary ------------------------------------------------------------------------
    @classmethod
    def create(cls) -> tuple[AcceptTurns, int]:
        """A new page (primary): the page and its descriptor, to pass to the workers."""
        fd = WordPage.new_fd("pycluster-turns", SIZE)
        return cls(fd), fd

    def join(self) -> int:
        """Give a new member a free slot (-1 if all are taken: it then never waits)."""
        for i in range(SLOTS):
            at = _word(i)
            if not self._u64[at]:
                self._u64[at + 1] = 0
                self._u64[at + 2] = 0
                self._u64[at] = 1
                if i >= self._u64[_TOP]:
                    self._u64[_TOP] = i + 1
                return i
        return -1

    def leave(self, slot: int) -> None:
        """A member left: nobody waits for its slot any more."""
        if 0 <= slot < SLOTS:
            self._u64[_word(slot)] = 0

    def close(self) -> None:
        """Unmap the page."""
        self._page.close()

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
        now = self._clock()
        burst = self._u64[_BURST]
        if now - self._f64[_LAST] > QUIET_SPELL:
            burst += 1  # the first connection after a quiet spell: a new burst
            self._f64[_BEGAN] = now
            self._u64[_BURST] = burst
            self._f64[_LAST] = now
        if now - self._f64[_BEGAN] >= BURST_SPAN:
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
        burst = self._u64[_BURST]
        at = _word(self.slot)
        count = self._count(self.slot, burst) + 1
        self._u64[at + 2] = count
        self._u64[at + 1] = burst
        self._f64[_LAST] = self._clock()

    def _count(self, slot: int, burst: int) -> int:
        at = _word(slot)
        if self._u64[at + 1] != burst:
            return 0
        return int(self._u64[at + 2])

    def _behind(self, mine: int, burst: int) -> int:
        """A member slot with fewer accepts than ``mine`` in this burst, or -1."""
        for i in range(min(SLOTS, self._u64[_TOP])):
            if i == self.slot or not self._u64[_word(i)]:
                continue
            if self._gave_up.get(i) == burst:
                continue
            if self._count(i, burst) < mine:
                return i
        return -1
