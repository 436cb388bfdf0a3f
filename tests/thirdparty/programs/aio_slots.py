"""A cluster program serving ``cluster.aio.create_server`` with a ``__slots__`` protocol.

Usage: ``aio_slots.py PORT MAX_REQUESTS`` (``0``: no recycling); the policy comes from
``PYCLUSTER_SCHED_POLICY``. The primary forks two workers and prints one JSON line per
event (``listening``, ``restart``, ``exit``). A worker answers each line with its pid
and the line (``slow``: half a second later, after touching ``slow-PID``;
``disconnect``: after calling ``cluster.worker.disconnect()``) and writes
``cleanup-PID`` once its server has closed.
"""

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pycluster as cluster


def mark(what: str) -> None:
    """Leave ``WHAT-PID`` in the working directory, for the test to find."""
    Path(f"{what}-{os.getpid()}").touch()


class LineAnswer(asyncio.Protocol):
    """Answers lines; no instance ``__dict__``, as performance-minded protocols are."""

    __slots__ = ("buffer", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if line == b"slow":
                mark("slow")
                asyncio.get_running_loop().call_later(0.5, self.answer, line)
            else:
                if line == b"disconnect" and cluster.worker is not None:
                    cluster.worker.disconnect()
                self.answer(line)

    def answer(self, line: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"%d %s\n" % (os.getpid(), line))


def emit(**event: Any) -> None:
    print(json.dumps(event), flush=True)


async def serve(port: int) -> None:
    server = await cluster.aio.create_server(LineAnswer, "127.0.0.1", port)
    async with server:
        await server.serve_forever()  # returns once the worker disconnects
    mark("cleanup")


if __name__ == "__main__":
    port, max_requests = int(sys.argv[1]), int(sys.argv[2])
    if cluster.is_primary:
        cluster.setup_primary(max_requests=max_requests or None, shutdown_timeout=10.0)

        @cluster.on("listening")
        def listening(worker: cluster.Worker, address: cluster.Address) -> None:
            emit(event="listening", id=worker.id, pid=worker.process.pid)

        @cluster.on("restart")
        def restart(old: cluster.Worker, new: cluster.Worker) -> None:
            emit(event="restart", old=old.process.pid, new=new.process.pid)

        @cluster.on("disconnect")
        def disconnected(worker: cluster.Worker) -> None:
            emit(event="disconnect", pid=worker.process.pid)

        @cluster.on("exit")
        def exited(worker: cluster.Worker, code: int | None, signal: str | None) -> None:
            emit(event="exit", pid=worker.process.pid, code=code, signal=signal)

        for _ in range(2):
            cluster.fork()
        cluster.run()
        emit(event="done")
    else:
        asyncio.run(serve(port))
