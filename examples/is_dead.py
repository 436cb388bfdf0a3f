"""The seed's ``is_dead()`` example, without the HTTP server.

In the seed, each worker kills itself after answering a request. Here each worker
says hello, then sends itself SIGTERM at once. The primary prints ``is_dead()`` when
a worker is forked (``False``) and once it has exited (``True``).

Run it with ``python examples/is_dead.py``; it ends when both workers are gone.
"""

from __future__ import annotations

import os
import signal

import pycluster as cluster

NUM_WORKERS = 2

if cluster.is_primary:
    print(f"Primary {os.getpid()} is running")
    cluster.on("fork", lambda worker: print("worker is dead:", worker.is_dead()))
    cluster.on("exit", lambda worker, code, sig: print("worker is dead:", worker.is_dead()))
    for _ in range(NUM_WORKERS):
        cluster.fork()
    cluster.run()
else:
    # Flushed now: the signal ends the process before Python would flush at exit.
    print(f"Current process {os.getpid()}", flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
