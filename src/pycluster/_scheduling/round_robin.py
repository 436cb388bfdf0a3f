"""The round-robin handle: which worker gets the next connection.

The primary accepts every connection and offers it to a worker that has room. A
worker may hold a small *window* of hand-offs it has not taken yet (credits): a new
connection never waits for the previous one's round trip, yet no worker is flooded
while another has room, because the next connection goes to the worker with the
fewest hand-offs in flight (ties: the one that was handed a connection longest ago).
A worker whose serving loop is busy is passed over while another worker has room,
or is about to have it. A connection that a worker never took (it closed its server,
or died) goes back to its place in the queue, so no connection accepted by the
primary is lost while any worker serves the port. Connections leave the queue in the
order they were accepted, refused ones included: a connection that comes back takes
its old place, ahead of every one accepted after it. A worker takes its hand-offs in
the order they were sent, so each acknowledgement settles its oldest one.

Pure state in, hand-offs out: every method returns the ``(worker, connection)``
pairs the caller must now send.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

W = TypeVar("W", bound=Hashable)
C = TypeVar("C")
Handoff = tuple[W, C]
#: Hand-offs a worker may hold before taking any (``cluster.setup_primary(handoff_window=)``).
DEFAULT_WINDOW = 8


class RoundRobinHandle(Generic[W, C]):
    """Round-robin state of one shared server: members, windows, queue, hand-offs."""

    def __init__(
        self, is_busy: Callable[[W], bool] | None = None, window: int = DEFAULT_WINDOW
    ) -> None:
        if window < 1:
            raise ValueError(f"the hand-off window must be at least 1, not {window}")
        self.window = window
        self._members: set[W] = set()
        # Each connection carries its acceptance number, so one that comes back
        # from a worker can be put back in its place rather than merely at the front.
        self._seq = 0
        self._inflight: dict[W, deque[tuple[int, C]]] = {}
        self._queue: deque[tuple[int, C]] = deque()
        # When each member was last handed a connection: ties go to the longest ago.
        self._since: dict[W, int] = {}
        self._clock = 0
        # A worker whose serving loop is occupied is passed over while another has room.
        self._is_busy = is_busy

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
        return [conn for _, conn in self._inflight.get(worker, ())]

    def add(self, worker: W) -> list[Handoff[W, C]]:
        """A worker starts serving this handle."""
        if worker not in self._members:
            self._members.add(worker)
            self._touch(worker)
        return self._distribute()

    def remove(self, worker: W) -> list[Handoff[W, C]]:
        """No new connection goes to ``worker``; those in flight wait for its answer."""
        self._members.discard(worker)
        self._since.pop(worker, None)
        return self._distribute()  # connections held for it may go to a busy worker now

    def push(self, conn: C) -> list[Handoff[W, C]]:
        """A connection was accepted."""
        self._queue.append((self._seq, conn))
        self._seq += 1
        return self._distribute()

    def accepted(self, worker: W) -> tuple[C | None, list[Handoff[W, C]]]:
        """``worker`` took its oldest hand-off: return it (the caller closes its copy)."""
        sent = self._inflight.get(worker)
        if not sent:
            return None, []
        _, conn = sent.popleft()
        if not sent:
            del self._inflight[worker]
        return conn, self._distribute()

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
        for entry in self._inflight.pop(worker, ()):
            self._requeue(entry)
        return self._distribute()

    def drain(self) -> list[C]:
        """Take every queued connection (the last worker left: the caller closes them)."""
        conns = [conn for _, conn in self._queue]
        self._queue.clear()
        return conns

    def redistribute(self) -> list[Handoff[W, C]]:
        """Hand queued connections out again (a worker's busy state may have changed)."""
        return self._distribute()

    def _touch(self, worker: W) -> None:
        self._clock += 1
        self._since[worker] = self._clock

    def _requeue(self, entry: tuple[int, C]) -> None:
        # The queue is in acceptance order; a refused connection is older than
        # most of it, so the walk from the left is short.
        index = 0
        for seq, _ in self._queue:
            if seq > entry[0]:
                break
            index += 1
        self._queue.insert(index, entry)

    def _distribute(self) -> list[Handoff[W, C]]:
        out: list[Handoff[W, C]] = []
        while self._queue:
            worker = self._pick()
            if worker is None:
                break
            entry = self._queue.popleft()
            self._inflight.setdefault(worker, deque()).append(entry)
            self._touch(worker)
            out.append((worker, entry[1]))
        return out

    def _load(self, worker: W) -> int:
        sent = self._inflight.get(worker)
        return len(sent) if sent else 0

    def _pick(self) -> W | None:
        is_busy = self._is_busy
        best: W | None = None
        best_key: tuple[int, int] | None = None
        best_busy: W | None = None
        best_busy_key: tuple[int, int] | None = None
        ready_soon = False  # a member that is not busy, whose window is full
        for worker in self._members:
            load = self._load(worker)
            busy = is_busy is not None and is_busy(worker)
            if load >= self.window:
                ready_soon = ready_soon or not busy
                continue
            # A worker with nothing in flight first (one that does not take its
            # hand-offs gets no more while another does), then turns.
            key = (min(load, 1), self._since.get(worker, 0))
            if busy:
                if best_busy_key is None or key < best_busy_key:
                    best_busy, best_busy_key = worker, key
            elif best_key is None or key < best_key:
                best, best_key = worker, key
        if best is not None:
            return best
        # Every worker with room is busy. One that is not busy will have room as soon
        # as it takes a hand-off: wait for it rather than queue behind a long request.
        if ready_soon:
            return None
        return best_busy
