"""Restart arithmetic for one worker slot: backoff delay and crash-loop detection.

Pure functions of the uptimes passed in, so the rules are tested with a fake clock
and no processes:

* the delay before a replacement starts is ``restart_delay`` times
  ``restart_backoff`` to the power of (consecutive failures - 1), capped at
  ``restart_delay_max``;
* a worker that stayed up ``stable_after`` seconds resets the failure count;
* more than ``max_restarts`` failures of the slot within ``restart_window``
  seconds of its workers' *running time* means a crash loop: stop restarting the
  slot and give up.

Why running time and not the wall clock: the backoff delays between restarts are
time in which nothing runs. Measured on the wall clock, a delay capped at 30 s
spreads ten failures over five minutes, so "10 restarts in 60 s" never trips and
a worker that dies at every start is restarted forever. On the slot's running
time, a worker that dies at once adds almost nothing to the clock, however long
the delays, while a worker that serves for a while moves old failures out of the
window.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RestartRules:
    """The restart settings that matter for one slot."""

    delay: float = 0.1
    backoff: float = 2.0
    delay_max: float = 30.0
    stable_after: float = 10.0
    max_restarts: int = 10
    window: float = 60.0


@dataclass(frozen=True)
class Decision:
    """What to do about an exited worker: restart after ``delay``, or give up."""

    restart: bool
    delay: float = 0.0
    reason: str = ""


@dataclass
class SlotHistory:
    """Consecutive failures and recent restarts of one slot, on its running-time clock."""

    failures: int = 0
    #: Seconds the slot's workers have run, summed over every worker of the slot.
    running: float = 0.0
    #: The running-time clock at each restart still inside the window.
    restarts: deque[float] = field(default_factory=deque)
    total: int = 0

    def decide(self, rules: RestartRules, uptime: float) -> Decision:
        """A worker of this slot failed after ``uptime`` seconds: restart it, or give up?"""
        uptime = max(0.0, uptime)
        self.running += uptime
        if uptime >= rules.stable_after:
            self.failures = 0
        self.failures += 1
        now = self.running
        while self.restarts and self.restarts[0] <= now - rules.window:
            self.restarts.popleft()
        if len(self.restarts) >= rules.max_restarts:
            return Decision(
                False,
                reason=(
                    f"{len(self.restarts) + 1} failures within {rules.window:g} s of running "
                    f"time (max_restarts={rules.max_restarts}): crash loop"
                ),
            )
        self.restarts.append(now)
        self.total += 1
        delay = rules.delay * rules.backoff ** (self.failures - 1)
        return Decision(True, min(delay, rules.delay_max))
