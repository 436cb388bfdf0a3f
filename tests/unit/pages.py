"""Helpers for the tests of the pages of shared memory (status page, turns page)."""

from __future__ import annotations

import mmap
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def writing(target: Callable[..., None], *args: Any) -> Iterator[None]:
    """Run ``target(*args, stop)`` in a forked process until the block ends: ``stop`` is
    a pipe's read end that becomes readable then. The process is always reaped."""
    stop_r, stop_w = os.pipe()
    writer = multiprocessing.get_context("fork").Process(target=target, args=(*args, stop_r))
    writer.start()
    try:
        yield
    finally:
        os.write(stop_w, b"x")
        writer.join(10)
        if writer.is_alive():
            writer.kill()
            writer.join()
        os.close(stop_r)
        os.close(stop_w)


def torn_reads(
    fd: int, size: int, started: Callable[[memoryview], bool], reads: int = 2_000_000
) -> int:
    """How often the page's first word reads 0.0 while another process writes it, read
    as a reader on another CPU reads it (one 8-byte load), once ``started(view)`` is
    true (``view``: the page as doubles)."""
    view = memoryview(mmap.mmap(fd, size)).cast("d")
    try:
        deadline = time.monotonic() + 10
        while not started(view):
            assert time.monotonic() < deadline, "the writer never wrote"
        return sum(1 for _ in range(reads) if view[0] == 0.0)
    finally:
        view.release()
