"""The round-robin handle: which worker gets the next connection.

The primary accepts every connection and offers it to a worker that has room. A
worker may hold a small *window* of hand-offs it has not taken yet (credits): a new
connection never waits for the previous one's round trip. Workers take turns: the
one that was handed the fewest connections goes next (ties: the one handed one
longest ago), so fresh connections split evenly, and a burst of long-lived
(keep-alive) connections too: when connections arrive after a quiet spell (new
clients opening their connections at once) and the worker whose turn it is has a
full window, the queue *holds* for it a moment (``hold``, a few milliseconds) rather
than give its turn away to whichever worker answers first. Under a steady stream of
connections the queue does not hold: a worker with room takes the connection, since
waiting for a full one would idle the other (strict turns cost 10-20 % of the
``Connection: close`` throughput on 2 cores), and the made-up turns below keep the
split even. What a burst is: :mod:`pycluster._scheduling.bursts`. A worker that has
not taken its oldest hand-off within that moment is *lagging* and loses its turns
while another worker keeps up, so a stuck worker is not flooded; the turns it lost
are made up once it keeps up again (it goes first while it has room), but never
more than ``MAKE_UP`` of them, so a worker that was stuck for a minute does not then
take every new connection, and a quiet spell starts every worker even again, so an
old stall does not skew how the next burst of clients is placed. A worker whose
serving loop is occupied (``is_busy``) is passed over while another has room, or is
about to have it. A connection that a worker never took (it closed its server, or
died) goes back to its place in the queue, so no connection accepted by the primary
is lost while any worker serves the port.
Connections leave the queue in the order they were accepted, refused ones included:
a connection that comes back takes its old place, ahead of every one accepted after
it. A worker takes its hand-offs in the order they were sent, so each
acknowledgement settles its oldest one.

Pure state in, hand-offs out: every method returns the ``(worker, connection)``
pairs the caller must now send. Time comes from ``clock``; while the queue holds for
a worker, :attr:`RoundRobinHandle.deadline` says when the caller must call
:meth:`~RoundRobinHandle.redistribute` if nothing else happened meanwhile.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from pycluster._scheduling.bursts import BURST_SPAN, QUIET_SPELL

W = TypeVar("W", bound=Hashable)
C = TypeVar("C")
Handoff = tuple[W, C]
# Subtracted from a newcomer's place in the turns, so that it goes before the others.
_NEWCOMER = 1 << 62
#: Hand-offs a worker may hold before taking any (``cluster.setup_primary(handoff_window=)``).
DEFAULT_WINDOW = 8
#: Seconds the queue holds for a worker whose turn it is and whose window is full; a
#: worker that took none of its hand-offs for that long is lagging. An idle serving
#: loop answers within a millisecond, but on a loaded machine (more runnable processes
#: than cores: workers, the primary and a load generator on 2 cores) a worker may wait
#: a few scheduler slices (3-6 ms each) to run; 2 ms lost turns there (8/42 splits of
#: 50 keep-alive connections), 10 ms kept them (25/25 in every run).
DEFAULT_HOLD = 0.010
#: Turns a lagging worker lost that are made up once it keeps up, at most (or the
#: window, if larger). On two CPUs shared with the client, one stall of a worker
#: (13 ms) cost it 52 turns of a stream of new connections: made up only a window's
#: worth (8), 2,000 connections split 1,052/948.
MAKE_UP = 64


class RoundRobinHandle(Generic[W, C]):
    """Round-robin state of one shared server: members, windows, queue, hand-offs."""

    def __init__(
        self,
        is_busy: Callable[[W], bool] | None = None,
        window: int = DEFAULT_WINDOW,
        hold: float = DEFAULT_HOLD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window < 1:
            raise ValueError(f"the hand-off window must be at least 1, not {window}")
        self.window = window
        self.make_up = max(window, MAKE_UP)
        self.hold = hold
        self._clock_fn = clock
        #: When the caller must call :meth:`redistribute` (the queue holds for a worker).
        self.deadline: float | None = None
        self._members: set[W] = set()
        # Each connection carries its acceptance number, so one that comes back
        # from a worker can be put back in its place rather than merely at the front.
        self._seq = 0
        # In flight: (acceptance number, connection, when it was handed over).
        self._inflight: dict[W, deque[tuple[int, C, float]]] = {}
        self._queue: deque[tuple[int, C]] = deque()
        # When each member was last handed a connection: ties go to the longest ago.
        self._since: dict[W, int] = {}
        self._clock = 0
        # Connections handed to each member since the last quiet spell, counted from at
        # most ``make_up`` below the most handed: the turns a worker lost are made up,
        # but only that many.
        self._handed: dict[W, int] = {}
        self._top = 0
        # A worker whose serving loop is occupied is passed over while another has room.
        self._is_busy = is_busy
        # When the last connection was pushed, and when the current burst began.
        self._pushed_at = float("-inf")
        self._burst_at = float("-inf")

    @property
    def members(self) -> frozenset[W]:
        """Workers that take connections from this handle."""
        return frozenset(self._members)

    @property
    def queued(self) -> int:
        """Connections waiting for a worker with room."""
        return len(self._queue)

    def inflight(self, worker: W) -> C | None:
        """The oldest connection handed to ``worker`` that it has not taken, if any."""
        sent = self._inflight.get(worker)
        return sent[0][1] if sent else None

    def outstanding(self, worker: W) -> list[C]:
        """Every connection handed to ``worker`` and not yet taken, oldest first."""
        return [conn for _, conn, _ in self._inflight.get(worker, ())]

    def add(self, worker: W) -> list[Handoff[W, C]]:
        """A worker starts serving this handle."""
        if worker not in self._members:
            self._members.add(worker)
            # A newcomer's turn comes before every worker that was handed a connection
            # (newcomers among themselves in the order they came).
            self._clock += 1
            self._since[worker] = self._clock - _NEWCOMER
        return self._distribute()

    def remove(self, worker: W) -> list[Handoff[W, C]]:
        """No new connection goes to ``worker``; those in flight wait for its answer."""
        self._members.discard(worker)
        self._since.pop(worker, None)
        self._handed.pop(worker, None)
        return self._distribute()  # connections held for it may go to a busy worker now

    def push(self, conn: C) -> list[Handoff[W, C]]:
        """A connection was accepted."""
        return self.push_all([conn])

    def push_all(self, conns: list[C]) -> list[Handoff[W, C]]:
        """Connections accepted together (one wake-up of the listener), in order.

        The same as pushing them one by one, for one look at the workers instead of
        one per connection.
        """
        if not conns:
            return []
        queue = self._queue
        seq = self._seq
        for conn in conns:
            queue.append((seq, conn))
            seq += 1
        self._seq = seq
        now = self._clock_fn()
        if now - self._pushed_at > QUIET_SPELL:
            self._burst_at = now
            # New clients after a quiet spell: every worker starts even.
            self._handed.clear()
            self._top = 0
        self._pushed_at = now
        return self._distribute(now)

    def accepted(self, worker: W) -> tuple[C | None, list[Handoff[W, C]]]:
        """``worker`` took its oldest hand-off: return it (the caller closes its copy)."""
        conns, more = self.accepted_many(worker, 1)
        return (conns[0] if conns else None), more

    def accepted_many(self, worker: W, count: int) -> tuple[list[C], list[Handoff[W, C]]]:
        """``worker`` took its ``count`` oldest hand-offs (one answer to several):
        return them, oldest first (the caller closes its copies), and what may go out
        now, for one look at the workers instead of one per connection.
        """
        sent = self._inflight.get(worker)
        if not sent:
            return [], []
        conns = [sent.popleft()[1] for _ in range(min(count, len(sent)))]
        if not sent:
            del self._inflight[worker]
        return conns, self._distribute()

    def returned(self, worker: W) -> list[Handoff[W, C]]:
        """``worker`` gave back its oldest hand-off untaken: it goes back to its place."""
        sent = self._inflight.get(worker)
        if not sent:
            return []
        self._requeue(sent.popleft())
        if not sent:
            del self._inflight[worker]
        if worker in self._members:
            self._touch(worker)  # at equal load, another worker goes first
        return self._distribute()

    def refused(self, worker: W) -> list[Handoff[W, C]]:
        """``worker`` is gone without taking what it held: offer that to another one."""
        self._members.discard(worker)
        self._since.pop(worker, None)
        self._handed.pop(worker, None)
        for entry in self._inflight.pop(worker, ()):
            self._requeue(entry)
        return self._distribute()

    def drain(self) -> list[C]:
        """Take every queued connection (the last worker left: the caller closes them)."""
        conns = [conn for _, conn in self._queue]
        self._queue.clear()
        self.deadline = None
        return conns

    def redistribute(self) -> list[Handoff[W, C]]:
        """Hand queued connections out again (a worker's busy state may have changed)."""
        return self._distribute()

    def _touch(self, worker: W) -> None:
        self._clock += 1
        self._since[worker] = self._clock

    def _requeue(self, entry: tuple[int, C, float]) -> None:
        # The queue is in acceptance order; a refused connection is older than
        # most of it, so the walk from the left is short.
        index = 0
        for seq, _ in self._queue:
            if seq > entry[0]:
                break
            index += 1
        self._queue.insert(index, (entry[0], entry[1]))

    def _distribute(self, now: float | None = None) -> list[Handoff[W, C]]:
        out: list[Handoff[W, C]] = []
        self.deadline = None
        queue = self._queue
        if not queue:
            return out
        if now is None:
            now = self._clock_fn()
        inflight = self._inflight
        window = self.window
        members = self._members
        handed = self._handed
        # Which workers are busy, asked once per call rather than per connection and
        # worker (each question reads the worker's status page): a snapshot, as any
        # answer is.
        busy: frozenset[W] | None = None
        while queue:
            for member in members:
                sent = inflight.get(member)
                if sent is None or len(sent) < window:
                    break
            else:
                # Every window is full (a loaded server's usual state): nobody can take
                # one until a worker answers, which distributes again; no hold either.
                break
            if busy is None:
                is_busy = self._is_busy
                busy = (
                    frozenset(m for m in members if is_busy(m))
                    if is_busy is not None
                    else frozenset()
                )
            worker = self._pick(now, busy)
            if worker is None:
                break
            seq, conn = queue.popleft()
            sent = inflight.get(worker)
            if sent is None:
                inflight[worker] = sent = deque()
            sent.append((seq, conn, now))
            self._touch(worker)
            top = self._top
            floor = top - self.make_up
            # A worker new to the count (a newcomer, or anyone after a quiet spell)
            # starts a window below the top, as it is keyed in _pick.
            count = handed.get(worker, top - window)
            handed[worker] = count = (count if count > floor else floor) + 1
            if count > top:
                self._top = count
            out.append((worker, conn))
        return out

    def _pick(self, now: float, busy: frozenset[W]) -> W | None:
        inflight = self._inflight
        since = self._since
        handed = self._handed
        window = self.window
        floor = self._top - self.make_up
        fresh = self._top - window  # a worker not counted yet (see _distribute)
        stale = now - self.hold
        turn: W | None = None  # keeps up, not busy: whose turn it is
        turn_key = (0, 0)
        roomy: W | None = None  # keeps up, not busy, with room: who goes under a stream
        roomy_key = (0, 0)
        slow: W | None = None  # lagging, not busy, with room
        slow_key = (0, 0)
        fallback: W | None = None  # busy, with room
        fallback_key = (0, 0)
        ready_soon = False  # lagging, not busy, window full: has room once it answers
        for worker in self._members:
            sent = inflight.get(worker)
            count = handed.get(worker, fresh)
            key = (count if count > floor else floor, since.get(worker, 0))
            if worker in busy:
                if (not sent or len(sent) < window) and (fallback is None or key < fallback_key):
                    fallback, fallback_key = worker, key
                continue
            if sent and sent[0][2] < stale:
                if len(sent) >= window:
                    ready_soon = True
                elif slow is None or key < slow_key:
                    slow, slow_key = worker, key
                continue
            if turn is None or key < turn_key:
                turn, turn_key = worker, key
            if (not sent or len(sent) < window) and (roomy is None or key < roomy_key):
                roomy, roomy_key = worker, key
        if turn is not None:
            sent = self._inflight.get(turn)
            if not sent or len(sent) < window:
                return turn
            # Its window is full, but it keeps up.
            burst_ends = self._burst_at + BURST_SPAN
            if now >= burst_ends and roomy is not None:
                return roomy  # a steady stream: another worker with room goes on
            # Clients arriving at once (or no other worker keeps up with room): hold
            # its turn for it a moment, until it answers, the hold ends, or the burst.
            deadline = sent[0][2] + self.hold
            self.deadline = min(deadline, burst_ends) if now < burst_ends else deadline
            return None
        if slow is not None:
            return slow  # every worker lags (an overloaded machine): turns among them
        # A worker that lags with a full window will have room as soon as it takes a
        # hand-off: wait for it rather than queue behind a long request.
        if ready_soon:
            return None
        return fallback
