"""SCHED_BATCH for the primary's hand-off thread, and the normal policy for its children.

A new connection wakes the primary's loop. Under the normal policy, that wake-up
preempts whatever runs on the CPU, on a loaded machine a worker in the middle of a
request, to take one connection. Under SCHED_BATCH the loop waits for its turn on the
CPU and then takes every connection that arrived meanwhile (the workers' hand-off
windows cover the wait): under round robin, ``Connection: close`` throughput went up
by 3-7 % on 2 cores, with the same mean latency. Only wake-up preemption changes (a
nice value's share of the CPU stays). Linux keeps a thread's policy across fork and
exec, and ``SCHED_RESET_ON_FORK`` resets only real-time policies, so the primary
starts its workers under the normal policy (:func:`normal_policy`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator

log = logging.getLogger("pycluster")

#: The thread this module switched to SCHED_BATCH, if any.
_batched: int | None = None


def enter() -> None:
    """Put the calling thread under SCHED_BATCH, unless the program chose a policy."""
    global _batched
    if _batched is not None or not hasattr(os, "SCHED_BATCH"):
        return
    try:
        if os.sched_getscheduler(0) != os.SCHED_OTHER:
            return  # the program (or chrt) chose a policy: leave it
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError as exc:  # a seccomp filter, a sandbox without the call
        log.debug("could not switch the primary to SCHED_BATCH: %s", exc)
        return
    _batched = threading.get_ident()


@contextlib.contextmanager
def normal_policy() -> Iterator[None]:
    """Run the block (a worker's start) under the normal policy, if :func:`enter` left it."""
    if _batched != threading.get_ident():
        yield
        return
    # A failed switch must not fail the worker's start: at worst it runs as batch.
    with contextlib.suppress(OSError):
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
