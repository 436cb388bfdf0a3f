"""The status page a worker shares with the primary: fields are never seen half-written."""

from __future__ import annotations

import mmap
import multiprocessing
import os
import select
import time

from pycluster._status import SIZE, StatusPage


def _keep_beating(fd: int, stop: int) -> None:
    """In another process: beat and count connections until ``stop`` becomes readable."""
    page = StatusPage(fd, owner=False)
    while not select.select([stop], [], [], 0)[0]:
        for _ in range(1000):
            page.beat()
            page.count_connection()


def test_the_primary_never_reads_a_half_written_heartbeat() -> None:
    """A heartbeat read as 0.0 while the worker writes it would look like a worker
    silent for hours (a hang): the worker's stores must be whole."""
    page = StatusPage.create()
    stop_r, stop_w = os.pipe()
    writer = multiprocessing.get_context("fork").Process(
        target=_keep_beating, args=(page.fd, stop_r)
    )
    writer.start()
    try:
        # Read as the primary on another CPU reads it (one 8-byte load).
        beat = memoryview(mmap.mmap(page.fd, SIZE)).cast("d")
        deadline = time.monotonic() + 10
        while page.connections == 0:  # the writer has started
            assert time.monotonic() < deadline, "the writer never wrote"
        torn = sum(1 for _ in range(2_000_000) if beat[0] == 0.0)
        beat.release()
        assert torn == 0
        assert page.connections > 0
    finally:
        os.write(stop_w, b"x")
        writer.join(10)
        if writer.is_alive():
            writer.kill()
            writer.join()
        os.close(stop_r)
        os.close(stop_w)
        page.close()
