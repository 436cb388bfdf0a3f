"""The seed's ``exited_after_disconnect`` example: tell a planned exit from a crash.

The primary kills one worker (a planned exit: ``exited_after_disconnect`` is
``True``), while another ends with an error status nobody asked for (``False``). A
supervisor would restart only the second kind.

Run it with ``python examples/exited_after_disconnect.py``.
"""

from __future__ import annotations

import os
import sys

import pycluster as cluster

if cluster.is_primary:

    @cluster.on("exit")
    def on_exit(worker: cluster.Worker, code: int | None, signal: str | None) -> None:
        if worker.exited_after_disconnect is True:
            print("Oh, it was just voluntary – no need to worry")
        else:
            print(f"worker {worker.id} exited on its own ({signal or code}): worth a restart")

    planned = cluster.fork()
    planned.on("online", planned.kill)  # kill worker
    cluster.fork({"CRASH": "1"})
    cluster.run()
else:
    if os.environ.get("CRASH"):
        sys.exit(1)
    cluster.worker.wait_disconnected()
