"""The restart policy with real crashing workers: backoff, stable reset, give-up, slots.

The primary measures, on its own monotonic clock, the gap between each worker's
``'exit'`` and its replacement's ``'fork'``, and prints it; the test checks the gaps
follow ``restart_delay * restart_backoff ** (n - 1)`` (with a generous upper margin:
two cores, shared with other tests). Planned exits (``disconnect()``, ``kill()``
from either side, scale-down, reload, shutdown) never start a replacement.
"""

from __future__ import annotations

import pytest

from tests.conftest import Cluster, Result

# Shared by the programs below: one write per JSON line, since the primary and its
# workers share stdout.
EMIT = """
import json, os, sys, time
import pycluster as cluster

def emit(**kw):
    sys.stdout.write(json.dumps(kw) + "\\n")
    sys.stdout.flush()
"""

CRASH_LOOP = (
    EMIT
    + """
if cluster.is_primary:
    cluster.setup_primary(**json.loads(sys.argv[1]))
    exited, gaps = {}, []

    def on_exit(worker, code, sig):
        exited[worker.id] = time.monotonic()
        emit(ev="exit", id=worker.id, code=code, sig=sig, planned=worker.exited_after_disconnect)

    def on_restart(old, new):
        gaps.append(time.monotonic() - exited[old.id])
        emit(ev="restart", old=old.id, new=new.id, slot=new.slot, gap=gaps[-1])

    cluster.on("fork", lambda w: emit(ev="fork", id=w.id, slot=w.slot))
    cluster.on("exit", on_exit)
    cluster.on("restart", on_restart)
    cluster.on("give_up", lambda w, reason: emit(ev="give_up", id=w.id, slot=w.slot, reason=reason))
    cluster.fork()
    cluster.run()
    emit(ev="done", workers=len(cluster.workers), gaps=gaps)
else:
    me = cluster.worker
    emit(ev="worker", id=me.id, slot=me.slot, env=os.environ.get("PYCLUSTER_WORKER_SLOT"))
    # The worker ids listed in argv[2] stay up a while before crashing like the rest.
    if str(me.id) in sys.argv[2].split(","):
        time.sleep(float(sys.argv[3]))
    sys.exit(3)
"""
)


def of(result: Result, ev: str) -> list[dict[str, object]]:
    """The events of one kind a finished program printed."""
    return [e for e in result.events() if e.get("ev") == ev]


def assert_gaps(gaps: list[float], expected: list[float]) -> None:
    """Each measured gap is at least its delay (timers never fire early) and not much more."""
    assert len(gaps) == len(expected), gaps
    for gap, want in zip(gaps, expected, strict=True):
        assert want * 0.9 - 0.005 <= gap <= want + 0.6, (gaps, expected)


def run_crash_loop(
    cluster_env: Cluster, settings: str, stay_up: str = "", secs: str = "0"
) -> Result:
    result = cluster_env.run(CRASH_LOOP, settings, stay_up, secs, timeout=20)
    assert result.returncode == 0, result.stderr
    return result


class TestCrashLoop:
    """A worker that always crashes: replaced with growing delays, then given up."""

    def test_delay_grows_by_the_factor_then_gives_up(self, cluster_env: Cluster) -> None:
        settings = (
            '{"restart": "on-failure", "restart_delay": 0.05, "restart_backoff": 3.0,'
            ' "stable_after": 30.0, "max_restarts": 3, "restart_window": 60.0}'
        )
        result = run_crash_loop(cluster_env, settings)
        restarts = of(result, "restart")
        assert [(e["old"], e["new"]) for e in restarts] == [(1, 2), (2, 3), (3, 4)]
        assert_gaps([float(e["gap"]) for e in restarts], [0.05, 0.15, 0.45])  # type: ignore[arg-type]
        # Every crash was a failure, none was planned.
        assert [(e["code"], e["planned"]) for e in of(result, "exit")] == [(3, False)] * 4
        # The fourth failure inside the window is one too many: no fifth worker.
        assert [e["id"] for e in of(result, "fork")] == [1, 2, 3, 4]
        (give_up,) = of(result, "give_up")
        assert give_up["id"] == 4 and give_up["slot"] == 0
        assert "max_restarts=3" in str(give_up["reason"])
        assert "crash loop" in str(give_up["reason"])
        # The operator sees why the slot stays empty, and the primary ends normally.
        assert "giving up restarting" in result.stderr
        assert "slot 0" in result.stderr
        (done,) = of(result, "done")
        assert done["workers"] == 0

    def test_slot_and_its_variable_survive_every_replacement(self, cluster_env: Cluster) -> None:
        settings = '{"restart": "on-failure", "restart_delay": 0.0, "max_restarts": 2}'
        result = run_crash_loop(cluster_env, settings)
        workers = of(result, "worker")
        assert [e["id"] for e in workers] == [1, 2, 3]
        assert {(e["slot"], e["env"]) for e in workers} == {(0, "0")}
        assert {e["slot"] for e in of(result, "restart")} == {0}

    def test_stable_period_resets_the_delay(self, cluster_env: Cluster) -> None:
        # Worker 3 stays up longer than stable_after: the streak starts over after it.
        settings = (
            '{"restart": "on-failure", "restart_delay": 0.05, "restart_backoff": 3.0,'
            ' "stable_after": 0.4, "max_restarts": 4, "restart_window": 60.0}'
        )
        result = run_crash_loop(cluster_env, settings, "3", "0.6")
        restarts = of(result, "restart")
        assert [e["new"] for e in restarts] == [2, 3, 4, 5]
        assert_gaps([float(e["gap"]) for e in restarts], [0.05, 0.15, 0.05, 0.15])  # type: ignore[arg-type]
        assert [e["id"] for e in of(result, "give_up")] == [5]

    def test_backoff_delays_longer_than_the_window_still_give_up(
        self, cluster_env: Cluster
    ) -> None:
        # Every delay (2.5 s) is longer than the window (2 s): on the wall clock no
        # two failures ever share a window. The window is the slot's running time,
        # and a worker that dies at start adds little to it: the crash loop is seen.
        settings = (
            '{"restart": "on-failure", "restart_delay": 2.5, "restart_backoff": 1.0,'
            ' "max_restarts": 2, "restart_window": 2.0}'
        )
        result = run_crash_loop(cluster_env, settings)
        assert [e["id"] for e in of(result, "fork")] == [1, 2, 3]
        (give_up,) = of(result, "give_up")
        assert give_up["id"] == 3
        assert "running time" in str(give_up["reason"])


POLICY = (
    EMIT
    + """
# Slot 0 exits cleanly, slot 1 with a status, slot 2 by a signal, each unasked.
# Replacements stay up until the primary disconnects them.
import signal

if cluster.is_primary:
    cluster.setup_primary(restart=sys.argv[1], restart_delay=0.0)
    cluster.on("restart", lambda old, new: (
        emit(ev="restart", slot=old.slot, old=old.id, new=new.id),
        new.on("online", new.disconnect),
    ))
    cluster.on("exit", lambda w, code, sig: emit(
        ev="exit", id=w.id, slot=w.slot, code=code, sig=sig, planned=w.exited_after_disconnect
    ))
    for _ in range(3):
        cluster.fork()
    cluster.run()
    emit(ev="done")
else:
    me = cluster.worker
    emit(ev="worker", id=me.id, slot=me.slot, env=os.environ["PYCLUSTER_WORKER_SLOT"])
    if me.id <= 3:
        if me.slot == 0:
            sys.exit(0)
        if me.slot == 1:
            sys.exit(7)
        os.kill(os.getpid(), signal.SIGKILL)
    me.wait_disconnected()
"""
)


class TestPolicy:
    """``restart`` says which unasked exits are replaced: none, failures, or all."""

    @pytest.mark.parametrize(
        ("policy", "replaced"),
        [("never", set()), ("on-failure", {1, 2}), ("always", {0, 1, 2})],
    )
    def test_which_exits_are_replaced(
        self, cluster_env: Cluster, policy: str, replaced: set[int]
    ) -> None:
        result = cluster_env.run(POLICY, policy, timeout=15)
        assert result.returncode == 0, result.stderr
        first = {e["slot"]: (e["code"], e["sig"]) for e in of(result, "exit") if e["id"] <= 3}  # type: ignore[operator]
        assert first == {0: (0, None), 1: (7, None), 2: (None, "SIGKILL")}
        restarts = of(result, "restart")
        assert {e["slot"] for e in restarts} == replaced
        # A replacement keeps its predecessor's slot, in worker.slot and in its
        # environment, under a new id.
        for e in restarts:
            (child,) = [w for w in of(result, "worker") if w["id"] == e["new"]]
            assert child["slot"] == e["slot"] and child["env"] == str(e["slot"])
            assert e["new"] not in (1, 2, 3)
        # The replacements' own exits were asked for: nothing restarts them.
        assert len(of(result, "worker")) == 3 + len(replaced)
        assert of(result, "done")

    def test_give_up_leaves_the_other_slots_running(self, cluster_env: Cluster) -> None:
        result = cluster_env.run(GIVE_UP_ONE_SLOT, timeout=15)
        assert result.returncode == 0, result.stderr
        events = result.events()
        kinds = [e["ev"] for e in events]
        # Slot 1 gave up while slot 0's worker kept serving; it answered afterwards.
        assert kinds.index("give_up") < kinds.index("pong")
        (give_up,) = of(result, "give_up")
        assert give_up["slot"] == 1
        (pong,) = of(result, "pong")
        assert pong["slot"] == 0 and pong["id"] == 1
        assert "worker slot 1: giving up restarting" in result.stderr


GIVE_UP_ONE_SLOT = (
    EMIT
    + """
if cluster.is_primary:
    cluster.setup_primary(restart="on-failure", restart_delay=0.0, max_restarts=2)
    steady = cluster.fork()
    cluster.fork()

    def on_give_up(worker, reason):
        emit(ev="give_up", id=worker.id, slot=worker.slot, reason=reason)
        steady.send("ping")

    def on_message(worker, msg, handle):
        emit(ev="pong", id=worker.id, slot=worker.slot)
        worker.disconnect()

    cluster.on("give_up", on_give_up)
    cluster.on("message", on_message)
    cluster.run()
    emit(ev="done")
else:
    me = cluster.worker
    if me.slot == 1:
        sys.exit(1)
    me.on("message", lambda msg, handle: me.send("pong"))
    me.wait_disconnected()
"""
)

PLANNED = (
    EMIT
    + """
import asyncio

async def exit_of(worker, action):
    done = asyncio.get_running_loop().create_future()
    worker.once("exit", lambda code, sig: done.set_result((code, sig)))
    action()
    return await done

async def main():
    # restart="always" with no delay: any replacement of a planned exit would show.
    cluster.setup_primary(restart="always", restart_delay=0.0, shutdown_timeout=5.0)
    forks, restarts = [], []
    cluster.on("fork", lambda w: forks.append(w.id))
    cluster.on("restart", lambda old, new: restarts.append([old.id, new.id]))
    cluster.on("exit", lambda w, code, sig: emit(
        ev="exit", id=w.id, code=code, sig=sig, planned=w.exited_after_disconnect
    ))
    await cluster.scale(6)
    w = sorted(cluster.workers.values(), key=lambda w: w.slot)
    emit(ev="step", name="disconnect", result=await exit_of(w[0], w[0].disconnect))
    emit(ev="step", name="kill", result=await exit_of(w[1], w[1].kill))
    emit(ev="step", name="self_disconnect", result=await exit_of(w[2], lambda: w[2].send("disconnect")))
    emit(ev="step", name="self_kill", result=await exit_of(w[3], lambda: w[3].send("kill")))
    await cluster.scale(1)
    emit(ev="step", name="scale_down", left=[x.id for x in cluster.workers.values()])
    before = [x.id for x in cluster.workers.values()]
    await cluster.reload()
    emit(ev="step", name="reload", before=before, after=[x.id for x in cluster.workers.values()])
    # A replacement due now would have been forked before this one comes online.
    probe = cluster.fork()
    online = asyncio.get_running_loop().create_future()
    probe.once("online", lambda: online.set_result(None))
    await online
    emit(ev="step", name="probe", forks=list(forks))
    await cluster.shutdown()
    await cluster.wait_closed()
    emit(ev="done", forks=forks, restarts=restarts, workers=len(cluster.workers))

if cluster.is_primary:
    asyncio.run(main())
else:
    me = cluster.worker
    me.on("message", lambda msg, handle: me.disconnect() if msg == "disconnect" else me.kill())
    me.wait_disconnected()
"""
)


def test_planned_exits_are_never_restarted(cluster_env: Cluster) -> None:
    result = cluster_env.run(PLANNED, timeout=20)
    assert result.returncode == 0, result.stderr
    steps = {e["name"]: e for e in of(result, "step")}
    assert steps["disconnect"]["result"] == [0, None]
    # kill() closes the channel first: the worker may end on its own before the signal.
    assert steps["kill"]["result"] in ([None, "SIGTERM"], [0, None])
    assert steps["self_disconnect"]["result"] == [0, None]
    assert steps["self_kill"]["result"] == [None, "SIGTERM"]
    assert steps["scale_down"]["left"] == [5]
    assert steps["reload"]["before"] == [5]
    assert steps["reload"]["after"] == [7]
    # Six from scale(6), one from the reload, the probe: nothing else was forked.
    assert steps["probe"]["forks"] == [1, 2, 3, 4, 5, 6, 7, 8]
    (done,) = of(result, "done")
    assert done["forks"] == [1, 2, 3, 4, 5, 6, 7, 8]
    # The only replacement is the reload's.
    assert done["restarts"] == [[5, 7]]
    assert done["workers"] == 0
    exits = of(result, "exit")
    assert len(exits) == 8
    assert all(e["planned"] for e in exits), exits
    assert "restarting slot" not in result.stderr
