"""A page of memory the primary shares with its workers, read and written by whole words.

A memfd the primary creates and passes to the workers; each side maps it and reads
or writes its 8-byte fields through typed views, so that each store is a single
aligned write a reader in another process never sees half done (``struct.pack_into``
clears a field before it writes it: a reader in between saw 0.0).
"""

from __future__ import annotations

import mmap
import os


class WordPage:
    """A shared page mapped as 8-byte words: ``f64`` (doubles) and ``u64`` (unsigned)."""

    def __init__(self, fd: int, size: int) -> None:
        self._map = mmap.mmap(fd, size)
        self.f64 = memoryview(self._map).cast("d")
        self.u64 = memoryview(self._map).cast("Q")

    @staticmethod
    def new_fd(name: str, size: int) -> int:
        """A new zeroed memfd of ``size`` bytes (close-on-exec; passed explicitly)."""
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        return fd

    def close(self) -> None:
        """Unmap the page (the views go first: a mapping with views cannot close)."""
        try:
            self.f64.release()
            self.u64.release()
            self._map.close()
        except (BufferError, ValueError):
            pass
