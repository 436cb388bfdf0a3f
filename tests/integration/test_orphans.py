"""Workers never outlive their primary.

When the primary is killed with SIGKILL (no chance to clean up), every worker sees
its channel close and exits by itself, whatever its main thread is doing.
"""

from __future__ import annotations

import os
import signal
import time

from tests.conftest import Live, pid_alive

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
