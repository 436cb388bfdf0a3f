"""API.md's "Limits and edge rules", each with a real cluster.

``worker.kill(signal)`` reports the signal; relative Unix socket paths too long
from the worker's directory; UDP over IPv6 and ``IPV6_V6ONLY``; ``reload()``
waiting for ``ready()``; a hung worker's replacement keeping its port;
``create_server(None)``.
"""

from __future__ import annotations

import json

from tests.conftest import Cluster
from tests.integration.test_create_server import needs_ipv6

KILL = """
import json, signal, sys
import pycluster as cluster

SIGNALS = ["SIGTERM", "SIGHUP", "SIGUSR1", "SIGTERM", "SIGUSR2", "SIGALRM"] * 3

if cluster.is_primary:
    # Workers inherit an ignored signal (as Node's do): under nohup, SIGHUP would not
    # end them. The test is about the report, so every signal starts at its default.
    for name in set(SIGNALS):
        signal.signal(getattr(signal, name), signal.SIG_DFL)
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


UDP6 = """
import json, socket
import pycluster as cluster

V6ONLY = (socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)

if cluster.is_primary:
    worker = cluster.fork()
    worker.on("message", lambda msg, handle: (print(json.dumps(msg), flush=True),
                                              worker.disconnect()))
    cluster.run()
else:
    u6 = cluster.create_server(("::", 0), family=socket.AF_INET6, type=socket.SOCK_DGRAM)
    port = u6.getsockname()[1]
    # A UDPv4 server shares the port number (Node's test-cluster-dgram-ipv6only).
    u4 = cluster.create_server(("0.0.0.0", port), type=socket.SOCK_DGRAM)
    # Another port (("::", 0) names u6's in this cluster); the wildcard address, since
    # the kernel keeps a socket bound to ::1 IPv6-only whatever the option says.
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
        probe.bind(("::", 0))
        other = probe.getsockname()[1]
    dual = cluster.create_server(
        ("::", other), family=socket.AF_INET6, type=socket.SOCK_DGRAM, dualstack_ipv6=True
    )
    cluster.worker.send({
        "v6only": u6.getsockopt(*V6ONLY),
        "v4_port": u4.getsockname()[1] == port,
        "dual_v6only": dual.getsockopt(*V6ONLY),
    })
    cluster.worker.wait_disconnected()
"""


@needs_ipv6
def test_udp_over_ipv6_leaves_ipv4_to_another_server(cluster_env: Cluster) -> None:
    result = cluster_env.run(UDP6, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.events() == [{"v6only": 1, "v4_port": True, "dual_v6only": 0}]


READY_LATE = """
import asyncio, json, time
import pycluster as cluster

if cluster.is_primary:
    order = []

    def track(worker):
        worker.on("ready", lambda: order.append(["ready", worker.id]))
        worker.on("disconnect", lambda: order.append(["disconnect", worker.id]))

    async def main():
        cluster.on("fork", track)
        first = cluster.fork()
        while not getattr(first, "_ready", False) and not first.is_dead():
            await asyncio.sleep(0.05)
        await cluster.reload()
        print(json.dumps({"order": order}), flush=True)
        await cluster.shutdown()

    asyncio.run(main())
else:
    # Never listens: ready only when it says so, a second after it is online.
    time.sleep(1.0)
    cluster.worker.ready()
    cluster.worker.wait_disconnected()
"""


def test_reload_waits_for_ready_of_a_worker_that_never_listens(cluster_env: Cluster) -> None:
    result = cluster_env.run(READY_LATE, timeout=30)
    assert result.returncode == 0, result.stderr
    (report,) = result.events()
    # The predecessor is disconnected only once its replacement said it is ready.
    assert report["order"] == [["ready", 1], ["ready", 2], ["disconnect", 1]]


NONE_ADDRESS = """
import json, socket
import pycluster as cluster

def attempt():
    try:
        cluster.create_server(None)
    except TypeError as exc:
        return "TypeError"
    return "no error"

def stdlib():
    try:
        socket.create_server(None)
    except TypeError:
        return "TypeError"
    return "no error"

if cluster.is_primary:
    worker = cluster.fork()
    worker.on("message", lambda msg, handle: (
        print(json.dumps({"worker": msg, "primary": attempt(), "stdlib": stdlib()}), flush=True),
        worker.disconnect()))
    cluster.run()
else:
    cluster.worker.send(attempt())
    cluster.worker.wait_disconnected()
"""


def test_create_server_none_is_a_type_error_as_in_the_stdlib(cluster_env: Cluster) -> None:
    result = cluster_env.run(NONE_ADDRESS, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.events() == [
        {"worker": "TypeError", "primary": "TypeError", "stdlib": "TypeError"}
    ]
