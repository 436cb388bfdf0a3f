"""Per-worker request counts for bench/http.py, written once when a worker stops.

Counting is a plain integer increment in the worker; the file is written only at
shutdown, so measuring each worker's share adds no I/O while wrk is running.
The directory comes from ``BENCH_COUNT_DIR``; without it nothing is written.

Requests for ``FRESH_PATH`` are also counted apart: bench/http.py's fresh-connection
measurement asks for that path only, so its split between workers is exact whatever
the readiness probes and warm-up sent to ``/``.
"""

from __future__ import annotations

import json
import os
import sys

FRESH_PATH = "/fresh"
FRESH_REQUEST_LINE = b"GET " + FRESH_PATH.encode() + b" "


def worker_key(prefix: str) -> str:
    """This worker's name in the counts: ``pyc-wN`` in a pycluster worker, else by pid.

    A pycluster worker's id is its slot's stable name, so rounds add up by worker;
    pycluster is looked up only if the process already imported it (``pycluster
    serve`` did), so a uvicorn or gunicorn worker never loads it.
    """
    cluster = sys.modules.get("pycluster")
    worker = getattr(cluster, "worker", None) if cluster is not None else None
    if worker is not None:
        return f"pyc-w{worker.id}"
    return f"{prefix}-{os.getpid()}"


def write_count(worker: str, requests: int, fresh: int = 0) -> None:
    """Record that ``worker`` served ``requests`` requests, ``fresh`` of them for FRESH_PATH.

    Overwrites an earlier record of the same worker.
    """
    directory = os.environ.get("BENCH_COUNT_DIR")
    if not directory:
        return
    record = {"worker": worker, "pid": os.getpid(), "requests": requests, "fresh": fresh}
    path = os.path.join(directory, f"{worker}.json")
    # Write then rename, so the benchmark never reads half a file if it looks early.
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f)
    os.replace(tmp, path)


def announce_ready(who: str) -> None:
    """Print the line bench/http.py waits for before it starts measuring."""
    print(f"BENCH-READY {who}", flush=True)
