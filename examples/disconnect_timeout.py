"""The seed's ``disconnect()`` example: disconnect a worker, kill it if that takes too long.

The primary tells the worker to shut down, calls ``disconnect()``, and starts a 2 s
timer that would kill the worker; the ``'disconnect'`` event cancels the timer.

The seed's worker serves a port whose connections never end. This one needs no port:
its main thread runs a loop of jobs, and on ``'shutdown'`` it finishes the job in
hand and stops. Its channel closes at once (it has no server whose connections
``disconnect()`` would wait for), so the timer is cancelled and the worker exits
with status 0. A worker whose server connections outlive the 2 s would be killed.

Run it with ``python examples/disconnect_timeout.py``.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pycluster as cluster

KILL_AFTER = 2.0  # seconds

if cluster.is_primary:
    worker = cluster.fork()
    timer: asyncio.TimerHandle | None = None

    @worker.on("message")
    def on_working(message: Any, handle: object) -> None:
        # The seed starts this at 'listening'; our worker announces its first job.
        global timer
        print(f"primary: worker {worker.id} is {message}; asking it to shut down")
        worker.send("shutdown")
        worker.disconnect()
        # Listeners run on the primary's event loop, so its timers are at hand.
        timer = asyncio.get_running_loop().call_later(KILL_AFTER, worker.kill)

    @worker.on("disconnect")
    def on_disconnect() -> None:
        if timer is not None:
            timer.cancel()
        print(f"primary: worker {worker.id} disconnected in time; kill timer cancelled")

    @worker.on("exit")
    def on_exit(code: int | None, signal: str | None) -> None:
        how = f"status {code}" if signal is None else signal
        print(f"primary: worker {worker.id} exited with {how}")

    cluster.run()
else:
    stopping = threading.Event()

    def on_message(message: Any, handle: object) -> None:
        if message == "shutdown":
            # Initiate a graceful close: no new jobs once the current one is done.
            print(f"worker {cluster.worker.id}: finishing the job in hand")
            stopping.set()

    cluster.worker.on("message", on_message)
    cluster.worker.send("working")
    jobs = 0
    while not stopping.is_set():
        stopping.wait(0.05)  # one "job"
        jobs += 1
    print(f"worker {cluster.worker.id}: done after {jobs} job(s)")
