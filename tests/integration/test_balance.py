"""Round-robin balance: fresh connections are spread evenly over the workers.

Four workers answer each connection with their id; the test opens 2,000 fresh
connections, one after the other, and counts who answered.
"""

from __future__ import annotations

import signal
import socket
from collections import Counter

import pytest

from tests.conftest import Live, free_port

WORKERS = 4
CONNECTIONS = 2000

PROGRAM = """
import json, os, sys
import pycluster as cluster

PORT = int(os.environ["PORT"])

if cluster.is_primary:
    cluster.on("listening", lambda w, a: sys.stdout.write(json.dumps({"listening": w.id}) + "\\n"))
    for _ in range(int(os.environ["WORKERS"])):
        cluster.fork()
    cluster.run()
else:
    srv = cluster.create_server(("127.0.0.1", PORT))
    answer = b"%d" % cluster.worker.id
    while True:
        try:
            conn, _ = srv.accept()
        except OSError:
            break  # closed by the shutdown
        with conn:
            conn.sendall(answer)
"""


def ask(port: int) -> int:
    """One fresh connection: the id of the worker that answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        data = b""
        while chunk := c.recv(16):
            data += chunk
    return int(data)


@pytest.mark.timeout(60)
def test_fresh_connections_are_spread_evenly(live: Live) -> None:
    port = free_port()
    primary = live.start(PROGRAM, env={"PORT": str(port), "WORKERS": str(WORKERS)})
    primary.wait_for(WORKERS, timeout=20, listening=...)
    # One client at a time: each connection finds every worker free, so the shares
    # show the primary's rotation, not which worker the OS happened to run most
    # (a worker still busy with its last hand-off is rightly passed over).
    answers = [ask(port) for _ in range(CONNECTIONS)]
    primary.proc.send_signal(signal.SIGTERM)
    assert primary.finish().returncode == 0
    shares = Counter(answers)
    assert sorted(shares) == list(range(1, WORKERS + 1)), shares
    mean = CONNECTIONS / WORKERS
    assert all(abs(n - mean) <= 0.1 * mean for n in shares.values()), shares
