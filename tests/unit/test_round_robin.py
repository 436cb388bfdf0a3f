"""The round-robin handle, sans I/O: who gets each connection, and none is ever lost.

Workers are plain strings and connections plain ints here; the handle never looks
inside either.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from pycluster._scheduling.round_robin import (
    BURST_SPAN,
    DEFAULT_HOLD,
    MAKE_UP,
    QUIET_SPELL,
    RoundRobinHandle,
)

Handle = RoundRobinHandle[str, int]


class Clock:
    """A clock the test moves by hand: the handle's notion of "a moment" is explicit."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def pass_hold(self) -> None:
        """Let more than the hold pass: every hand-off in flight is now a lagging one."""
        self.now += DEFAULT_HOLD * 2


def handle_with(*workers: str, window: int = 1, clock: Clock | None = None) -> Handle:
    h: Handle = RoundRobinHandle(window=window, clock=clock or Clock())
    for w in workers:
        assert h.add(w) == []
    return h


class TestHandOff:
    """A window of one: one connection in flight per worker; the longest-free goes first."""

    def test_one_in_flight_per_worker(self) -> None:
        h = handle_with("a", "b")
        assert h.push(1) == [("a", 1)]
        assert h.push(2) == [("b", 2)]
        # Both busy: the third waits even though "a" is a member.
        assert h.push(3) == []
        assert h.queued == 1
        assert (h.inflight("a"), h.inflight("b")) == (1, 2)

    def test_accepted_frees_the_worker_and_hands_the_next(self) -> None:
        h = handle_with("a")
        h.push(1)
        h.push(2)
        conn, more = h.accepted("a")
        assert conn == 1
        assert more == [("a", 2)]
        assert h.inflight("a") == 2 and h.queued == 0

    def test_free_workers_take_turns(self) -> None:
        h = handle_with("a", "b", "c")
        assert [h.push(i)[0][0] for i in range(3)] == ["a", "b", "c"]
        # Whatever order they answer in, the turns go on: the worker handed a
        # connection longest ago is next.
        for w in ("c", "a", "b"):
            h.accepted(w)
        assert [h.push(i)[0][0] for i in range(3, 6)] == ["a", "b", "c"]

    def test_even_spread(self) -> None:
        h = handle_with("a", "b", "c", "d")
        counts: Counter[str] = Counter()
        for conn in range(400):
            for worker, _ in h.push(conn):
                counts[worker] += 1
            # Every worker answers at once: the spread is perfectly even.
            for worker in list(counts):
                if h.inflight(worker) is not None:
                    _, more = h.accepted(worker)
                    counts.update(w for w, _ in more)
        assert counts == Counter({"a": 100, "b": 100, "c": 100, "d": 100})

    def test_spurious_accept_returns_nothing(self) -> None:
        h = handle_with("a")
        assert h.accepted("a") == (None, [])
        assert h.accepted("stranger") == (None, [])
        assert h.members == {"a"}

    def test_adding_twice_does_not_double_a_worker(self) -> None:
        h = handle_with("a")
        h.add("a")
        assert h.push(1) == [("a", 1)]
        assert h.push(2) == []


class TestNoMembers:
    """Connections wait while no worker serves the port."""

    def test_queue_grows_then_drains_to_the_first_worker(self) -> None:
        h: Handle = RoundRobinHandle(window=1)
        for conn in range(5):
            assert h.push(conn) == []
        assert h.queued == 5
        assert h.add("a") == [("a", 0)]
        assert h.add("b") == [("b", 1)]
        assert h.queued == 3

    def test_drain_takes_everything_queued(self) -> None:
        h = handle_with("a")
        for conn in range(4):
            h.push(conn)
        assert h.drain() == [1, 2, 3]
        assert h.queued == 0
        assert h.inflight("a") == 0  # what is in flight is not the queue's
        assert h.drain() == []


class TestRemoveAndRefuse:
    """Leaving workers: nothing new goes to them, nothing they held is lost."""

    def test_removed_worker_gets_nothing_new(self) -> None:
        h = handle_with("a", "b")
        h.remove("a")
        assert h.members == {"b"}
        assert h.push(1) == [("b", 1)]
        assert h.push(2) == []

    def test_removed_worker_in_flight_waits_for_its_answer(self) -> None:
        h = handle_with("a", "b")
        h.push(1)  # to a
        h.remove("a")
        assert h.inflight("a") == 1
        conn, more = h.accepted("a")
        assert conn == 1
        # It took it; still not a member, so it stays out of the rotation.
        h.push(2)
        h.push(3)
        assert h.inflight("a") is None
        assert h.inflight("b") == 2

    def test_removed_worker_refusing_passes_the_connection_on(self) -> None:
        h = handle_with("a", "b")
        h.push(1)  # a
        h.push(2)  # b
        h.push(3)  # queued
        h.remove("a")
        assert h.refused("a") == []  # b still busy: 1 goes to the front of the queue
        _, more = h.accepted("b")
        assert more == [("b", 1)]  # before 3, which was queued earlier but behind it
        _, more = h.accepted("b")
        assert more == [("b", 3)]

    def test_refused_goes_to_another_free_worker_at_once(self) -> None:
        h = handle_with("a", "b")
        h.push(1)  # a
        assert h.refused("a") == [("b", 1)]
        assert "a" not in h.members

    def test_two_refused_connections_keep_their_acceptance_order(self) -> None:
        h = handle_with("a", "b", "c")
        h.push(1)  # a
        h.push(2)  # b
        h.push(3)  # c
        h.push(4)  # queued
        h.remove("a")
        h.remove("b")
        assert h.refused("b") == []  # 2 waits ahead of 4
        assert h.refused("a") == []  # 1 is older still: it goes ahead of 2
        _, more = h.accepted("c")
        assert more == [("c", 1)]
        assert h.drain() == [2, 4]

    def test_refused_with_nobody_left_waits_in_the_queue(self) -> None:
        h = handle_with("a")
        h.push(1)
        h.push(2)
        assert h.refused("a") == []
        assert h.queued == 2
        assert h.drain() == [1, 2]

    def test_rejoining_while_in_flight_waits_for_the_answer(self) -> None:
        h = handle_with("a")
        h.push(1)
        h.remove("a")
        assert h.add("a") == []
        assert h.push(2) == []  # "a" still has 1 in flight
        _, more = h.accepted("a")
        assert more == [("a", 2)]


class TestBusyPredicate:
    """A busy worker is passed over while a free one is not busy, but never starves the queue."""

    def test_busy_worker_is_skipped(self) -> None:
        busy = {"a"}
        h: Handle = RoundRobinHandle(lambda w: w in busy, window=1)
        h.add("a")
        h.add("b")
        assert h.push(1) == [("b", 1)]
        # Only "a" is free, and busy; "b" is about to be free: wait for it.
        assert h.push(2) == []
        assert h.accepted("b") == (1, [("b", 2)])

    def test_busy_worker_used_when_no_other_will_be_free(self) -> None:
        busy = {"a", "b"}
        h: Handle = RoundRobinHandle(lambda w: w in busy, window=1)
        h.add("a")
        h.add("b")
        assert h.push(1) == [("a", 1)]
        # Only "b" is free; "a" (in flight) is busy too: nobody better is coming.
        assert h.push(2) == [("b", 2)]

    def test_all_free_workers_busy_uses_the_longest_free(self) -> None:
        h: Handle = RoundRobinHandle(lambda w: True, window=1)
        h.add("a")
        h.add("b")
        assert h.push(1) == [("a", 1)]
        assert h.push(2) == [("b", 2)]

    def test_skipped_worker_keeps_its_place(self) -> None:
        busy = {"a"}
        h: Handle = RoundRobinHandle(lambda w: w in busy, window=1)
        for w in ("a", "b", "c"):
            h.add(w)
        assert h.push(1) == [("b", 1)]
        busy.clear()
        assert h.push(2) == [("a", 2)]  # still first in line once it is not busy
        assert h.push(3) == [("c", 3)]


class TestWindow:
    """Several hand-offs in flight per worker: no round trip between connections."""

    def test_a_worker_holds_up_to_its_window(self) -> None:
        h: Handle = RoundRobinHandle(window=3)
        h.add("a")
        assert [h.push(i) for i in range(4)] == [[("a", 0)], [("a", 1)], [("a", 2)], []]
        assert h.outstanding("a") == [0, 1, 2] and h.queued == 1
        # Each answer settles the oldest hand-off and makes room for one more.
        assert h.accepted("a") == (0, [("a", 3)])
        assert h.outstanding("a") == [1, 2, 3]

    def test_workers_with_room_take_turns(self) -> None:
        clock = Clock()
        h = handle_with("a", "b", window=3, clock=clock)
        assert [h.push(i)[0][0] for i in range(4)] == ["a", "b", "a", "b"]
        h.accepted("b")
        h.accepted("b")
        # Turns go on whoever answered first: a, then b; then it is a's turn again and
        # its window is full, so the queue holds for it rather than give b two in a row.
        assert [h.push(i)[0][0] for i in range(4, 6)] == ["a", "b"]
        assert h.push(6) == [] and h.deadline is not None
        assert h.deadline > clock.now

    def test_a_full_worker_keeps_its_turn_until_it_answers(self) -> None:
        clock = Clock()
        h = handle_with("a", "b", window=2, clock=clock)
        # A burst of long-lived connections: both windows fill, then b answers first.
        for i in range(6):
            h.push(i)
        assert (h.outstanding("a"), h.outstanding("b"), h.queued) == ([0, 2], [1, 3], 2)
        assert h.accepted("b") == (1, [])  # a's turn: held for it
        assert h.accepted("a") == (0, [("a", 4), ("b", 5)])
        # Over the burst each got the same number of connections.
        assert len(h.outstanding("a")) + 1 == len(h.outstanding("b")) + 1

    def test_with_every_window_full_nothing_is_held_until_an_answer(self) -> None:
        # A loaded server: connections queue in the primary behind full windows. No
        # worker can take one before it answers, and its answer hands out the next, so
        # the queue sets no hold (no timer to look again) and stays in order.
        clock = Clock()
        h = handle_with("a", "b", window=2, clock=clock)
        for i in range(4):
            h.push(i)
        assert h.push(4) == [] and h.push(5) == []
        assert h.deadline is None and h.queued == 2
        clock.pass_hold()
        assert h.redistribute() == []
        assert h.accepted("b") == (1, [("b", 4)])
        assert h.accepted("a") == (0, [("a", 5)])

    def test_under_a_steady_stream_a_worker_with_room_does_not_wait_for_a_full_one(
        self,
    ) -> None:
        clock = Clock()
        h = handle_with("a", "b", window=1, clock=clock)
        # Connections keep coming, a little apart, past the burst that opened the stream.
        conn = 0
        while clock.now < 100.0 + BURST_SPAN:
            for worker, _ in h.push(conn):
                h.accepted(worker)
            conn += 1
            clock.now += QUIET_SPELL / 2
        [(first, _)] = h.push(conn)
        [(second, _)] = h.push(conn + 1)
        assert first != second
        h.accepted(second)
        # first's turn, and its window is full; second keeps up and has room. Holding
        # would idle second: under a stream, it goes on.
        assert h.push(conn + 2) == [(second, conn + 2)]
        assert h.deadline is None

    def test_a_burst_after_a_quiet_spell_holds_again(self) -> None:
        clock = Clock()
        h = handle_with("a", "b", window=1, clock=clock)
        clock.now += BURST_SPAN * 2
        h.push(0)
        h.push(1)
        h.accepted("b")
        # Clients connecting at once after a quiet spell: a's turn is held for it, so
        # a burst of long-lived connections splits evenly.
        assert h.push(2) == [] and h.deadline is not None
        assert h.accepted("a") == (0, [("a", 2)])

    def test_a_lagging_worker_loses_its_turn(self) -> None:
        clock = Clock()
        h = handle_with("a", "b", window=1, clock=clock)
        h.push(0)
        h.push(1)
        h.accepted("b")
        assert h.push(2) == []  # a's turn, and a is full: held
        deadline = h.deadline
        assert deadline is not None
        clock.now = deadline + 1e-6
        # a did not take its hand-off within the hold: b, which keeps up, goes on.
        assert h.redistribute() == [("b", 2)]
        assert h.deadline is None

    def test_a_worker_that_takes_nothing_gets_nothing_more(self) -> None:
        clock = Clock()
        h: Handle = RoundRobinHandle(window=8, clock=clock)
        h.add("stuck")
        h.push(0)
        h.add("serving")
        clock.pass_hold()
        for i in range(1, 7):
            assert h.push(i) == [("serving", i)]
            h.accepted("serving")
        assert h.outstanding("stuck") == [0]

    def test_when_every_worker_lags_they_take_turns(self) -> None:
        clock = Clock()
        h = handle_with("a", "b", window=4, clock=clock)
        h.push(0)
        h.push(1)
        clock.pass_hold()  # an overloaded machine: both answer late
        assert [h.push(i)[0][0] for i in range(2, 6)] == ["a", "b", "a", "b"]

    def test_a_dead_worker_gives_back_its_whole_window_in_order(self) -> None:
        clock = Clock()
        h: Handle = RoundRobinHandle(window=3, clock=clock)
        h.add("a")
        for i in range(5):
            h.push(i)
        clock.pass_hold()
        h.add("b")  # takes 3 and 4
        assert h.outstanding("b") == [3, 4]
        assert h.refused("a") == [("b", 0)]  # b has room for one more: the oldest
        assert h.outstanding("b") == [3, 4, 0]
        assert h.drain() == [1, 2]

    def test_busy_worker_is_passed_over_while_another_has_room(self) -> None:
        busy = {"a"}
        h: Handle = RoundRobinHandle(lambda w: w in busy, window=2)
        h.add("a")
        h.add("b")
        assert [h.push(i) for i in range(3)] == [[("b", 0)], [("b", 1)], []]
        busy.clear()
        assert h.redistribute() == [("a", 2)]

    def test_fresh_connections_split_evenly(self) -> None:
        h = handle_with(
            "a",
            "b",
            window=8,
        )
        counts: Counter[str] = Counter()
        for conn in range(2000):
            for worker, _ in h.push(conn):
                counts[worker] += 1
            if conn % 3 == 0:  # the workers answer at different moments
                for worker in ("a", "b"):
                    while h.inflight(worker) is not None:
                        _, more = h.accepted(worker)
                        counts.update(w for w, _ in more)
        assert abs(counts["a"] - counts["b"]) <= 0.02 * 2000, counts

    def test_a_returned_hand_off_goes_back_to_its_place(self) -> None:
        clock = Clock()
        h: Handle = RoundRobinHandle(window=2, clock=clock)
        h.add("a")
        for i in range(3):
            h.push(i)
        clock.pass_hold()
        h.add("b")  # takes 2
        assert h.returned("a") == [("b", 0)]  # a could not take 0: b has room for it
        assert h.outstanding("a") == [1] and h.outstanding("b") == [2, 0]
        assert h.returned("stranger") == []

    def test_batched_calls_hand_out_as_single_ones(self) -> None:
        # A wake-up's connections pushed at once go where pushing them one by one
        # sends them; one answer to three hand-offs frees three places at once.
        singles, batched = (handle_with("a", "b", window=2) for _ in range(2))
        one_by_one = [pair for conn in range(5) for pair in singles.push(conn)]
        assert (
            batched.push_all(list(range(5)))
            == one_by_one
            == [
                ("a", 0),
                ("b", 1),
                ("a", 2),
                ("b", 3),
            ]
        )
        assert batched.accepted_many("a", 3) == ([0, 2], [("a", 4)])
        assert batched.accepted_many("stranger", 2) == ([], [])
        assert batched.push_all([]) == []

    def test_window_must_be_positive(self) -> None:
        with pytest.raises(ValueError, match="at least 1"):
            RoundRobinHandle(window=0)


WORKERS = ["w0", "w1", "w2", "w3"]


class TestMakeUp:
    """Turns a worker lost while it lagged are made up, up to ``MAKE_UP``, within a stream."""

    @staticmethod
    def stream(
        h: Handle, clock: Clock, conns: range, counts: Counter[str], stalled: str = ""
    ) -> None:
        """A stream of connections 1 ms apart; every worker but ``stalled`` takes its
        hand-offs at once."""
        for conn in conns:
            clock.now += 0.001
            counts.update(w for w, _ in h.push(conn))
            for worker in ("a", "b"):
                while worker != stalled and h.inflight(worker) is not None:
                    counts.update(w for w, _ in h.accepted(worker)[1])

    def test_a_stall_within_a_stream_is_made_up(self) -> None:
        clock = Clock()
        h = handle_with("a", "b", window=8, clock=clock)
        counts: Counter[str] = Counter()
        self.stream(h, clock, range(100), counts)
        self.stream(h, clock, range(100, 160), counts, stalled="a")
        assert counts["b"] - counts["a"] > 40  # a lost turns while it lagged
        self.stream(h, clock, range(160, 400), counts)
        assert abs(counts["a"] - counts["b"]) <= 1, counts

    def test_a_long_stall_is_made_up_only_so_far(self) -> None:
        clock = Clock()
        h = handle_with("a", "b", window=8, clock=clock)
        counts: Counter[str] = Counter()
        self.stream(h, clock, range(400), counts, stalled="a")
        behind = counts["b"] - counts["a"]
        assert behind > 300
        self.stream(h, clock, range(400, 1000), counts)
        made_up = behind - (counts["b"] - counts["a"])
        # Not flooded: a took about MAKE_UP more than b (give or take a window).
        assert MAKE_UP - 8 <= made_up <= MAKE_UP + 8, (behind, counts)

    def test_a_quiet_spell_starts_every_worker_even(self) -> None:
        clock = Clock()
        h = handle_with("a", "b", window=8, clock=clock)
        counts: Counter[str] = Counter()
        self.stream(h, clock, range(60), counts, stalled="a")
        self.stream(h, clock, range(60, 61), counts)  # a takes what it held
        clock.now += QUIET_SPELL * 2
        # 50 clients connect at once (keep-alive connections placed for their life);
        # the workers answer between arrivals.
        burst: Counter[str] = Counter()
        for conn in range(100, 150):
            burst.update(w for w, _ in h.push(conn))
            for worker in ("a", "b"):
                while h.inflight(worker) is not None:
                    burst.update(w for w, _ in h.accepted(worker)[1])
        assert burst == Counter({"a": 25, "b": 25})


class RoundRobinMachine(RuleBasedStateMachine):
    """Random add/remove/push/accepted/refused/drain sequences against the invariants.

    The machine keeps only what the caller knows (what it pushed, the hand-offs it
    was told to send, what came back), never a copy of the handle's algorithm.
    """

    WINDOW = 1

    def __init__(self) -> None:
        super().__init__()
        self.busy: set[str] = set()
        self.clock = Clock()
        self.handle: Handle = RoundRobinHandle(
            lambda w: w in self.busy, window=self.WINDOW, clock=self.clock
        )
        self.next_conn = 0
        self.pushed: list[int] = []
        self.done: list[int] = []  # returned by accepted() or drain(): the caller's again
        self.sent: dict[str, list[int]] = {}  # hand-offs not yet answered, oldest first
        self.members: set[str] = set()

    def in_flight(self) -> list[int]:
        return [c for conns in self.sent.values() for c in conns]

    def waiting(self) -> list[int]:
        """Connections neither in flight nor given back, in the order they were pushed."""
        gone = set(self.done) | set(self.in_flight())
        return [c for c in self.pushed if c not in gone]

    def take(self, handoffs: list[tuple[str, int]]) -> None:
        # Strict acceptance order, refused connections included: each hand-off takes
        # the oldest connection still waiting.
        expected = self.waiting()[: len(handoffs)]
        assert [c for _, c in handoffs] == expected, "a connection lost its place"
        for worker, conn in handoffs:
            assert worker in self.handle.members, f"{conn} handed to non-member {worker}"
            assert worker in self.members
            sent = self.sent.setdefault(worker, [])
            assert len(sent) < self.WINDOW, f"{worker} got more than its window"
            assert conn in self.pushed
            sent.append(conn)

    @rule(worker=st.sampled_from(WORKERS))
    def add(self, worker: str) -> None:
        self.members.add(worker)
        self.take(self.handle.add(worker))

    @rule(worker=st.sampled_from(WORKERS))
    def remove(self, worker: str) -> None:
        self.members.discard(worker)
        in_flight = list(self.sent.get(worker, []))
        more = self.handle.remove(worker)
        assert self.handle.outstanding(worker) == in_flight
        assert all(w != worker for w, _ in more)
        self.take(more)

    @rule()
    def push(self) -> None:
        conn = self.next_conn
        self.next_conn += 1
        self.pushed.append(conn)
        self.take(self.handle.push(conn))

    @rule(worker=st.sampled_from(WORKERS))
    def accepted(self, worker: str) -> None:
        conn, more = self.handle.accepted(worker)
        sent = self.sent.get(worker)
        assert conn == (sent.pop(0) if sent else None), "acknowledged out of order"
        if conn is not None:
            self.done.append(conn)
        self.take(more)

    @rule(count=st.integers(min_value=0, max_value=5))
    def push_all(self, count: int) -> None:
        # Connections accepted in one wake-up of the listener.
        conns = list(range(self.next_conn, self.next_conn + count))
        self.next_conn += count
        self.pushed.extend(conns)
        self.take(self.handle.push_all(conns))

    @rule(worker=st.sampled_from(WORKERS), count=st.integers(min_value=1, max_value=4))
    def accepted_many(self, worker: str, count: int) -> None:
        # One answer to several hand-offs (more than were sent is no error).
        conns, more = self.handle.accepted_many(worker, count)
        sent = self.sent.get(worker, [])
        assert conns == sent[:count], "acknowledged out of order"
        del sent[:count]
        self.done.extend(conns)
        self.take(more)

    @rule(worker=st.sampled_from(WORKERS))
    def refused(self, worker: str) -> None:
        conns = self.sent.pop(worker, [])
        queued_before = self.handle.queued
        self.members.discard(worker)
        more = self.handle.refused(worker)
        # Not lost: each is back in the queue, which may at once hand out its head.
        assert self.handle.queued == queued_before + len(conns) - len(more)
        self.take(more)

    @rule(worker=st.sampled_from(WORKERS))
    def returned(self, worker: str) -> None:
        sent = self.sent.get(worker)
        conn = sent.pop(0) if sent else None
        queued_before = self.handle.queued
        more = self.handle.returned(worker)
        if conn is not None:
            assert self.handle.queued == queued_before + 1 - len(more)
        self.take(more)

    @rule(worker=st.sampled_from(WORKERS))
    def toggle_busy(self, worker: str) -> None:
        self.busy ^= {worker}
        self.take(self.handle.redistribute())

    @rule()
    def time_passes(self) -> None:
        # What the caller does when the handle's deadline comes.
        self.clock.pass_hold()
        self.take(self.handle.redistribute())

    @precondition(lambda self: self.handle.queued > 0)
    @rule()
    def drain(self) -> None:
        expected = self.waiting()
        drained = self.handle.drain()
        assert drained == expected, "drain() gives back the queue in acceptance order"
        self.done.extend(drained)
        assert self.handle.queued == 0

    @invariant()
    def nothing_lost_or_duplicated(self) -> None:
        in_flight = self.in_flight()
        waiting = len(self.pushed) - len(self.done) - len(in_flight)
        accounted = Counter(self.done) + Counter(in_flight)
        assert all(n == 1 for n in accounted.values()), "a connection was duplicated"
        assert set(accounted) <= set(self.pushed)
        assert self.handle.queued == waiting

    @invariant()
    def handle_agrees_on_what_is_in_flight(self) -> None:
        for worker in WORKERS:
            assert self.handle.outstanding(worker) == self.sent.get(worker, [])
        assert self.handle.members == self.members

    @invariant()
    def no_worker_with_room_idles_while_connections_wait(self) -> None:
        if not self.handle.queued:
            return
        room = [w for w in self.members if len(self.sent.get(w, [])) < self.WINDOW]
        if not room:
            return
        # A member with room waits only while a member that is not busy has a full
        # window (it will have room in a moment) ...
        assert any(
            w in self.members and w not in self.busy and len(c) >= self.WINDOW
            for w, c in self.sent.items()
        ), "a member with room sits idle"
        # ... and, if the waiting one is not busy either, only for a moment: the
        # handle has said when to look again.
        if any(w not in self.busy for w in room):
            assert self.handle.deadline is not None, "held with no deadline"
            assert self.handle.deadline > self.clock.now

    @invariant()
    def a_deadline_only_while_something_waits(self) -> None:
        if self.handle.deadline is not None:
            assert self.handle.queued > 0


class WindowedMachine(RoundRobinMachine):
    """The same invariants with three hand-offs in flight per worker."""

    WINDOW = 3


_SETTINGS = settings(max_examples=120, stateful_step_count=40, deadline=None)
RoundRobinMachine.TestCase.settings = _SETTINGS
WindowedMachine.TestCase.settings = _SETTINGS
TestRoundRobinProperties = RoundRobinMachine.TestCase
TestWindowedProperties = WindowedMachine.TestCase
