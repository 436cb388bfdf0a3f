"""This process's descriptor table, read from ``/proc/self/fd``."""

from __future__ import annotations

import os
from collections.abc import Callable


def descriptors(links_to: Callable[[str], bool]) -> list[int]:
    """This process's descriptors whose link (``socket:[ino]``, ``anon_inode:...``) matches."""
    found: list[int] = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if links_to(os.readlink(f"/proc/self/fd/{name}")):
                found.append(int(name))
        except (OSError, ValueError):
            continue  # closed meanwhile
    return found
