"""The shared policy shares out a burst: clients that connect at once land evenly.

Two workers serve one port under ``SCHED_NONE`` with unchanged asyncio servers that
keep each connection and answer every line with the worker's id. A burst of clients
opening long-lived connections at once (a connection pool starting up) is split
within a few connections of even, burst after burst, whichever worker the kernel
happened to run; and a worker whose loop is stuck does not hold the burst up.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

import pytest

from tests.conftest import Live, free_port

PROGRAM = """
import asyncio, json, os, sys, time
import pycluster as cluster

PORT = int(os.environ["PORT"])
cluster.scheduling_policy = cluster.SCHED_NONE

if cluster.is_primary:
    cluster.on("listening", lambda w, a: sys.stdout.write(json.dumps({"listening": w.id}) + "\\n"))
    for _ in range(2):
        cluster.fork()
    cluster.run()
else:
    async def handle(reader, writer):
        while line := await reader.readline():
            if line == b"block\\n":
                time.sleep(float(os.environ["BLOCK"]))  # the whole loop is stuck
            writer.write(b"%d\\n" % cluster.worker.id)
            await writer.drain()
        writer.close()

    async def main():
        server = await cluster.aio.start_server(handle, "127.0.0.1", PORT)
        async with server:
            await server.serve_forever()

    asyncio.run(main())
"""
CLIENTS = 40
BURSTS = 3


async def _burst(port: int, clients: int) -> list[int]:
    """Open ``clients`` connections at once, ask each who serves it, then close them."""
    opened = await asyncio.gather(
        *(asyncio.open_connection("127.0.0.1", port) for _ in range(clients))
    )
    try:
        for _, writer in opened:
            writer.write(b"who\n")
        answers = await asyncio.gather(*(reader.readline() for reader, _ in opened))
        return [int(a) for a in answers]
    finally:
        for _, writer in opened:
            writer.close()


@pytest.mark.timeout(60)
def test_bursts_of_long_lived_connections_split_evenly(live: Live) -> None:
    port = free_port()
    primary = live.start(PROGRAM, env={"PORT": str(port), "BLOCK": "0"})
    primary.wait_for(2, timeout=20, listening=...)
    for _ in range(BURSTS):
        shares = Counter(asyncio.run(asyncio.wait_for(_burst(port, CLIENTS), 20)))
        assert sorted(shares) == [1, 2], shares
        # 20 each; the kernel may hand one worker a few before the other wakes.
        assert all(abs(n - CLIENTS / 2) <= 4 for n in shares.values()), shares
        asyncio.run(asyncio.sleep(0.2))  # a quiet spell: the next one is a new burst
    primary.proc.send_signal(signal.SIGTERM)
    assert primary.finish().returncode == 0


@pytest.mark.timeout(60)
def test_a_stuck_worker_does_not_hold_up_a_burst(live: Live) -> None:
    port = free_port()
    primary = live.start(PROGRAM, env={"PORT": str(port), "BLOCK": "8"})
    primary.wait_for(2, timeout=20, listening=...)

    async def scenario() -> list[int]:
        # Find a connection served by worker 2 and get its loop stuck.
        for _ in range(50):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"who\n")
            if int(await reader.readline()) == 2:
                writer.write(b"block\n")
                await writer.drain()
                break
            writer.close()
        else:
            raise AssertionError("no connection reached worker 2")
        try:
            await asyncio.sleep(0.2)  # stuck now; and a quiet spell before the burst
            # Worker 1 serves the whole burst while worker 2 is stuck for seconds.
            return await asyncio.wait_for(_burst(port, 20), 5)
        finally:
            writer.close()

    answers = asyncio.run(scenario())
    assert answers == [1] * 20
    primary.proc.send_signal(signal.SIGKILL)
