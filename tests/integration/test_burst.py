"""A burst of connections at once: every one is answered.

An unchanged ``ThreadingHTTPServer`` program listens with the stdlib's
``request_queue_size`` of 5. Under round-robin the primary accepts for every
worker, so its listening socket must hold a burst (at least Node's 511, capped by
``somaxconn``): 2,000 clients connecting at the same moment all get their answer.
"""

from __future__ import annotations

import asyncio

from tests.conftest import Cluster, Commands, free_port
from tests.integration.test_cli_run import THREADING_HTTP

CLIENTS = 2000
#: Bursts per test: a too-small backlog drops a few connections in most bursts, not all.
BURSTS = 3
#: Each client's whole exchange. A SYN the kernel dropped is retried after 1 s and
#: 3 s, so a client is answered within a few seconds or never within this budget.
CLIENT_TIMEOUT = 8.0


async def _exchange(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        return await reader.read()
    finally:
        writer.close()


async def _get(port: int, gate: asyncio.Event) -> bool:
    await gate.wait()
    try:
        answer = await asyncio.wait_for(_exchange(port), CLIENT_TIMEOUT)
    except (OSError, asyncio.TimeoutError):
        return False
    return answer.startswith(b"HTTP/1.0 200")


async def _burst(port: int) -> int:
    gate = asyncio.Event()
    tasks = [asyncio.create_task(_get(port, gate)) for _ in range(CLIENTS)]
    await asyncio.sleep(0)
    gate.set()  # every client connects in the same loop iteration
    return sum(await asyncio.gather(*tasks))


def test_two_thousand_simultaneous_connections_are_all_answered(
    cluster_env: Cluster, commands: Commands
) -> None:
    cluster_env.write("server.py", THREADING_HTTP)
    port = free_port()
    command = commands.start("run", "-w", "2", "--policy", "rr", "server.py", str(port))
    command.wait_line("ready: 2 worker(s)")
    command.wait_line(f"listening on 127.0.0.1:{port}", count=2)
    for _ in range(BURSTS):
        assert asyncio.run(_burst(port)) == CLIENTS
    command.proc.terminate()
    command.finish()
