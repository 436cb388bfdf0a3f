"""A port stays open while a crashed worker's replacement is on its way."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import Cluster, free_port

SERVER = """
import json, os, sys
import pycluster as cluster

PORT = int(sys.argv[1])
if cluster.is_primary:
    cluster.setup_primary(restart="on-failure", restart_delay=0.3)
    worker = cluster.fork()
    cluster.once("listening", lambda w, a: print(json.dumps({"pid": w.process.pid}), flush=True))
    cluster.on("restart", lambda old, new: print(json.dumps({"restart": new.id}), flush=True))
    cluster.run()
else:
    srv = cluster.create_server(("127.0.0.1", PORT))
    while True:
        conn, _ = srv.accept()
        conn.recv(100)
        conn.sendall(f"worker {cluster.worker.id}".encode())
        conn.close()
"""


def test_connection_waits_for_the_replacement_instead_of_being_refused(
    cluster_env: Cluster,
) -> None:
    port = free_port()
    proc = cluster_env.start(SERVER, str(port))
    assert proc.stdout is not None
    import json
    import os
    import signal

    first = json.loads(proc.stdout.readline())
    os.kill(first["pid"], signal.SIGKILL)
    # The only worker is dead and its replacement starts in 0.3 s: the connection
    # is accepted and served by the replacement, not refused.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"hi")
        assert client.recv(100) == b"worker 2"
    proc.send_signal(signal.SIGTERM)
    result = cluster_env.finish(proc)
    assert result.returncode == 0, result.stderr


ORPHAN = """
import json, os, sys
import pycluster as cluster

if cluster.is_primary:
    cluster.scheduling_policy = getattr(cluster, sys.argv[1])
    cluster.setup_primary(restart="on-failure", restart_delay=float(sys.argv[2]))
    cluster.on("listening", lambda w, a: print(
        json.dumps({"id": w.id, "pid": w.process.pid, "port": a.port}), flush=True))
    cluster.fork()
    cluster.run()
else:
    srv = cluster.create_server(("127.0.0.1", 0))
    while True:
        conn, _ = srv.accept()
        conn.recv(100)
        conn.sendall(f"worker {cluster.worker.id}".encode())
        conn.close()
"""


def _ask(port: int) -> tuple[bytes | None, float]:
    """Send a request: the answer (``None`` if the connection was refused or cut), and how long."""
    import time

    start = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as client:
            client.sendall(b"hi")
            answer: bytes | None = client.recv(100) or None
    except (ConnectionResetError, ConnectionRefusedError):
        answer = None
    return answer, time.monotonic() - start


@pytest.mark.parametrize("policy", ["SCHED_RR", "SCHED_NONE"])
def test_port_without_a_live_worker_refuses_after_a_second_and_keeps_its_number(
    cluster_env: Cluster, policy: str
) -> None:
    import json
    import os
    import signal

    delay = 6.0  # the replacement comes long after the one-second grace
    proc = cluster_env.start(ORPHAN, policy, str(delay))
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())
    port = first["port"]
    os.kill(first["pid"], signal.SIGKILL)
    # Made while no worker is alive: held a second at most, then closed; never
    # kept waiting for the restart delay.
    answer, took = _ask(port)
    assert answer is None and took < delay - 1, (answer, took)
    # Refused from then on (not queued for the replacement)...
    answer, took = _ask(port)
    assert answer is None and took < delay - 1, (answer, took)
    # ...until the replacement listens: on the same port, though it asked for port 0.
    second = json.loads(proc.stdout.readline())
    assert (second["id"], second["port"]) == (2, port)
    assert _ask(port)[0] == b"worker 2"
    proc.send_signal(signal.SIGTERM)
    result = cluster_env.finish(proc)
    assert result.returncode == 0, result.stderr
    assert "refusing connections until one listens again" in result.stderr
