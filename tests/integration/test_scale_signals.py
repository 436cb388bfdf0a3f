"""Scaling and shutting down, by call and by signal, with real processes.

``cluster.scale(n)`` and ``cluster.shutdown()`` block outside a loop and are
awaitable inside one. During ``run()`` the primary answers signals the test sends
it for real, once it has printed that it is ready: SIGTTIN/SIGTTOU scale by one,
SIGTERM/SIGINT shut down gracefully (killing what outlives ``shutdown_timeout``; a
second SIGINT kills at once), SIGQUIT kills every worker at once.
"""

from __future__ import annotations

import os
import signal
import time

from tests.conftest import Cluster, Live, LiveProgram, free_port

SCALE = """
import asyncio, json, sys
import pycluster as cluster

def emit(**kw):
    sys.stdout.write(json.dumps(kw) + "\\n")
    sys.stdout.flush()

def alive():
    return sorted([w.slot, w.id] for w in cluster.workers.values())

if cluster.is_primary:
    cluster.setup_primary(restart="always", restart_delay=0.0)
    cluster.on("exit", lambda w, code, sig: emit(
        ev="exit", id=w.id, code=code, sig=sig, planned=w.exited_after_disconnect
    ))
    online = []
    cluster.on("online", lambda w: online.append(w.id))
    cluster.fork()
    # Outside a loop these block until done: the workers they start are online,
    # the ones they retire have exited.
    emit(ev="scaled", n=3, result=cluster.scale(3), alive=alive(), online=sorted(online))
    emit(ev="scaled", n=1, result=cluster.scale(1), alive=alive())
    for bad in (-1, True, 1.5):
        try:
            cluster.scale(bad)
        except ValueError as exc:
            emit(ev="rejected", value=repr(bad), error=str(exc))

    async def main():
        # Inside a running loop the same calls return awaitables.
        await cluster.scale(2)
        emit(ev="scaled", n=2, alive=alive())
        await cluster.scale(2)
        emit(ev="scaled", n=2, alive=alive())
        await cluster.shutdown()
        emit(ev="shut", alive=alive())

    asyncio.run(main())
    emit(ev="done", workers=len(cluster.workers))
else:
    cluster.worker.wait_disconnected()
"""


def test_scale_blocking_then_awaited(cluster_env: Cluster) -> None:
    result = cluster_env.run(SCALE, timeout=20)
    assert result.returncode == 0, result.stderr
    scaled = [e for e in result.events() if e["ev"] == "scaled"]
    assert scaled[0]["result"] is None
    assert scaled[0]["alive"] == [[0, 1], [1, 2], [2, 3]]
    # scale() waits for the workers it started (worker 1 may still be starting).
    assert {2, 3} <= set(scaled[0]["online"])  # type: ignore[call-overload]
    # Scaling down retires the highest slots first.
    assert scaled[1] == {"ev": "scaled", "n": 1, "result": None, "alive": [[0, 1]]}
    # The new worker takes the lowest free slot; scaling to the current size is a no-op.
    assert scaled[2]["alive"] == [[0, 1], [1, 4]]
    assert scaled[3]["alive"] == [[0, 1], [1, 4]]
    rejected = [e["value"] for e in result.events() if e["ev"] == "rejected"]
    assert rejected == ["-1", "True", "1.5"]
    exits = [(e["id"], e["code"], e["planned"]) for e in result.events() if e["ev"] == "exit"]
    # Retired by scale(1) (slots 1 and 2), the rest by shutdown: all planned, and
    # restart="always" replaced none of them.
    assert sorted(exits[:2]) == [(2, 0, True), (3, 0, True)]
    assert sorted(exits[2:]) == [(1, 0, True), (4, 0, True)]
    shut = [e for e in result.events() if e["ev"] in ("shut", "done")]
    assert shut == [{"ev": "shut", "alive": []}, {"ev": "done", "workers": 0}]


SIGNALS = """
import json, os, sys, time
import pycluster as cluster

def emit(**kw):
    sys.stdout.write(json.dumps(kw) + "\\n")
    sys.stdout.flush()

if os.environ.get("LOG_INFO"):
    import logging
    logging.basicConfig(level=logging.INFO)

STUBBORN = {int(x) for x in os.environ.get("STUBBORN", "").split(",") if x}

if cluster.is_primary:
    cluster.setup_primary(restart="always",
                          restart_delay=float(os.environ.get("RESTART_DELAY", "0")),
                          shutdown_timeout=float(os.environ.get("SHUTDOWN_TIMEOUT", "30")))
    cluster.on("online", lambda w: emit(
        ev="online", id=w.id, slot=w.slot, pid=w.process.pid, n=len(cluster.workers)
    ))
    cluster.on("disconnect", lambda w: emit(ev="disconnect", id=w.id))
    cluster.on("exit", lambda w, code, sig: emit(
        ev="exit", id=w.id, code=code, sig=sig, planned=w.exited_after_disconnect, t=time.monotonic()
    ))
    cluster.fork()
    cluster.fork()
    cluster.run()
    emit(ev="done", workers=len(cluster.workers), t=time.monotonic())
else:
    cluster.worker.wait_disconnected()
    if cluster.worker.id in STUBBORN:
        # Disconnected, but this program goes on: only a kill ends it.
        while True:
            time.sleep(0.05)
"""


def start(live: Live, env: dict[str, str] | None = None) -> LiveProgram:
    """Start the primary; return once both first workers are online (handlers installed)."""
    program = live.start(SIGNALS, env=env)
    program.wait_for(ev="online", count=2)
    return program


def exits(program: LiveProgram) -> dict[int, tuple[object, object, object]]:
    return {
        int(e["id"]): (e["code"], e["sig"], e["planned"])  # type: ignore[call-overload]
        for e in program.events()
        if e.get("ev") == "exit"
    }


def test_sigttin_sigttou_then_sigterm_kills_the_stubborn_after_the_timeout(live: Live) -> None:
    program = start(live, {"STUBBORN": "4", "SHUTDOWN_TIMEOUT": "0.5"})
    program.proc.send_signal(signal.SIGTTIN)
    program.wait_for(ev="online", id=3, slot=2)
    # SIGTTOU retires the newest slot, planned: restart="always" does not replace it.
    program.proc.send_signal(signal.SIGTTOU)
    program.wait_for(ev="exit", id=3)
    program.proc.send_signal(signal.SIGTTOU)
    program.wait_for(ev="exit", id=2)
    # Down to one worker, SIGTTOU leaves it be; SIGTTIN brings slot 1 back.
    program.proc.send_signal(signal.SIGTTOU)
    program.proc.send_signal(signal.SIGTTIN)
    program.wait_for(ev="online", id=4, slot=1)
    assert exits(program) == {3: (0, None, True), 2: (0, None, True)}
    # SIGTERM: worker 1 ends at once; worker 4 outlives shutdown_timeout and is killed.
    sent = time.monotonic()
    program.proc.send_signal(signal.SIGTERM)
    result = program.finish(15)
    took = time.monotonic() - sent
    assert result.returncode == 0, result.stderr
    assert exits(program)[1] == (0, None, True)
    assert exits(program)[4] == (None, "SIGKILL", True)
    assert "worker 4 did not disconnect in 0.5 s" in result.stderr
    assert 0.5 <= took < 10
    assert [e["workers"] for e in result.events() if e["ev"] == "done"] == [0]
    assert not [e for e in result.events() if e["ev"] == "online" and int(e["id"]) > 4]  # type: ignore[call-overload]


def test_second_sigint_kills_at_once(live: Live) -> None:
    program = start(live, {"STUBBORN": "1,2", "SHUTDOWN_TIMEOUT": "30"})
    sent = time.monotonic()
    program.proc.send_signal(signal.SIGINT)
    # Graceful first: both are disconnected, but neither program ends by itself.
    program.wait_for(ev="disconnect", count=2)
    assert exits(program) == {}
    program.proc.send_signal(signal.SIGINT)
    result = program.finish(15)
    assert result.returncode == 0, result.stderr
    assert exits(program) == {1: (None, "SIGKILL", True), 2: (None, "SIGKILL", True)}
    # Far sooner than the 30 s shutdown_timeout.
    assert time.monotonic() - sent < 10


def test_sigquit_kills_every_worker_at_once(live: Live) -> None:
    program = start(live)
    program.proc.send_signal(signal.SIGQUIT)
    result = program.finish(15)
    assert result.returncode == 0, result.stderr
    found = exits(program)
    assert {k: v[:2] for k, v in found.items()} == {1: (None, "SIGKILL"), 2: (None, "SIGKILL")}
    # No disconnect was asked for, and restart="always" replaced no one.
    assert not [e for e in result.events() if e["ev"] == "disconnect" and e["id"] not in found]
    assert sorted(int(e["id"]) for e in result.events() if e["ev"] == "online") == [1, 2]  # type: ignore[call-overload]
    assert "SIGQUIT" in result.stderr


RETIRE_AT_ONCE = """
import json, os, sys
from http.server import BaseHTTPRequestHandler
import pycluster as cluster

if cluster.is_primary:
    def on_fork(worker):
        # Retired the moment its server reports listening, as a quick scale-down
        # after a scale-up can do: the server may still be setting itself up.
        worker.on("listening", lambda address: worker.disconnect())
        worker.on("exit", lambda code, sig: sys.stdout.write(
            json.dumps({"ev": "exit", "id": worker.id, "code": code, "sig": sig}) + "\\n"
        ))

    cluster.on("fork", on_fork)
    for _ in range(4):
        cluster.fork()
    cluster.run()
else:
    port = int(os.environ["PORT"])
    with cluster.http.ThreadingHTTPServer(("127.0.0.1", port), BaseHTTPRequestHandler) as server:
        server.serve_forever()
"""


def test_retired_the_moment_it_listens(cluster_env: Cluster) -> None:
    result = cluster_env.run(RETIRE_AT_ONCE, env={"PORT": str(free_port())}, timeout=20)
    assert result.returncode == 0, result.stderr
    assert sorted((e["id"], e["code"], e["sig"]) for e in result.events()) == [
        (i, 0, None) for i in (1, 2, 3, 4)
    ], result.stderr
    assert "Traceback" not in result.stderr


SHUTDOWN_TIMEOUT_ARG = """
import json, sys, time
import pycluster as cluster

def emit(**kw):
    sys.stdout.write(json.dumps(kw) + "\\n")
    sys.stdout.flush()

if cluster.is_primary:
    cluster.setup_primary(shutdown_timeout=30.0)
    cluster.on("exit", lambda w, code, sig: emit(ev="exit", id=w.id, code=code, sig=sig))
    cluster.scale(2)
    started = time.monotonic()
    # The argument overrides the setting: worker 2 is killed after 0.3 s, not 30.
    result = cluster.shutdown(timeout=0.3)
    emit(ev="shut", result=result, took=time.monotonic() - started, workers=len(cluster.workers))
else:
    cluster.worker.wait_disconnected()
    while cluster.worker.id == 2:
        time.sleep(0.05)  # disconnected, yet it goes on
"""


def test_shutdown_timeout_argument(cluster_env: Cluster) -> None:
    result = cluster_env.run(SHUTDOWN_TIMEOUT_ARG, timeout=20)
    assert result.returncode == 0, result.stderr
    events = result.events()
    assert sorted((e["id"], e["code"], e["sig"]) for e in events if e["ev"] == "exit") == [
        (1, 0, None),
        (2, None, "SIGKILL"),
    ]
    (shut,) = [e for e in events if e["ev"] == "shut"]
    assert shut["result"] is None and shut["workers"] == 0
    assert 0.3 <= float(shut["took"]) < 5  # type: ignore[arg-type]
    assert "worker 2 did not disconnect in 0.3 s" in result.stderr


def kill_first(program: LiveProgram) -> None:
    """SIGKILL worker 1 (slot 0); its restart is then pending for RESTART_DELAY seconds."""
    (online,) = program.wait_for(ev="online", id=1)
    os.kill(int(online["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
    program.wait_for(ev="exit", id=1)


def test_shutdown_does_not_wait_for_a_pending_restart(live: Live) -> None:
    program = start(live, {"RESTART_DELAY": "30", "LOG_INFO": "1"})
    kill_first(program)
    # The log line comes on stderr, the events on stdout: the two pipes race.
    program.wait_for_stderr("restarting slot 0 in 30.00 s")
    sent = time.monotonic()
    program.proc.send_signal(signal.SIGTERM)
    result = program.finish(15)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - sent < 10  # not the 30 s the restart would have waited
    assert "worker slot 0: pending restart cancelled" in result.stderr
    assert sorted(int(e["id"]) for e in result.events() if e["ev"] == "online") == [1, 2]  # type: ignore[call-overload]
    assert [e["workers"] for e in result.events() if e["ev"] == "done"] == [0]


def test_scaling_counts_a_pending_restart(live: Live) -> None:
    program = start(live, {"RESTART_DELAY": "30", "LOG_INFO": "1"})
    kill_first(program)
    # Slot 0 waits for its restart, so one more worker makes three, in slot 2.
    program.proc.send_signal(signal.SIGTTIN)
    program.wait_for(ev="online", id=3, slot=2)
    # Scaling down drops the pending restart before any serving worker...
    program.proc.send_signal(signal.SIGTTOU)
    program.wait_for_stderr("worker slot 0: pending restart cancelled")
    assert exits(program) == {1: (None, "SIGKILL", False)}
    # ...then retires the highest slot.
    program.proc.send_signal(signal.SIGTTOU)
    program.wait_for(ev="exit", id=3)
    program.proc.send_signal(signal.SIGTERM)
    result = program.finish(15)
    assert result.returncode == 0, result.stderr
    assert exits(program) == {
        1: (None, "SIGKILL", False),
        3: (0, None, True),
        2: (0, None, True),
    }
    # Slot 0 was never filled again.
    assert sorted(int(e["id"]) for e in result.events() if e["ev"] == "online") == [1, 2, 3]  # type: ignore[call-overload]
