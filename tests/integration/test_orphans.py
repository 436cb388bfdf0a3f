"""Workers never outlive their primary.

When the primary is killed with SIGKILL (no chance to clean up), every worker sees
its channel close and exits by itself, whatever its main thread is doing.
"""

from __future__ import annotations

import os
import signal
import time

from tests.conftest import Cluster, Live, pid_alive, tagged_pids

ORPHANS = """\
import asyncio
import json
import os
import sys
import time

import pycluster as cluster

KINDS = ["waiting", "sleeping", "busy", "asyncio", "accepting"]

if cluster.is_primary:
    workers = [cluster.fork({"KIND": kind}) for kind in KINDS]
    ready = set()

    @cluster.on("message")
    def on_ready(worker, msg, handle):
        ready.add(worker.id)
        if len(ready) == len(workers):
            pids = [w.process.pid for w in workers]
            sys.stdout.write(json.dumps({"event": "ready", "pids": pids}) + "\\n")
            sys.stdout.flush()

    cluster.run()
else:
    kind = os.environ["KIND"]
    if kind == "accepting":
        server = cluster.create_server(("127.0.0.1", 0))
    cluster.worker.send("ready")
    if kind == "waiting":
        cluster.worker.wait_disconnected()
    elif kind == "sleeping":
        time.sleep(600)
    elif kind == "busy":
        while True:
            pass
    elif kind == "asyncio":
        asyncio.run(asyncio.sleep(600))
    else:
        server.accept()
"""


def test_workers_exit_when_the_primary_is_killed(live: Live) -> None:
    primary = live.start(ORPHANS)
    [ready] = primary.wait_for(event="ready", timeout=15)
    pids = [int(pid) for pid in ready["pids"]]  # type: ignore[attr-defined]
    assert len(pids) == 5
    assert all(pid_alive(pid) for pid in pids)

    os.kill(primary.pid, signal.SIGKILL)
    deadline = time.monotonic() + 2
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if pid_alive(pid)]
        time.sleep(0.02)
    assert alive == [], f"workers still running 2 s after the primary died: {alive}"


GONE_BEFORE_BOOT = """\
import os
import time

import pycluster as cluster

if cluster.is_primary:
    cluster.fork()
    print("primary: forked, ending without cluster.run()", flush=True)
else:
    time.sleep(1)
    open("orphan-ran", "w").close()
"""


def test_a_worker_whose_primary_ended_before_it_booted_exits_quietly(
    cluster_env: Cluster,
) -> None:
    # The primary ends at once; its worker comes up to a closed channel. Like a
    # channel that closes later, that ends the worker: no traceback, no orphan run.
    result = cluster_env.run(GONE_BEFORE_BOOT, timeout=20)
    assert result.returncode == 0, result.stderr
    assert "primary: forked" in result.stdout
    assert "Traceback" not in result.stderr and "Error processing" not in result.stderr, (
        result.stderr
    )
    time.sleep(1.5)  # the orphan, if any, writes its file after 1 s
    assert not (cluster_env.tmp / "orphan-ran").exists()
    assert tagged_pids(cluster_env.tag) == []


FORGOT_RUN = """\
import time

import pycluster as cluster

if cluster.is_primary:
    cluster.fork()
    time.sleep(1)  # the worker is up: it runs when the program ends
else:
    time.sleep(60)
"""


def test_a_primary_that_ends_without_run_says_its_workers_stop(cluster_env: Cluster) -> None:
    # Node's primary stays up while it has workers; a program ported without
    # cluster.run() ends instead, and is told why its workers went with it.
    result = cluster_env.run(FORGOT_RUN, timeout=20)
    assert result.returncode == 0, result.stderr
    assert "ended with 1 worker(s) running and no cluster.run()" in result.stderr
    deadline = time.monotonic() + 3
    while tagged_pids(cluster_env.tag) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tagged_pids(cluster_env.tag) == []  # the worker saw its channel close
