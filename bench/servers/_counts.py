"""Per-worker request counts for bench/http.py, written once when a worker stops.

Counting is a plain integer increment in the worker; the file is written only at
shutdown, so measuring each worker's share adds no I/O while wrk is running.
The directory comes from ``BENCH_COUNT_DIR``; without it nothing is written.
"""

from __future__ import annotations

import json
import os


def write_count(worker: str, requests: int) -> None:
    """Record that ``worker`` served ``requests`` requests (overwrites an earlier record)."""
    directory = os.environ.get("BENCH_COUNT_DIR")
    if not directory:
        return
    record = {"worker": worker, "pid": os.getpid(), "requests": requests}
    path = os.path.join(directory, f"{worker}.json")
    # Write then rename, so the benchmark never reads half a file if it looks early.
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f)
    os.replace(tmp, path)


def announce_ready(who: str) -> None:
    """Print the line bench/http.py waits for before it starts measuring."""
    print(f"BENCH-READY {who}", flush=True)
