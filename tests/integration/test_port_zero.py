"""Port 0 in a cluster: the k-th port-0 server of every worker shares one port.

As Node keys a worker's port-0 listeners by their index, a worker's second port-0
server gets a port of its own (as it would outside a cluster) instead of failing,
and the second server of every worker shares that second port.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import Cluster, Commands

TWO_SERVERS = """
import json, os, signal, socket, sys, threading
import pycluster as cluster

if cluster.is_primary:
    cluster.scheduling_policy = getattr(cluster, sys.argv[1])
    ports = {}

    def ask():
        # Off the primary's loop, which hands the connections over under round robin.
        answers = {}
        for name in ("main", "admin"):
            for _ in range(4):
                with socket.create_connection(("127.0.0.1", ports[1][name]), timeout=5) as c:
                    answers.setdefault(name, []).append(c.recv(64).decode())
        print(json.dumps({"ports": ports, "answers": answers}), flush=True)
        os.kill(os.getpid(), signal.SIGTERM)  # run() disconnects every worker

    def on_message(worker, msg, handle):
        ports[worker.id] = msg
        if len(ports) == 2:
            threading.Thread(target=ask).start()

    cluster.on("message", on_message)
    cluster.fork()
    cluster.fork()
    cluster.run()
else:
    def serve(srv, name):
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.sendall(name.encode())

    try:
        main = cluster.create_server(("127.0.0.1", 0))
        admin = cluster.create_server(("127.0.0.1", 0))
    except OSError as exc:
        cluster.worker.send({"error": str(exc)})
    else:
        for srv, name in ((main, "main"), (admin, "admin")):
            threading.Thread(target=serve, args=(srv, name), daemon=True).start()
        cluster.worker.send({"main": main.getsockname()[1], "admin": admin.getsockname()[1]})
    cluster.worker.wait_disconnected()
"""


@pytest.mark.parametrize("policy", ["SCHED_RR", "SCHED_NONE"])
def test_a_workers_second_port_zero_server_gets_its_own_port(
    cluster_env: Cluster, policy: str
) -> None:
    result = cluster_env.run(TWO_SERVERS, policy, timeout=30)
    assert result.returncode == 0, result.stderr
    (event,) = result.events()
    ports = event["ports"]
    assert isinstance(ports, dict)
    assert "error" not in ports["1"] and "error" not in ports["2"], ports
    # Two servers of one worker: two ports; the k-th of every worker: one port.
    assert ports["1"]["main"] != ports["1"]["admin"]
    assert ports["1"] == ports["2"]
    assert event["answers"] == {"main": ["main"] * 4, "admin": ["admin"] * 4}


PLAIN_SOCKETS = """
import json, socket
servers = []
for name in ("main", "admin"):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    servers.append(s)
seen = []
for s in servers:
    with socket.create_connection(s.getsockname(), timeout=5):
        s.settimeout(5)
        conn, _ = s.accept()
        conn.close()
        seen.append(s.getsockname()[1])
with open("ports.json", "w") as f:
    json.dump(seen, f)
"""


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_run_program_with_two_ephemeral_listeners(commands: Commands, policy: str) -> None:
    # An unchanged program binding two listeners to port 0 (a main and an admin port).
    path = commands.cluster.write("two.py", PLAIN_SOCKETS)
    code, output = commands.run(
        "run", "-w", "1", "--policy", policy, "--no-control", "--restart", "never", str(path),
        timeout=30,
    )  # fmt: skip
    assert code == 0, output
    result = commands.cluster.tmp / "ports.json"
    assert result.exists(), output
    main, admin = json.loads(result.read_text())
    assert main != admin
