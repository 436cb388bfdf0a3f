"""pycluster hello-world server on ``cluster.http.ThreadingHTTPServer``, for bench/http.py.

Usage: ``python pyc_threading.py --port N [--workers 2] [--policy env|reuseport]``.

The handler is a plain ``BaseHTTPRequestHandler`` speaking HTTP/1.1, so connections
stay open unless the client sends ``Connection: close``. The scheduling policy comes
from ``PYCLUSTER_SCHED_POLICY`` (``rr`` or ``none``), read by pycluster itself, or is
``SCHED_REUSEPORT`` with ``--policy reuseport``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
from http.server import BaseHTTPRequestHandler

from _counts import FRESH_PATH, announce_ready, write_count

import pycluster as cluster

BODY = b"hello world\n"

# next() on an itertools.count is a single C call, so it is atomic under the GIL:
# a request counter shared by the server's threads without a lock.
_served = itertools.count()
# Requests for FRESH_PATH: bench/http.py's fresh-connection split.
_fresh = itertools.count()


class HelloHandler(BaseHTTPRequestHandler):
    """Answer every GET with ``hello world``."""

    protocol_version = "HTTP/1.1"
    # The head and the body are two writes; without TCP_NODELAY Nagle's algorithm holds
    # the body back until the client acknowledges the head, which would measure the
    # client's delayed-ACK timer instead of the server.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        """Send the fixed response; BaseHTTPRequestHandler handles keep-alive."""
        next(_served)
        if self.path == FRESH_PATH:
            next(_fresh)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        if self.close_connection:
            # http.server closes after this response when the client asked, but does not
            # say so; a client that is not told keeps sending on the dead connection.
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: object) -> None:
        """Silence the per-request log line: writing it would dominate the measurement."""


class HelloServer(cluster.http.ThreadingHTTPServer):
    """pycluster's ThreadingHTTPServer with a production-sized listen backlog.

    socketserver's default backlog is 5: with 64 clients connecting at once the accept
    queue overflows, the kernel drops handshakes and clients retry after a second, so the
    benchmark would measure SYN retransmits. Node and uvicorn use 511 and 2048.
    """

    request_queue_size = 511


def served_so_far() -> int:
    """Requests served by this worker: next() returns how many times it was called before."""
    return next(_served)


def fresh_so_far() -> int:
    """Requests for FRESH_PATH served by this worker (as served_so_far)."""
    return next(_fresh)


def dump_and_exit(signum: int, frame: object) -> None:
    """SIGTERM from the benchmark: record this worker's count and leave at once."""
    assert cluster.worker is not None
    write_count(f"pyc-w{cluster.worker.id}", served_so_far(), fresh_so_far())
    os._exit(0)


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
    return parser.parse_args()


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
    signal.signal(signal.SIGTERM, dump_and_exit)
    with HelloServer(("127.0.0.1", args.port), HelloHandler) as server:
        try:
            server.serve_forever()
        finally:
            assert cluster.worker is not None
            write_count(f"pyc-w{cluster.worker.id}", served_so_far(), fresh_so_far())


if __name__ == "__main__":
    main()
