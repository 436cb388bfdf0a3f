"""pycluster hello-world server on asyncio streams, for bench/http.py.

Usage: ``python pyc_asyncio.py --port N [--workers 2] [--loop asyncio|uvloop]
[--policy env|reuseport]``.

The primary forks the workers and waits; each worker serves
``cluster.aio.start_server`` with a minimal HTTP/1.1 handler. The scheduling policy
comes from ``PYCLUSTER_SCHED_POLICY`` (``rr`` or ``none``), read by pycluster itself,
or is ``SCHED_REUSEPORT`` with ``--policy reuseport``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

import _asyncio_hello
from _asyncio_hello import handle
from _counts import announce_ready, write_count

import pycluster as cluster


def parse_args() -> argparse.Namespace:
    """Parse the options shared by the primary and the workers (workers get the same argv)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--policy",
        choices=("env", "reuseport"),
        default="env",
        help="env: PYCLUSTER_SCHED_POLICY decides (rr or none); reuseport: SCHED_REUSEPORT, "
        "which the variable cannot name",
    )
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    return parser.parse_args()


def dump_and_exit(signum: int, frame: object) -> None:
    """SIGTERM from the benchmark: record this worker's count and leave at once."""
    assert cluster.worker is not None
    write_count(f"pyc-w{cluster.worker.id}", _asyncio_hello.served, _asyncio_hello.fresh)
    os._exit(0)


async def serve(port: int) -> None:
    """Worker: share the port through pycluster and serve until stopped."""
    server = await cluster.aio.start_server(handle, "127.0.0.1", port)
    async with server:
        try:
            await server.serve_forever()
        except asyncio.CancelledError:
            pass  # the server was closed (worker disconnect): a normal end


def run_primary(workers: int, policy: str) -> None:
    """Primary: fork the workers, announce readiness once all listen, run until signalled."""
    if policy == "reuseport":
        cluster.scheduling_policy = cluster.SCHED_REUSEPORT
    listening = 0

    def on_listening(worker: object, address: object) -> None:
        nonlocal listening
        listening += 1
        if listening == workers:
            announce_ready("primary")

    cluster.on("listening", on_listening)
    for _ in range(workers):
        cluster.fork()
    cluster.run()


def main() -> None:
    """Entry point for both roles."""
    args = parse_args()
    if cluster.is_primary:
        run_primary(args.workers, args.policy)
        return
    # A direct handler, not loop.add_signal_handler: the count must be written even if
    # pycluster's own machinery is busy, and the benchmark does not need a graceful close.
    signal.signal(signal.SIGTERM, dump_and_exit)
    runner = asyncio.run
    if args.loop == "uvloop":
        import uvloop

        runner = uvloop.run
    try:
        runner(serve(args.port))
    finally:
        assert cluster.worker is not None
        write_count(f"pyc-w{cluster.worker.id}", _asyncio_hello.served, _asyncio_hello.fresh)


if __name__ == "__main__":
    main()
