"""The server integrations (asyncio, socketserver, http.server) over real sockets.

One server program, ``server.py``, runs unchanged twice: directly, as a plain
single process (no cluster), and as the program of two workers of a cluster. It
answers each connection, datagram or GET with the id of the worker that served it
(0 outside a cluster).
"""

from __future__ import annotations

import http.client
import signal
import socket

import pytest

from tests.conftest import Live, LiveProgram, free_port

SERVER = """
import asyncio, json, os, socket, socketserver, sys
from http.server import BaseHTTPRequestHandler
import pycluster as cluster

KIND = sys.argv[1]
PORT = int(os.environ["PORT"])
ME = cluster.worker.id if cluster.worker is not None else 0
ANSWER = b"%d" % ME

def ready(port):
    # One write per line: the primary and the other worker share this output.
    sys.stdout.write(json.dumps({"ready": KIND, "port": port, "worker": ME}) + "\\n")

class Stream(socketserver.StreamRequestHandler):
    def handle(self):
        self.rfile.readline()
        self.wfile.write(ANSWER)

class Datagram(socketserver.DatagramRequestHandler):
    def handle(self):
        self.wfile.write(ANSWER)

class Web(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(ANSWER)))
        self.end_headers()
        self.wfile.write(ANSWER)

    def log_message(self, *args):
        pass

class MixedTCP(cluster.socketserver.ClusterMixIn, socketserver.ThreadingTCPServer):
    pass

class MixedUDP(cluster.socketserver.ClusterMixIn, socketserver.UDPServer):
    pass

SOCKETSERVERS = {
    "mixin_tcp": (MixedTCP, Stream),
    "mixin_udp": (MixedUDP, Datagram),
    "tcp": (cluster.socketserver.TCPServer, Stream),
    "threading_tcp": (cluster.socketserver.ThreadingTCPServer, Stream),
    "udp": (cluster.socketserver.UDPServer, Datagram),
    "threading_udp": (cluster.socketserver.ThreadingUDPServer, Datagram),
    "http": (cluster.http.HTTPServer, Web),
    "threading_http": (cluster.http.ThreadingHTTPServer, Web),
}

async def on_client(reader, writer):
    await reader.readline()
    writer.write(ANSWER)
    await writer.drain()
    writer.close()
    await writer.wait_closed()

class Answer(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(ANSWER)
        self.transport.close()

async def aio_main():
    if KIND == "aio_start":
        server = await cluster.aio.start_server(on_client, "127.0.0.1", PORT)
    else:
        server = await cluster.aio.create_server(Answer, "127.0.0.1", PORT)
    async with server:
        ready(server.sockets[0].getsockname()[1])
        await server.serve_forever()

if KIND.startswith("aio"):
    asyncio.run(aio_main())
else:
    cls, handler = SOCKETSERVERS[KIND]
    with cls(("127.0.0.1", PORT), handler) as server:
        ready(server.server_address[1])
        server.serve_forever()
"""

PRIMARY = """
import json, sys
import pycluster as cluster

def emit(**kw):
    # One write per line: the workers share this output.
    sys.stdout.write(json.dumps(kw) + "\\n")

cluster.setup_primary(exec="server.py", args=sys.argv[1:])
cluster.on("listening", lambda w, a: emit(listening=w.id, address=list(a)))
cluster.on("exit", lambda w, code, sig: emit(exit=w.id, code=code, signal=sig))
for _ in range(2):
    cluster.fork()
cluster.run()
emit(done=True)
"""

KINDS = [
    "aio_start",
    "aio_create",
    "mixin_tcp",
    "mixin_udp",
    "tcp",
    "threading_tcp",
    "udp",
    "threading_udp",
    "http",
    "threading_http",
]


def ask(kind: str, port: int) -> int:
    """One request of the kind's protocol: the id of the worker that answered."""
    if kind.startswith(("http", "threading_http")):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            assert response.status == 200
            return int(response.read())
        finally:
            conn.close()
    if kind.endswith("udp"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(5)
            c.sendto(b"hi\n", ("127.0.0.1", port))
            return int(c.recvfrom(64)[0])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(b"hi\n")
        data = b""
        while chunk := c.recv(64):
            data += chunk
        return int(data)


def start_server_alone(live: Live, kind: str, port: int) -> LiveProgram:
    """Run ``server.py`` as a plain program, outside any cluster."""
    live.cluster.write("server.py", SERVER)
    return live.start(SERVER, kind, env={"PORT": str(port)}, name="server.py")


@pytest.mark.parametrize("kind", KINDS)
def test_runs_as_a_single_process(live: Live, kind: str) -> None:
    port = free_port()
    server = start_server_alone(live, kind, port)
    assert server.wait_for(ready=kind)[0] == {"ready": kind, "port": port, "worker": 0}
    assert [ask(kind, port) for _ in range(3)] == [0, 0, 0]
    server.proc.send_signal(signal.SIGKILL)
    server.finish()


@pytest.mark.parametrize(
    ("kind", "policy"),
    [(kind, "rr") for kind in KINDS]
    + [(kind, "none") for kind in ("aio_create", "tcp", "threading_http", "mixin_udp")],
)
def test_runs_in_two_workers(live: Live, kind: str, policy: str) -> None:
    port = free_port()
    live.cluster.write("server.py", SERVER)
    primary = live.start(PRIMARY, kind, env={"PORT": str(port), "PYCLUSTER_SCHED_POLICY": policy})
    listening = primary.wait_for(2, timeout=15, address=["127.0.0.1", port, address_type(kind)])
    assert sorted(e["listening"] for e in listening) == [1, 2]
    ready = primary.wait_for(2, ready=kind)
    assert sorted(e["worker"] for e in ready) == [1, 2]
    assert all(e["port"] == port for e in ready)
    answers = [ask(kind, port) for _ in range(8)]
    assert set(answers) <= {1, 2}
    if policy == "rr" and not kind.endswith("udp"):
        # The primary hands connections round-robin: both workers serve.
        assert set(answers) == {1, 2}
    primary.proc.send_signal(signal.SIGTERM)  # a graceful shutdown of the whole cluster
    result = primary.finish()
    assert result.returncode == 0, result.stderr
    exits = [e for e in result.events() if "exit" in e]
    assert sorted(e["exit"] for e in exits) == [1, 2]
    assert all(e["code"] == 0 and e["signal"] is None for e in exits), exits
    assert result.events()[-1] == {"done": True}


def address_type(kind: str) -> int | str:
    """The ``address_type`` the primary reports for the kind's server."""
    return "udp4" if kind.endswith("udp") else 4
