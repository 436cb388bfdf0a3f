"""``cluster.aio`` on uvloop: uvloop accepts in C, so pycluster takes the hand-offs itself."""

from __future__ import annotations

import asyncio
import socket
import subprocess

import pytest

from tests.conftest import Cluster, Result, free_port

pytest.importorskip("uvloop")

_HEAD = """
import asyncio, json, logging, sys
import pycluster as cluster

PORT = int(sys.argv[1])
"""

_RUN = """
if cluster.is_primary:
    for _ in range(WORKERS):
        cluster.fork()
    listening = []
    def on_listening(worker, address):
        listening.append(worker.id)
        if len(listening) == WORKERS:
            print(json.dumps({"ready": True}), flush=True)
    cluster.on("listening", on_listening)
    cluster.run()
else:
    logging.basicConfig(level=logging.WARNING)
    import uvloop
    uvloop.run(main())
"""


def program(serving: str, workers: int = 2) -> str:
    """A test program: ``serving`` defines the worker's ``main()``, run on uvloop; the
    primary forks ``workers`` workers and prints a ready line once all of them listen."""
    return _HEAD + serving + _RUN.replace("WORKERS", str(workers))


def start(
    cluster_env: Cluster, source: str, port: int, policy: str = "rr"
) -> subprocess.Popen[str]:
    """Start ``source`` on ``port`` under ``policy``; returns once every worker listens."""
    proc = cluster_env.start(source, str(port), env={"PYCLUSTER_SCHED_POLICY": policy})
    assert proc.stdout is not None
    assert '"ready"' in proc.stdout.readline()
    return proc


def stop(cluster_env: Cluster, proc: subprocess.Popen[str]) -> Result:
    """SIGTERM the primary; the cluster must end with status 0."""
    proc.terminate()
    result = cluster_env.finish(proc)
    assert result.returncode == 0, result.stderr
    return result


def answer_of(port: int) -> bytes:
    """Everything one new connection is sent until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        answer = b""
        while chunk := client.recv(100):
            answer += chunk
        return answer


PROGRAM = program("""
async def handle(reader, writer):
    writer.write(f"worker {cluster.worker.id}".encode())
    await writer.drain()
    writer.close()

async def main():
    server = await cluster.aio.start_server(handle, "127.0.0.1", PORT)
    async with server:
        await server.serve_forever()
""")


def test_uvloop_server_takes_round_robin_hand_offs(cluster_env: Cluster) -> None:
    port = free_port()
    proc = start(cluster_env, PROGRAM, port)
    answers = set()
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            answers.add(client.recv(100))
    # Round robin: the primary alternates, so both workers answer.
    assert answers == {b"worker 1", b"worker 2"}
    assert "Traceback" not in stop(cluster_env, proc).stderr


PEER_PROGRAM = program("""
class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        host, port = transport.get_extra_info("peername")[:2]
        transport.write(f"{cluster.worker.id} {host} {port}".encode())
        transport.close()

async def main():
    server = await cluster.aio.create_server(Echo, "127.0.0.1", PORT)
    async with server:
        await server.serve_forever()
""")


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_uvloop_connections_know_their_peer(cluster_env: Cluster, policy: str) -> None:
    """pycluster's accept for uvloop skips the peer's address: the transport still has it."""
    port = free_port()
    proc = start(cluster_env, PEER_PROGRAM, port, policy)
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
    assert "Traceback" not in stop(cluster_env, proc).stderr


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
    proc = start(cluster_env, PEER_PROGRAM, port, "none")
    answers = asyncio.run(_burst(port, 200))
    assert len(answers) == 200
    assert set(answers) == {"1", "2"}
    assert "Traceback" not in stop(cluster_env, proc).stderr


FAILING_PROGRAM = program(
    """
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
""",
    workers=1,
)


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_uvloop_connection_that_fails_to_start_is_closed_and_serving_goes_on(
    cluster_env: Cluster, policy: str
) -> None:
    """A protocol factory that raises costs that one connection (closed, logged), no more."""
    port = free_port()
    proc = start(cluster_env, FAILING_PROGRAM, port, policy)
    answers = [answer_of(port) for _ in range(10)]
    assert answers == [b"worker 1", b""] * 5
    result = stop(cluster_env, proc)
    assert result.stderr.count("failed to start: no protocol for this one") == 5
