"""The round-robin handle: which worker gets the next connection.

The primary accepts every connection and offers it to the next *free* worker. A
worker has at most one hand-off in flight: it is free again once it says it took
the connection (Node's "smarts to avoid overloading a worker"), and the worker that
has been free longest goes first, and one whose serving loop is busy is passed
over while another worker is, or is about to be, free. A connection that a worker never took (it closed
its server, or died) goes back to its place in the queue, so no connection accepted
by the primary is lost while any worker serves the port. Connections leave the
queue in the order they were accepted, refused ones included: a connection that
comes back takes its old place, ahead of every one accepted after it.

Pure state in, hand-offs out: every method returns the ``(worker, connection)``
pairs the caller must now send.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

W = TypeVar("W", bound=Hashable)
C = TypeVar("C")
Handoff = tuple[W, C]


class RoundRobinHandle(Generic[W, C]):
    """Round-robin state of one shared server: members, free workers, queue, hand-offs."""

    def __init__(self, is_busy: Callable[[W], bool] | None = None) -> None:
        self._members: set[W] = set()
        self._free: OrderedDict[W, None] = OrderedDict()
        # Each connection carries its acceptance number, so one that comes back
        # from a worker can be put back in its place rather than merely at the front.
        self._seq = 0
        self._inflight: dict[W, tuple[int, C]] = {}
        self._queue: deque[tuple[int, C]] = deque()
        # A worker whose serving loop is occupied is passed over while another is free.
        self._is_busy = is_busy

    @property
    def members(self) -> frozenset[W]:
        """Workers that take connections from this handle."""
        return frozenset(self._members)

    @property
    def queued(self) -> int:
        """Connections waiting for a free worker."""
        return len(self._queue)

    def inflight(self, worker: W) -> C | None:
        """The connection handed to ``worker`` that it has not yet taken, if any."""
        entry = self._inflight.get(worker)
        return None if entry is None else entry[1]

    def add(self, worker: W) -> list[Handoff[W, C]]:
        """A worker starts serving this handle."""
        self._members.add(worker)
        if worker not in self._inflight:
            self._free[worker] = None
        return self._distribute()

    def remove(self, worker: W) -> list[Handoff[W, C]]:
        """No new connection goes to ``worker``; one in flight waits for its answer."""
        self._members.discard(worker)
        self._free.pop(worker, None)
        return self._distribute()  # connections held for it may go to a busy worker now

    def push(self, conn: C) -> list[Handoff[W, C]]:
        """A connection was accepted."""
        self._queue.append((self._seq, conn))
        self._seq += 1
        return self._distribute()

    def accepted(self, worker: W) -> tuple[C | None, list[Handoff[W, C]]]:
        """``worker`` took its connection: return it (the caller closes its copy)."""
        entry = self._inflight.pop(worker, None)
        if worker in self._members:
            self._free[worker] = None
        return (None if entry is None else entry[1]), self._distribute()

    def refused(self, worker: W) -> list[Handoff[W, C]]:
        """``worker`` is gone without taking its connection: offer it to another one."""
        self._members.discard(worker)
        self._free.pop(worker, None)
        entry = self._inflight.pop(worker, None)
        if entry is not None:
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
        while self._queue and self._free:
            worker = self._pick()
            if worker is None:
                break
            entry = self._queue.popleft()
            self._inflight[worker] = entry
            out.append((worker, entry[1]))
        return out

    def _pick(self) -> W | None:
        is_busy = self._is_busy
        if is_busy is not None:
            for worker in self._free:
                if not is_busy(worker):
                    del self._free[worker]
                    return worker
            # Every free worker is busy. A worker that is not busy will be free as
            # soon as it takes its hand-off: wait for it rather than queue the
            # connection behind a long request.
            if any(w in self._members and not is_busy(w) for w in self._inflight):
                return None
        return self._free.popitem(last=False)[0]
