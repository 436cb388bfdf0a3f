"""Restart arithmetic of one worker slot, with a fake clock and no processes.

``SlotHistory.decide(rules, uptime)`` is asked, each time a worker of the slot
failed, whether to start a replacement and after how long. The only clock is the
uptimes the test passes: the crash-loop window is measured in the slot's running
time, so backoff delays (time in which nothing runs) never enter it.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycluster._backoff import Decision, RestartRules, SlotHistory

RULES = RestartRules(
    delay=0.05, backoff=2.0, delay_max=1.0, stable_after=5.0, max_restarts=4, window=10.0
)


def delays(history: SlotHistory, rules: RestartRules, uptimes: list[float]) -> list[float]:
    """The delays decided for failures after ``uptimes``."""
    out = []
    for uptime in uptimes:
        decision = history.decide(rules, uptime)
        assert decision.restart, decision
        out.append(decision.delay)
    return out


class TestBackoff:
    """The delay grows per consecutive failure, is capped, and resets after a stable run."""

    def test_defaults_are_the_documented_ones(self) -> None:
        assert RestartRules() == RestartRules(
            delay=0.1, backoff=2.0, delay_max=30.0, stable_after=10.0, max_restarts=10, window=60.0
        )

    def test_first_failure_waits_the_initial_delay(self) -> None:
        assert SlotHistory().decide(RULES, uptime=0.01) == Decision(True, 0.05)

    def test_delay_grows_by_the_factor(self) -> None:
        rules = RestartRules(delay=0.05, backoff=3.0, delay_max=100.0, max_restarts=100)
        got = delays(SlotHistory(), rules, [0.1] * 5)
        assert got == pytest.approx([0.05, 0.15, 0.45, 1.35, 4.05])

    def test_delay_stops_at_the_cap(self) -> None:
        rules = RestartRules(delay=0.1, backoff=2.0, delay_max=0.5, max_restarts=100, window=1e9)
        assert delays(SlotHistory(), rules, [0.0] * 6) == pytest.approx(
            [0.1, 0.2, 0.4, 0.5, 0.5, 0.5]
        )

    def test_factor_one_keeps_the_delay_constant(self) -> None:
        rules = RestartRules(delay=0.3, backoff=1.0, max_restarts=100)
        assert delays(SlotHistory(), rules, [0.0] * 4) == pytest.approx([0.3] * 4)

    def test_stable_run_resets_the_delay(self) -> None:
        rules = RestartRules(delay=0.05, backoff=2.0, stable_after=5.0, max_restarts=100)
        history = SlotHistory()
        assert delays(history, rules, [0.1, 0.1, 0.1]) == pytest.approx([0.05, 0.1, 0.2])
        # This worker stayed up exactly stable_after: the failure streak starts over.
        assert history.decide(rules, uptime=5.0) == Decision(True, 0.05)
        assert history.decide(rules, uptime=0.2).delay == pytest.approx(0.1)

    def test_a_run_just_short_of_stable_keeps_growing(self) -> None:
        history = SlotHistory()
        delays(history, RULES, [0.1, 0.1])
        assert history.decide(RULES, uptime=4.99).delay == pytest.approx(0.2)

    def test_zero_delay_stays_zero(self) -> None:
        rules = RestartRules(delay=0.0, backoff=2.0, max_restarts=100)
        assert delays(SlotHistory(), rules, [0.0] * 3) == [0.0, 0.0, 0.0]


class TestCrashLoop:
    """More than ``max_restarts`` failures inside ``restart_window`` of running time: give up."""

    def test_gives_up_after_max_restarts_within_the_window(self) -> None:
        history = SlotHistory()
        for _ in range(4):
            assert history.decide(RULES, 0.1).restart
        decision = history.decide(RULES, 0.1)
        assert not decision.restart
        assert "max_restarts=4" in decision.reason
        assert "crash loop" in decision.reason
        assert "10 s of running time" in decision.reason
        assert history.total == 4

    def test_backoff_delays_never_stretch_a_crash_loop(self) -> None:
        # The case: delays capped at 30 s, ten restarts allowed in 60 s. On the
        # wall clock the failures are ~30 s apart and the window never holds eleven;
        # on the running-time clock they are 0.2 s apart.
        rules = RestartRules(delay=0.1, backoff=2.0, delay_max=30.0, max_restarts=10, window=60.0)
        history = SlotHistory()
        decisions = [history.decide(rules, 0.2) for _ in range(11)]
        assert [d.restart for d in decisions] == [True] * 10 + [False]
        assert sum(d.delay for d in decisions) > 60.0  # the wall clock would have forgiven it

    def test_running_time_moves_old_failures_out_of_the_window(self) -> None:
        history = SlotHistory()
        for _ in range(4):  # running clock 0.25, 0.5, 0.75, 1.0
            assert history.decide(RULES, 0.25).restart
        # A worker that served 9.25 s: clock 10.25, the failure at 0.25 is out; room for one.
        assert history.decide(RULES, 9.25).restart
        # Clock 10.5: the failure at 0.5 is out too (exactly one window old).
        assert history.decide(RULES, 0.25).restart
        assert not history.decide(RULES, 0.125).restart
        assert history.total == 6

    def test_a_stable_run_does_not_forgive_the_window(self) -> None:
        # Stability resets the delay, not the count of recent restarts.
        rules = RestartRules(delay=0.05, stable_after=1.0, max_restarts=2, window=60.0)
        history = SlotHistory()
        assert history.decide(rules, 2.0) == Decision(True, 0.05)
        assert history.decide(rules, 2.0) == Decision(True, 0.05)
        assert not history.decide(rules, 2.0).restart

    def test_max_restarts_zero_never_restarts(self) -> None:
        decision = SlotHistory().decide(RestartRules(max_restarts=0), 100.0)
        assert not decision.restart
        assert "max_restarts=0" in decision.reason

    def test_slots_keep_separate_histories(self) -> None:
        rules = RestartRules(delay=0.1, max_restarts=1, window=60.0)
        a, b = SlotHistory(), SlotHistory()
        assert a.decide(rules, 0.0).restart
        assert not a.decide(rules, 0.0).restart
        # Slot b's first failure is judged on its own: restart, initial delay.
        assert b.decide(rules, 0.0) == Decision(True, 0.1)


@given(
    delay=st.floats(0.0, 5.0),
    backoff=st.floats(1.0, 4.0),
    cap=st.floats(0.0, 60.0),
    uptimes=st.lists(st.floats(0.0, 20.0), min_size=1, max_size=30),
)
def test_delay_matches_the_formula(
    delay: float, backoff: float, cap: float, uptimes: list[float]
) -> None:
    """Any uptime sequence: delay = min(delay * backoff**(streak-1), cap), streak reset by stability."""
    rules = RestartRules(
        delay=delay, backoff=backoff, delay_max=cap, stable_after=10.0, max_restarts=1000
    )
    history = SlotHistory()
    streak = 0
    for uptime in uptimes:
        streak = 1 if uptime >= 10.0 else streak + 1
        decision = history.decide(rules, uptime)
        assert decision.restart
        assert 0.0 <= decision.delay <= cap
        assert decision.delay == pytest.approx(min(delay * backoff ** (streak - 1), cap))


@given(
    max_restarts=st.integers(0, 8),
    uptimes=st.lists(st.floats(0.0, 3.0), min_size=1, max_size=40),
    delay_max=st.floats(0.0, 300.0),
)
def test_never_more_restarts_than_allowed_in_any_window_of_running_time(
    max_restarts: int, uptimes: list[float], delay_max: float
) -> None:
    """Whatever the uptimes and the backoff cap, no window of running time holds more restarts."""
    window = 5.0
    rules = RestartRules(
        delay=1.0, backoff=2.0, delay_max=delay_max, max_restarts=max_restarts, window=window
    )
    history = SlotHistory()
    running, restarted = 0.0, []
    for uptime in uptimes:
        running += uptime
        if history.decide(rules, uptime).restart:
            restarted.append(running)
            recent = [t for t in restarted if t > running - window]
            assert len(recent) <= max_restarts
        else:
            # Giving up is only ever for a full window.
            assert len([t for t in restarted if t > running - window]) >= max_restarts
    assert history.total == len(restarted)
