"""The README demo, ``examples/http_hello.py``, run as a user would run it.

It must answer ``hello world`` from its workers, and Ctrl-C (SIGINT to the primary,
as a terminal sends it) must shut the whole cluster down cleanly: exit status 0
and no process left behind.
"""

from __future__ import annotations

import http.client
import os
import signal
import sys
from pathlib import Path

from tests.conftest import Live, free_port, tagged_pids

DEMO = Path(__file__).resolve().parents[2] / "examples" / "http_hello.py"


def get(port: int) -> tuple[int, bytes]:
    """One GET / on a fresh connection: status and body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_hello_world_then_ctrl_c(live: Live) -> None:
    port = free_port()
    workers = os.cpu_count() or 1
    # Whole-line writes (no -u): the primary and workers share one output pipe.
    demo = live.exec([sys.executable, str(DEMO)], env={"PORT": str(port), "PYTHONUNBUFFERED": ""})
    demo.wait_line("Primary ")
    demo.wait_line("started", count=workers, timeout=20)
    assert [get(port) for _ in range(2 * workers)] == [(200, b"hello world\n")] * (2 * workers)
    demo.proc.send_signal(signal.SIGINT)
    result = demo.finish(timeout=20)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(" died") == workers
    assert "Traceback" not in result.stderr, result.stderr
    assert tagged_pids(live.cluster.tag) == []  # every worker is gone with the primary
