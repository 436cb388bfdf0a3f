"""``cluster.aio`` on uvloop: round-robin cannot reach a C accept loop, so the port is shared."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import Cluster, free_port

pytest.importorskip("uvloop")

PROGRAM = """
import asyncio, json, sys
import pycluster as cluster

PORT = int(sys.argv[1])

async def handle(reader, writer):
    writer.write(f"worker {cluster.worker.id}".encode())
    await writer.drain()
    writer.close()

async def main():
    server = await cluster.aio.start_server(handle, "127.0.0.1", PORT)
    async with server:
        await server.serve_forever()

if cluster.is_primary:
    for _ in range(2):
        cluster.fork()
    listening = []
    def on_listening(worker, address):
        listening.append(worker.id)
        if len(listening) == 2:
            print(json.dumps({"ready": True}), flush=True)
    cluster.on("listening", on_listening)
    cluster.run()
else:
    import uvloop
    uvloop.run(main())
"""


def test_uvloop_server_falls_back_to_the_shared_socket(cluster_env: Cluster) -> None:
    port = free_port()
    proc = cluster_env.start(PROGRAM, str(port))
    assert proc.stdout is not None
    assert '"ready"' in proc.stdout.readline()
    answers = set()
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            answers.add(client.recv(100))
    assert answers <= {b"worker 1", b"worker 2"} and answers
    proc.terminate()
    result = cluster_env.finish(proc)
    assert result.returncode == 0, result.stderr
    assert "round-robin cannot reach" in result.stderr
