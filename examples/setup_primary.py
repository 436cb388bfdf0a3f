"""The seed's ``setup_primary()`` example: workers that run another program.

The first worker runs ``worker_program.py --use https`` with ``silent=True``, so its
output comes to the primary through a pipe. The second call changes only the
arguments: settings merge with the current values, so the ``http`` worker is silent
too, and each call affects only the workers forked after it. The primary prints what
each worker wrote once it has exited.

Run it with ``python examples/setup_primary.py``.
"""

from __future__ import annotations

import os

import pycluster as cluster

WORKER_PROGRAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker_program.py")


def show_output(worker: cluster.Worker) -> None:
    """Print what a silent worker wrote, once it has exited."""
    for stream in (worker.process.stdout, worker.process.stderr):
        for line in stream.read().decode().splitlines():
            print(f"[worker {worker.id}] {line}")
        stream.close()


if cluster.is_primary:
    cluster.setup_primary(exec=WORKER_PROGRAM, args=["--use", "https"], silent=True)
    cluster.fork()  # https worker
    cluster.setup_primary(exec=WORKER_PROGRAM, args=["--use", "http"])
    cluster.fork()  # http worker
    cluster.on("exit", lambda worker, code, signal: show_output(worker))
    cluster.run()
