"""Errors of the primary's ``bind`` reach the worker's ``create_server`` as ``OSError``.

The worker must get the errno the primary got (never hang waiting for a listener),
carry on, and exit normally. Each worker reports what ``create_server`` did as a
message; the primary prints the messages and the exits. A server whose query the
primary answers as a disconnect does (it never serves) still keeps its address.
"""

from __future__ import annotations

import errno
import os
import signal
import socket

import pytest

from tests.conftest import Cluster, Live, free_port

PROGRAM = """
import json, os, socket, sys
import pycluster as cluster

HOST = os.environ.get("HOST", "127.0.0.1")
PORT = int(os.environ["PORT"])

def emit(**kw):
    sys.stdout.write(json.dumps(kw) + "\\n")

if cluster.is_primary:
    if os.environ.get("PRIMARY_HOLDS"):
        held = socket.create_server((HOST, PORT))  # the primary's own, outside the cluster
    if os.environ.get("POLICY") == "reuseport":
        cluster.scheduling_policy = cluster.SCHED_REUSEPORT
    cluster.on("message", lambda w, m, h: emit(worker=w.id, **m))
    cluster.on("listening", lambda w, a: emit(listening=w.id, address=list(a)))
    cluster.on("exit", lambda w, code, sig: emit(exit=w.id, code=code, signal=sig))
    for _ in range(int(os.environ.get("WORKERS", "2"))):
        cluster.fork()
    cluster.run()
    emit(done=True)
else:
    try:
        srv = cluster.create_server((HOST, PORT))
    except OSError as exc:
        cluster.worker.send({"errno": exc.errno, "text": str(exc)})
    else:
        cluster.worker.send({"port": srv.getsockname()[1]})
        if os.environ.get("SERVE"):
            while True:
                try:
                    conn, _ = srv.accept()
                except OSError:
                    break
                with conn:
                    conn.sendall(b"%d" % cluster.worker.id)
        srv.close()
"""

POLICIES = [
    ("rr", {}),
    ("none", {"PYCLUSTER_SCHED_POLICY": "none"}),
    ("reuseport", {"POLICY": "reuseport"}),
]


def errnos(cluster_env: Cluster, **env: str) -> list[object]:
    """Run the program; check every worker got an error and exited cleanly; their errnos."""
    result = cluster_env.run(PROGRAM, env=env, timeout=20)
    assert result.returncode == 0, result.stderr
    events = result.events()
    reports = [e for e in events if "worker" in e]
    exits = [e for e in events if "exit" in e]
    workers = int(env.get("WORKERS", "2"))
    assert len(reports) == len(exits) == workers, events
    assert all(e["code"] == 0 for e in exits), exits  # the error did not kill the worker
    assert not [e for e in events if "listening" in e], events
    assert events[-1] == {"done": True}
    return [r.get("errno") for r in reports]


@pytest.mark.parametrize(("policy", "env"), POLICIES, ids=[p for p, _ in POLICIES])
def test_port_held_by_another_process(
    cluster_env: Cluster, policy: str, env: dict[str, str]
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        got = errnos(cluster_env, PORT=str(port), **env)
    assert got == [errno.EADDRINUSE] * 2


@pytest.mark.parametrize(("policy", "env"), POLICIES, ids=[p for p, _ in POLICIES])
def test_port_held_by_the_primary_itself(
    cluster_env: Cluster, policy: str, env: dict[str, str]
) -> None:
    got = errnos(cluster_env, PORT=str(free_port()), PRIMARY_HOLDS="1", **env)
    assert got == [errno.EADDRINUSE] * 2


def test_address_not_on_this_host(cluster_env: Cluster) -> None:
    # 192.0.2.0/24 is reserved for documentation: never a local address.
    got = errnos(cluster_env, HOST="192.0.2.1", PORT=str(free_port()), WORKERS="1")
    assert got == [errno.EADDRNOTAVAIL]


def privileged_port_protected() -> bool:
    """Whether binding port 81 needs privileges on this host."""
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            return int(f.read()) > 81
    except (OSError, ValueError):
        return True


@pytest.mark.skipif(os.geteuid() == 0, reason="root may bind privileged ports")
@pytest.mark.skipif(not privileged_port_protected(), reason="port 81 is not privileged here")
def test_privileged_port_as_non_root(cluster_env: Cluster) -> None:
    got = errnos(cluster_env, PORT="81", WORKERS="1")
    assert got == [errno.EACCES]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may bind a privileged port")
def test_privileged_port_as_root(cluster_env: Cluster, live: Live) -> None:
    try:
        with socket.create_server(("127.0.0.1", 81)):
            pass
    except OSError:
        pytest.skip("port 81 is in use on this host")
    primary = live.start(PROGRAM, env={"PORT": "81", "WORKERS": "1", "SERVE": "1"})
    assert primary.wait_for(listening=1)[0]["address"] == ["127.0.0.1", 81, 4]
    with socket.create_connection(("127.0.0.1", 81), timeout=5) as c:
        assert c.recv(16) == b"1"
    primary.proc.send_signal(signal.SIGTERM)
    assert primary.finish().returncode == 0


@pytest.mark.parametrize(("policy", "env"), POLICIES, ids=[p for p, _ in POLICIES])
def test_two_clusters_on_one_port(
    cluster_env: Cluster, live: Live, policy: str, env: dict[str, str]
) -> None:
    port = str(free_port())
    first = live.start(PROGRAM, env={"PORT": port, "WORKERS": "1", "SERVE": "1", **env})
    first.wait_for(listening=1)
    # The second cluster's worker is told the port is taken, like any other program.
    assert errnos(cluster_env, PORT=port, WORKERS="1", **env) == [errno.EADDRINUSE]
    # ... and the first cluster still has the port to itself.
    with socket.create_connection(("127.0.0.1", int(port)), timeout=5) as c:
        assert c.recv(16) == b"1"
    first.proc.send_signal(signal.SIGTERM)
    assert first.finish().returncode == 0


BORN_RETIRED = """
import json, os, sys
from http.server import BaseHTTPRequestHandler
import pycluster as cluster
from pycluster.http import ThreadingHTTPServer

if cluster.is_primary:
    worker = cluster.fork()
    # Handled before the worker's next message, its query for the server below: the
    # primary answers that query as it answers any made during a disconnect.
    worker.on("message", lambda msg, handle: worker.disconnect())
    worker.on("exit", lambda code, sig: print(json.dumps({"exit": [code, sig]}), flush=True))
    cluster.run()
else:
    cluster.worker.send("about to serve")
    server = ThreadingHTTPServer((os.environ["HOST"], int(os.environ["PORT"])), BaseHTTPRequestHandler)
    print(json.dumps({"address": server.server_address}), flush=True)
    server.serve_forever()
"""


@pytest.mark.parametrize(
    ("host", "shown"), [("127.0.0.1", "127.0.0.1"), ("localhost", "127.0.0.1"), ("", "0.0.0.0")]
)
def test_server_made_during_a_disconnect_keeps_its_address(
    cluster_env: Cluster, host: str, shown: str
) -> None:
    # It never serves (the worker is going away), but getsockname() answers with the
    # address asked for, as after a retirement: http.server reads it on bind and failed
    # on the retired socket's Unix name.
    port = free_port()
    result = cluster_env.run(BORN_RETIRED, env={"HOST": host, "PORT": str(port)}, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.events() == [{"address": [shown, port]}, {"exit": [0, None]}]
