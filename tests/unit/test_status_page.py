"""The status page a worker shares with the primary: fields are never seen half-written."""

from __future__ import annotations

import select

from pycluster._status import SIZE, StatusPage
from tests.unit.pages import torn_reads, writing


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
    try:
        with writing(_keep_beating, page.fd):
            assert torn_reads(page.fd, SIZE, started=lambda _: page.connections > 0) == 0
            assert page.connections > 0
    finally:
        page.close()
