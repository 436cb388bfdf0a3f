"""API.md's "Limits and edge rules", each with a real cluster.

``worker.kill(signal)`` reports the signal; relative Unix socket paths too long
from the worker's directory; UDP over IPv6 and ``IPV6_V6ONLY``; ``reload()``
waiting for ``ready()``; a hung worker's replacement keeping its port;
``create_server(None)``.
"""

from __future__ import annotations

import json

from tests.conftest import Cluster

KILL = """
import json, sys
import pycluster as cluster

SIGNALS = ["SIGTERM", "SIGHUP", "SIGUSR1", "SIGTERM", "SIGUSR2", "SIGALRM"] * 3

if cluster.is_primary:
    exits = []
    online = 0

    def on_online(worker):
        global online
        online += 1
        if online == len(SIGNALS):
            for w, sig in zip(list(cluster.workers.values()), SIGNALS):
                w.kill(sig)

    cluster.on("online", on_online)
    cluster.on("exit", lambda w, code, sig: exits.append([w.id, code, sig]))
    for _ in SIGNALS:
        cluster.fork()
    cluster.run()
    print(json.dumps(sorted(exits)), flush=True)
else:
    cluster.worker.wait_disconnected()
"""


def test_kill_from_the_primary_reports_the_signal(cluster_env: Cluster) -> None:
    result = cluster_env.run(KILL, timeout=60)
    assert result.returncode == 0, result.stderr
    signals = ["SIGTERM", "SIGHUP", "SIGUSR1", "SIGTERM", "SIGUSR2", "SIGALRM"] * 3
    (line,) = [x for x in result.lines if x.startswith("[")]
    exits = json.loads(line)
    # The signal, never the status 0 of a worker that saw its channel close first.
    assert exits == [[i + 1, None, sig] for i, sig in enumerate(signals)]


RELATIVE_UNIX = """
import json, os, socket, sys, threading
import pycluster as cluster

SUB = "unix-socket-dir"
# A name whose absolute path from the worker's directory is longer than sun_path
# (108 bytes), while "unix-socket-dir/NAME" from the primary's directory fits.
NAME = "A" * (100 - len(SUB) - 1)

if cluster.is_primary:
    os.makedirs(SUB, exist_ok=True)
    cluster.setup_primary(cwd=SUB)
    worker = cluster.fork()
    worker.on("listening", lambda address: print(json.dumps({"address": list(address)}), flush=True))

    @worker.on("message")
    def on_message(msg, handle):
        msg["too_long"] = len(os.path.abspath(os.path.join(SUB, NAME))) > 108
        print(json.dumps(msg), flush=True)
        worker.disconnect()

    cluster.run()
    print(json.dumps({"left": os.listdir(SUB)}), flush=True)
else:
    srv = cluster.create_server(NAME, family=socket.AF_UNIX)

    def serve():
        conn, _ = srv.accept()
        conn.sendall(b"hello")
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(NAME)  # from the worker's directory, where it fits
        cluster.worker.send({"answer": client.recv(100).decode()})
    cluster.worker.wait_disconnected()
"""


def test_relative_unix_path_too_long_from_the_worker_directory(cluster_env: Cluster) -> None:
    # Node's test-cluster-net-listen-relative-path.
    result = cluster_env.run(RELATIVE_UNIX, timeout=30)
    assert result.returncode == 0, result.stderr
    name = "A" * (100 - len("unix-socket-dir") - 1)
    assert result.events() == [
        {"address": [name, None, -1]},
        {"answer": "hello", "too_long": True},
        {"left": []},  # the socket file is removed on close
    ]
