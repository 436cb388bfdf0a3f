"""Supervision when things happen at once: crashes, scaling and shutdowns during a reload.

Each program drives its own primary with asyncio and prints what it ended with; the
workers serve one port through ``cluster.create_server`` and wait for a file (``slow``,
``fail``) to decide how their start goes.
"""

from __future__ import annotations

from tests.conftest import Cluster

PRELUDE = """
import asyncio, json, os, signal, sys, time
import pycluster as cluster

def emit(**kw):
    sys.stdout.write(json.dumps(kw) + "\\n")
    sys.stdout.flush()

def alive():
    return sorted([w.slot, w.state] for w in cluster.workers.values() if not w.is_dead())

async def listening(n):
    while sum(1 for w in cluster.workers.values() if w.state == "listening") < n:
        await asyncio.sleep(0.02)

def serve():
    if os.path.exists("fail") and cluster.worker.id > 1:
        os.unlink("fail")
        time.sleep(0.5)
        sys.exit(1)
    if os.path.exists("slow") and cluster.worker.id > 2:
        time.sleep(1.5)
    srv = cluster.create_server(("127.0.0.1", 0))
    if cluster.worker.id == 1 and os.environ.get("RELISTEN"):
        srv.close()  # a server closed and opened again: it serves one port, not two
        srv = cluster.create_server(("127.0.0.1", 0))
    while True:
        try:
            srv.accept()[0].close()
        except OSError:
            return
"""


def run(cluster_env: Cluster, body: str, env: dict[str, str] | None = None) -> dict[str, object]:
    result = cluster_env.run(PRELUDE + body, env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    (final,) = [e for e in result.events() if e.get("ev") == "final"]
    final["stderr"] = result.stderr
    return final


def test_old_worker_crashing_during_its_replacement_keeps_the_slot(cluster_env: Cluster) -> None:
    final = run(
        cluster_env,
        """
if cluster.is_primary:
    cluster.setup_primary(restart="on-failure", restart_delay=0.0)

    async def main():
        old = cluster.fork()
        await listening(1)
        open("fail", "w").close()  # the replacement will fail to start
        reload = asyncio.ensure_future(cluster.reload())
        await asyncio.sleep(0.2)
        os.kill(old.process.pid, signal.SIGKILL)
        try:
            await reload
            error = None
        except RuntimeError as exc:
            error = str(exc)
        await listening(1)
        emit(ev="final", error=error, alive=alive())
        await cluster.shutdown(2)

    asyncio.run(main())
else:
    serve()
""",
    )
    # Both the old worker and its replacement died: the slot is restarted, not lost.
    assert final["error"] == "the replacement for worker 1 failed to start"
    assert final["alive"] == [[0, "listening"]]


def test_scale_down_during_a_reload_retires_a_slot(cluster_env: Cluster) -> None:
    final = run(
        cluster_env,
        """
if cluster.is_primary:
    async def main():
        cluster.fork()
        cluster.fork()
        await listening(2)
        open("slow", "w").close()  # replacements take 1.5 s to listen
        reload = asyncio.ensure_future(cluster.reload(batch=2))
        await asyncio.sleep(0.5)
        await cluster.scale(1)
        try:
            await reload
            error = None
        except RuntimeError as exc:
            error = str(exc)
        await asyncio.sleep(0.3)
        emit(ev="final", alive=alive(), error=error)
        await cluster.shutdown(2)

    asyncio.run(main())
else:
    serve()
""",
    )
    # Slot 1 went away with its replacement; slot 0 was reloaded as planned.
    assert final["alive"] == [[0, "listening"]]
    assert final["error"] is None


def test_reload_after_a_server_was_closed_and_opened_again(cluster_env: Cluster) -> None:
    final = run(
        cluster_env,
        """
if cluster.is_primary:
    cluster.setup_primary(start_timeout=5)

    async def main():
        cluster.fork()
        await listening(1)
        await asyncio.sleep(0.3)
        try:
            await cluster.reload()
            error = None
        except RuntimeError as exc:
            error = str(exc)
        emit(ev="final", error=error, ids=sorted(cluster.workers))
        await cluster.shutdown(2)

    asyncio.run(main())
else:
    serve()
""",
        env={"RELISTEN": "1"},
    )
    assert final["error"] is None, final["stderr"]
    assert final["ids"] == [2]


def test_after_a_shutdown_a_new_cluster_is_supervised_again(cluster_env: Cluster) -> None:
    final = run(
        cluster_env,
        """
if cluster.is_primary:
    async def main():
        cluster.fork()
        await listening(1)
        await cluster.shutdown(2)
        cluster.fork()
        await listening(1)
        await cluster.scale(2)
        await cluster.reload()
        emit(ev="final", alive=alive(), ids=sorted(cluster.workers))
        await cluster.shutdown(2)

    asyncio.run(main())
else:
    serve()
""",
    )
    assert final["alive"] == [[0, "listening"], [1, "listening"]]
    assert final["ids"] == [4, 5]  # 1, then 2 after the shutdown, 3 by scale(2)


SCALED_WHILE_LEAVING = """
import json, sys, time
import pycluster as cluster

if cluster.is_primary:
    cluster.setup_primary(restart="on-failure", restart_delay=0.0)
    forks = []
    cluster.on("fork", lambda w: forks.append(w.id))
    # A crash seen in a 'disconnect' listener (or in an 'exit' listener of another
    # worker, as `pycluster serve --reload` does when the application cannot load):
    # the cluster scales to zero while this worker's exit is still to come.
    first = cluster.fork()
    first.on("disconnect", lambda: cluster.scale(0))
    cluster.run()
    print(json.dumps({"forks": forks}), flush=True)
else:
    time.sleep(0.2)
    sys.exit(4)
"""


def test_a_worker_leaving_when_the_cluster_scales_to_zero_is_not_replaced(
    cluster_env: Cluster,
) -> None:
    result = cluster_env.run(SCALED_WHILE_LEAVING, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.events() == [{"forks": [1]}], result.stderr


DISCONNECT_WHILE_RESTARTING = """
import json, sys, time
import pycluster as cluster

if cluster.is_primary:
    cluster.setup_primary(restart="on-failure", restart_delay=1.0)
    forks = []
    cluster.on("fork", lambda w: forks.append(w.id))
    crashed = cluster.fork()
    steady = cluster.fork()
    # The crashed worker's replacement is due in a second; the program disconnects
    # the cluster meanwhile, to end it.
    crashed.on("exit", lambda *_: cluster.disconnect())
    cluster.run()
    print(json.dumps({"forks": forks}))
else:
    if cluster.worker.id == 1:
        time.sleep(0.2)
        sys.exit(4)
    srv = cluster.create_server(("127.0.0.1", 0))
    while True:
        try:
            srv.accept()[0].close()
        except OSError:
            break  # the disconnect closed the server: the worker ends
"""


def test_disconnecting_the_cluster_cancels_a_pending_restart(cluster_env: Cluster) -> None:
    # The cluster ends: no replacement is forked once disconnect() was called, as a
    # shutdown cancels it.
    result = cluster_env.run(DISCONNECT_WHILE_RESTARTING, timeout=30)
    assert result.returncode == 0, result.stderr
    (final,) = result.events()
    assert final["forks"] == [1, 2], result.stderr
