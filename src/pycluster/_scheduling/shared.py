"""The shared handle: one listening socket, sent to every worker that asks.

The kernel decides which worker accepts each connection. The primary only keeps
the socket open while at least one worker uses it.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

W = TypeVar("W", bound=Hashable)


class SharedHandle(Generic[W]):
    """Who uses one shared socket."""

    def __init__(self) -> None:
        self._members: set[W] = set()

    @property
    def members(self) -> frozenset[W]:
        """Workers that hold the socket."""
        return frozenset(self._members)

    def add(self, worker: W) -> bool:
        """Register a worker; ``False`` if it already holds this socket."""
        if worker in self._members:
            return False
        self._members.add(worker)
        return True

    def remove(self, worker: W) -> bool:
        """Forget a worker; ``True`` when it was the last one (close the socket)."""
        self._members.discard(worker)
        return not self._members
