"""A port stays open while a crashed worker's replacement is on its way."""

from __future__ import annotations

import socket

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
