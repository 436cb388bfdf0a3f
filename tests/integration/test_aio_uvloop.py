"""``cluster.aio`` on uvloop: uvloop accepts in C, so pycluster takes the hand-offs itself."""

from __future__ import annotations

import asyncio
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


PEER_PROGRAM = """
import asyncio, json, sys
import pycluster as cluster

PORT = int(sys.argv[1])

class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        host, port = transport.get_extra_info("peername")[:2]
        transport.write(f"{cluster.worker.id} {host} {port}".encode())
        transport.close()

async def main():
    server = await cluster.aio.create_server(Echo, "127.0.0.1", PORT)
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


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_uvloop_connections_know_their_peer(cluster_env: Cluster, policy: str) -> None:
    """pycluster's accept for uvloop skips the peer's address: the transport still has it."""
    port = free_port()
    proc = cluster_env.start(PEER_PROGRAM, str(port), env={"PYCLUSTER_SCHED_POLICY": policy})
    assert proc.stdout is not None
    assert '"ready"' in proc.stdout.readline()
    workers = set()
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            answer = b""
            while chunk := client.recv(100):
                answer += chunk
            worker, host, client_port = answer.decode().split()
            assert (host, int(client_port)) == client.getsockname()
            workers.add(worker)
    if policy == "rr":
        assert workers == {"1", "2"}
    proc.terminate()
    result = cluster_env.finish(proc)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


async def _burst(port: int, clients: int) -> list[str]:
    async def one() -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return (await asyncio.wait_for(reader.read(), 20)).decode().split()[0]
        finally:
            writer.close()

    return await asyncio.gather(*(one() for _ in range(clients)))


def test_uvloop_shared_socket_burst_is_shared_and_all_answered(cluster_env: Cluster) -> None:
    """Under ``none`` pycluster accepts for uvloop a share at a time: a burst after a
    quiet spell is all answered, by both workers."""
    port = free_port()
    proc = cluster_env.start(PEER_PROGRAM, str(port), env={"PYCLUSTER_SCHED_POLICY": "none"})
    assert proc.stdout is not None
    assert '"ready"' in proc.stdout.readline()
    answers = asyncio.run(_burst(port, 200))
    assert len(answers) == 200
    assert set(answers) == {"1", "2"}
    proc.terminate()
    result = cluster_env.finish(proc)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


FAILING_PROGRAM = """
import asyncio, gc, json, logging, sys
import pycluster as cluster

PORT = int(sys.argv[1])
made = 0

class Greeter(asyncio.Protocol):
    def connection_made(self, transport):
        transport.write(f"worker {cluster.worker.id}".encode())
        transport.close()

def factory():
    global made
    made += 1
    if made % 2 == 0:
        raise RuntimeError("no protocol for this one")
    return Greeter()

async def main():
    server = await cluster.aio.create_server(factory, "127.0.0.1", PORT)
    async with server:
        await server.serve_forever()

if cluster.is_primary:
    cluster.fork()
    cluster.on("listening", lambda w, a: print(json.dumps({"ready": True}), flush=True))
    cluster.run()
else:
    logging.basicConfig(level=logging.WARNING)
    import uvloop
    uvloop.run(main())
"""


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_uvloop_connection_that_fails_to_start_is_closed_and_serving_goes_on(
    cluster_env: Cluster, policy: str
) -> None:
    """A protocol factory that raises costs that one connection (closed, logged), no more."""
    port = free_port()
    proc = cluster_env.start(FAILING_PROGRAM, str(port), env={"PYCLUSTER_SCHED_POLICY": policy})
    assert proc.stdout is not None
    assert '"ready"' in proc.stdout.readline()
    answers = []
    for _ in range(10):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            answer = b""
            while chunk := client.recv(100):
                answer += chunk
            answers.append(answer)
    assert answers == [b"worker 1", b""] * 5
    proc.terminate()
    result = cluster_env.finish(proc)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("failed to start: no protocol for this one") == 5
