"""Restart arithmetic of one worker slot, with a fake clock and no processes.

``SlotHistory.decide(rules, now, uptime)`` is asked, each time a worker of the slot
failed, whether to start a replacement and after how long. ``now`` is whatever the
test says the clock reads, so backoff growth, the stable-period reset, the cap and
the crash-loop window are checked exactly.
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
    """The delays decided for failures after ``uptimes``, one second of fake clock apart."""
    out = []
    for i, uptime in enumerate(uptimes):
        decision = history.decide(rules, float(i), uptime)
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
        assert SlotHistory().decide(RULES, now=100.0, uptime=0.01) == Decision(True, 0.05)

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
        assert history.decide(rules, 3.0, uptime=5.0) == Decision(True, 0.05)
        assert history.decide(rules, 3.5, uptime=0.2).delay == pytest.approx(0.1)

    def test_a_run_just_short_of_stable_keeps_growing(self) -> None:
        history = SlotHistory()
        delays(history, RULES, [0.1, 0.1])
        assert history.decide(RULES, 2.0, uptime=4.99).delay == pytest.approx(0.2)

    def test_zero_delay_stays_zero(self) -> None:
        rules = RestartRules(delay=0.0, backoff=2.0, max_restarts=100)
        assert delays(SlotHistory(), rules, [0.0] * 3) == [0.0, 0.0, 0.0]


class TestCrashLoop:
    """More than ``max_restarts`` restarts inside ``restart_window``: give up the slot."""

    def test_gives_up_after_max_restarts_within_the_window(self) -> None:
        history = SlotHistory()
        for t in range(4):
            assert history.decide(RULES, float(t), 0.1).restart
        decision = history.decide(RULES, 4.0, 0.1)
        assert not decision.restart
        assert "max_restarts=4" in decision.reason
        assert "crash loop" in decision.reason
        assert "10 s" in decision.reason
        assert history.total == 4

    def test_restarts_older_than_the_window_are_forgotten(self) -> None:
        history = SlotHistory()
        for t in (0.0, 1.0, 2.0, 3.0):
            assert history.decide(RULES, t, 0.1).restart
        # At t=10.5 the restart at t=0 is more than 10 s old: three remain, room for one.
        assert history.decide(RULES, 10.5, 0.1).restart
        # t=11 drops the restart at t=1 (exactly one window old) as well.
        assert history.decide(RULES, 11.0, 0.1).restart
        assert not history.decide(RULES, 11.1, 0.1).restart
        assert history.total == 6

    def test_a_stable_run_does_not_forgive_the_window(self) -> None:
        # Stability resets the delay, not the count of recent restarts.
        rules = RestartRules(delay=0.05, stable_after=1.0, max_restarts=2, window=60.0)
        history = SlotHistory()
        assert history.decide(rules, 0.0, 2.0) == Decision(True, 0.05)
        assert history.decide(rules, 3.0, 2.0) == Decision(True, 0.05)
        assert not history.decide(rules, 6.0, 2.0).restart

    def test_max_restarts_zero_never_restarts(self) -> None:
        decision = SlotHistory().decide(RestartRules(max_restarts=0), 0.0, 100.0)
        assert not decision.restart
        assert "max_restarts=0" in decision.reason

    def test_slots_keep_separate_histories(self) -> None:
        rules = RestartRules(delay=0.1, max_restarts=1, window=60.0)
        a, b = SlotHistory(), SlotHistory()
        assert a.decide(rules, 0.0, 0.0).restart
        assert not a.decide(rules, 0.1, 0.0).restart
        # Slot b's first failure is judged on its own: restart, initial delay.
        assert b.decide(rules, 0.2, 0.0) == Decision(True, 0.1)


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
    for i, uptime in enumerate(uptimes):
        streak = 1 if uptime >= 10.0 else streak + 1
        decision = history.decide(rules, float(i), uptime)
        assert decision.restart
        assert 0.0 <= decision.delay <= cap
        assert decision.delay == pytest.approx(min(delay * backoff ** (streak - 1), cap))


@given(
    max_restarts=st.integers(0, 8),
    gaps=st.lists(st.floats(0.0, 3.0), min_size=1, max_size=40),
)
def test_never_more_restarts_than_allowed_in_any_window(
    max_restarts: int, gaps: list[float]
) -> None:
    """Whatever the failure times, no window of ``window`` seconds holds more restarts."""
    window = 5.0
    rules = RestartRules(delay=0.0, max_restarts=max_restarts, window=window)
    history = SlotHistory()
    now, restarted = 0.0, []
    for gap in gaps:
        now += gap
        if history.decide(rules, now, 0.0).restart:
            restarted.append(now)
            recent = [t for t in restarted if t > now - window]
            assert len(recent) <= max_restarts
        else:
            # Giving up is only ever for a full window.
            assert len([t for t in restarted if t > now - window]) >= max_restarts
    assert history.total == len(restarted)
