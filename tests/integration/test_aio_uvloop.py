"""``cluster.aio`` on uvloop: uvloop accepts in C, so pycluster takes the hand-offs itself."""

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


def test_uvloop_server_takes_round_robin_hand_offs(cluster_env: Cluster) -> None:
    port = free_port()
    proc = cluster_env.start(PROGRAM, str(port))
    assert proc.stdout is not None
    assert '"ready"' in proc.stdout.readline()
    answers = set()
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            answers.add(client.recv(100))
    # Round robin: the primary alternates, so both workers answer.
    assert answers == {b"worker 1", b"worker 2"}
    proc.terminate()
    result = cluster_env.finish(proc)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
