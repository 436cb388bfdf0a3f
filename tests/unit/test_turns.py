"""Sharing out a burst on a shared socket: the page the workers of one socket share.

Each test maps one real page (a memfd, as the primary creates it) once for the
primary and once per worker, with a clock the test moves by hand: a worker's
"step off the CPU" advances that clock instead of sleeping.
"""

from __future__ import annotations

import os
import select
from collections.abc import Iterator

import pytest

from pycluster._scheduling.bursts import BURST_SPAN, QUIET_SPELL
from pycluster._turns import SIZE, SLOTS, TURN_WAIT, AcceptTurns
from tests.unit.pages import torn_reads, writing


class Clock:
    """Monotonic time the test moves; sleeping moves it too."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


class Page:
    """The primary's view of a page and the workers' views of it."""

    def __init__(self) -> None:
        self.primary, self.fd = AcceptTurns.create()
        self.clock = Clock()

    def worker(self) -> AcceptTurns:
        slot = self.primary.join()
        return AcceptTurns.open_fd(self.fd, slot, clock=self.clock, sleep=self.clock.sleep)

    def close(self) -> None:
        self.primary.close()
        os.close(self.fd)


@pytest.fixture
def page() -> Iterator[Page]:
    p = Page()
    yield p
    p.close()


def always() -> bool:
    return True


def test_members_get_distinct_slots_and_a_freed_one_is_given_again(page: Page) -> None:
    slots = [page.primary.join() for _ in range(3)]
    assert slots == [0, 1, 2]
    page.primary.leave(1)
    assert page.primary.join() == 1


def test_a_full_page_gives_no_slot_and_that_worker_never_waits(page: Page) -> None:
    for _ in range(SLOTS):
        page.primary.join()
    extra = page.worker()
    assert extra.slot == -1
    extra.took()
    extra.wait_turn(always)
    assert page.clock.slept == 0


def test_a_worker_ahead_in_a_burst_waits_until_the_one_behind_takes_a_connection(
    page: Page,
) -> None:
    a, b = page.worker(), page.worker()
    a.wait_turn(always)  # the first connection after a quiet spell: a burst begins
    a.took()
    checks = 0

    def pending() -> bool:
        nonlocal checks
        checks += 1
        if checks == 3:
            b.wait_turn(always)  # b is even with a (none taken): it does not wait
            b.took()
        return True

    a.wait_turn(pending)
    assert checks == 3  # a stepped aside until b had taken its share
    assert 0 < page.clock.slept < TURN_WAIT


def test_nobody_waits_once_no_connection_is_pending(page: Page) -> None:
    a, _b = page.worker(), page.worker()
    a.wait_turn(always)
    a.took()
    a.wait_turn(lambda: False)  # the queue is empty: nothing to leave to b
    assert page.clock.slept == 0


def test_a_worker_that_does_not_catch_up_is_waited_for_once_per_burst(page: Page) -> None:
    a, _stuck = page.worker(), page.worker()
    a.wait_turn(always)
    a.took()
    a.wait_turn(always)
    assert page.clock.slept == pytest.approx(TURN_WAIT, abs=2e-4)
    a.took()
    a.wait_turn(always)  # the same burst: the stuck one is not waited for again
    a.took()
    assert page.clock.slept == pytest.approx(TURN_WAIT, abs=2e-4)
    # A new burst after a quiet spell gives it its chance again.
    page.clock.now += QUIET_SPELL * 2
    a.wait_turn(always)
    a.took()
    before = page.clock.slept
    a.wait_turn(always)
    assert page.clock.slept > before


def test_under_a_steady_stream_nobody_waits(page: Page) -> None:
    a, _b = page.worker(), page.worker()
    a.wait_turn(always)
    a.took()
    # Connections keep coming, a little apart, past the start of the burst.
    while page.clock.now < 1000.0 + BURST_SPAN:
        page.clock.now += QUIET_SPELL / 2
        a.took()
    before = page.clock.slept
    a.wait_turn(always)
    assert page.clock.slept == before


def test_a_member_that_left_is_not_waited_for(page: Page) -> None:
    a, b = page.worker(), page.worker()
    a.wait_turn(always)
    a.took()
    page.primary.leave(b.slot)
    a.wait_turn(always)
    assert page.clock.slept == 0


def _keep_accepting(fd: int, slot: int, stop: int) -> None:
    """In another process: count accepts on the page until ``stop`` becomes readable."""
    page = AcceptTurns.open_fd(fd, slot)
    while not select.select([stop], [], [], 0)[0]:
        for _ in range(1000):
            page.took()


def test_a_worker_never_sees_half_written_fields() -> None:
    """Another process writing the page (the clock of the last accept, a count) never
    shows a reader a field in the middle of being written: a last accept read as 0.0
    would look like a quiet spell and start a burst of turn-taking in a steady stream."""
    primary, fd = AcceptTurns.create()
    slot = primary.join()
    try:
        with writing(_keep_accepting, fd, slot):
            # The header's first word: the last accept's time (0.0 until the first).
            assert torn_reads(fd, SIZE, started=lambda page: page[0] != 0.0) == 0
    finally:
        primary.close()
        os.close(fd)
