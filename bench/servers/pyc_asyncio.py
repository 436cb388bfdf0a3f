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

from _counts import FRESH_REQUEST_LINE, announce_ready, write_count

import pycluster as cluster

BODY = b"hello world\n"
_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n" % len(BODY)
RESPONSE_KEEP_ALIVE = _HEAD + b"\r\n" + BODY
RESPONSE_CLOSE = _HEAD + b"Connection: close\r\n\r\n" + BODY

served = 0
fresh = 0  # requests for FRESH_PATH (bench/http.py's fresh-connection split)


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


def wants_close(head: bytes) -> bool:
    """Whether the request head asks to close the connection after the response.

    HTTP/1.1 keeps the connection unless ``Connection: close``; HTTP/1.0 closes unless
    ``Connection: keep-alive``. Headers are case-insensitive, hence the lower().
    """
    lowered = head.lower()
    if head.split(b"\r\n", 1)[0].endswith(b"HTTP/1.0"):
        return b"connection: keep-alive" not in lowered
    return b"connection: close" in lowered


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Serve GET requests on one connection until the client or the request closes it."""
    global served, fresh
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            served += 1
            if head.startswith(FRESH_REQUEST_LINE):
                fresh += 1
            if wants_close(head):
                writer.write(RESPONSE_CLOSE)
                await writer.drain()
                break
            writer.write(RESPONSE_KEEP_ALIVE)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass  # the client went away mid-request; nothing to answer
    finally:
        writer.close()


def dump_and_exit(signum: int, frame: object) -> None:
    """SIGTERM from the benchmark: record this worker's count and leave at once."""
    assert cluster.worker is not None
    write_count(f"pyc-w{cluster.worker.id}", served, fresh)
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
        write_count(f"pyc-w{cluster.worker.id}", served, fresh)


if __name__ == "__main__":
    main()
