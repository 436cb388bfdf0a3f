"""Hello-world cluster for bench/chaos.py: a supervised pycluster primary, or a naive one.

Usage: ``python chaos_server.py --port N --log-dir DIR [--workers 4] [--mode MODE]``.

Workers serve ``hello world`` on ``cluster.http.ThreadingHTTPServer`` (HTTP/1.1, so
keep-alive) and record, unbuffered, what reached them, so the benchmark can tell
*where* a failed request was lost. Each worker appends to ``DIR/w<pid>.log``:

* ``T <client port> <time>`` when a connection's descriptor arrives from the primary;
* ``K <client port> <time>`` right before the worker acknowledges it to the primary
  (both: see :class:`TappedHandoff`);
* ``A <client port> <time>`` when the serving loop has accepted it;
* ``R <request id> <client port> <time>`` when it has read a request, before it answers.

A plain ``os.write`` on an ``O_APPEND`` descriptor is in the kernel once it returns, so
the record survives the SIGKILL the benchmark sends.

The primary prints one JSON line per lifecycle event (``fork``, ``listening``,
``exit``, ``restart``, ``reload``, ``stats``), stamped with ``time.time()``; the
benchmark follows them to pick live victims and to time recoveries. Modes:

* ``supervised`` (default): ``setup_primary(restart="on-failure", ...)`` and
  ``cluster.run()``, whose SIGHUP is pycluster's rolling reload (each replacement
  listens before its predecessor is disconnected and drains).
* ``naive``: PM2's reload, "start new, kill old", built from ``fork()`` and
  ``worker.kill()``: on SIGUSR2 fork a new worker per old one and, as soon as the new
  one listens, SIGTERM an old one. An application without a handler dies at once on
  that signal (as a Node app does on PM2's SIGINT), with whatever it was serving.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

import pycluster as cluster

BODY = b"hello world\n"
_log_fd = -1


def record(line: str) -> None:
    """Append one line to this worker's log; a single unbuffered write survives SIGKILL."""
    if _log_fd >= 0:
        os.write(_log_fd, line.encode())


class HelloHandler(BaseHTTPRequestHandler):
    """Answer every GET with ``hello world``, logging the request id first."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body are two writes: don't wait on Nagle

    def do_GET(self) -> None:
        """Record ``R <id> <port>``, then send the fixed response."""
        rid = self.headers.get("X-Req-Id", "-")
        record(f"R {rid} {self.client_address[1]} {time.time():.6f}\n")
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: object) -> None:
        """No per-request log line on stderr."""


def tap_handoffs() -> None:
    """Record each round-robin hand-off as it arrives and as it is acknowledged.

    Benchmark instrumentation, wrapping the worker's acknowledgement
    (``pycluster._ports.listener.Listener.acknowledge``). The primary keeps its own
    copy of a handed-off connection until the worker acknowledges it (one byte back on
    the hand-off socket), and re-routes it if the worker dies first. This records
    ``T <client port>`` the moment a descriptor has arrived, and ``K <client port>``
    just *before* the acknowledgement is sent. So:

    * no worker recorded T: the connection never got past the primary;
    * T without K in a worker that died: the primary still held the connection and
      had to give it to another worker;
    * K: the worker (possibly) acknowledged it; from then on it was the worker's.
    """
    from pycluster._ports.listener import Listener

    original = Listener.acknowledge

    def acknowledge(sock: socket.socket, fd: int) -> bool:
        port = peer_port(fd)
        now = time.time()
        record(f"T {port} {now:.6f}\n")
        record(f"K {port} {time.time():.6f}\n")
        return original(sock, fd)

    Listener.acknowledge = staticmethod(acknowledge)  # type: ignore[method-assign]


def peer_port(fd: int) -> int:
    """The client's port of connected socket ``fd`` (-1 if it is already gone)."""
    sock = socket.socket(fileno=fd)
    try:
        return int(sock.getpeername()[1])
    except OSError:
        return -1
    finally:
        sock.detach()


class HelloServer(cluster.http.ThreadingHTTPServer):
    """ThreadingHTTPServer with a real listen backlog (see ``tap_handoffs``)."""

    request_queue_size = 511  # socketserver's 5 would drop handshakes under load
    daemon_threads = True

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Called by the serving loop right after ``accept()``: log the connection."""
        port = client_address[1] if isinstance(client_address, tuple) else -1
        record(f"A {port} {time.time():.6f}\n")
        return True


def emit(event: str, **fields: Any) -> None:
    """Print one event line for the benchmark."""
    print(json.dumps({"ev": event, "t": time.time(), **fields}), flush=True)


def follow_lifecycle() -> None:
    """Report every worker event the benchmark needs, as JSON lines."""

    @cluster.on("fork")
    def _fork(worker: cluster.Worker) -> None:
        emit("fork", id=worker.id, pid=worker.process.pid, slot=worker.slot)

    @cluster.on("listening")
    def _listening(worker: cluster.Worker, address: Any) -> None:
        emit("listening", id=worker.id, pid=worker.process.pid, slot=worker.slot)

    @cluster.on("exit")
    def _exit(worker: cluster.Worker, code: int | None, sig: str | None) -> None:
        emit(
            "exit",
            id=worker.id,
            pid=worker.process.pid,
            code=code,
            signal=sig,
            planned=bool(worker.exited_after_disconnect),
        )

    @cluster.on("restart")
    def _restart(old: cluster.Worker, new: cluster.Worker) -> None:
        emit("restart", old=old.id, new=new.id, slot=new.slot)

    @cluster.on("give_up")
    def _give_up(worker: cluster.Worker, reason: str) -> None:
        emit("give_up", id=worker.id, reason=str(reason))


def supervised_primary(args: argparse.Namespace) -> None:
    """pycluster's own supervision: restart on failure, SIGHUP reloads, SIGUSR1 reports."""
    cluster.setup_primary(
        restart="on-failure",
        restart_delay=args.restart_delay,
        restart_backoff=args.restart_backoff,
        # The benchmark kills on purpose, far more often than a crash loop would: a
        # slot may be hit a dozen times a minute and must not be given up on.
        max_restarts=100_000,
        shutdown_timeout=5.0,
    )
    follow_lifecycle()

    def on_usr1(signum: int, frame: object) -> None:
        # CPython runs this handler between two bytecodes of the main thread, the
        # primary's loop thread, so statistics() sees a consistent state.
        emit("stats", workers=cluster.statistics())

    signal.signal(signal.SIGUSR1, on_usr1)
    for _ in range(args.workers):
        cluster.fork()
    cluster.run()
    emit("stopped")


def naive_primary(args: argparse.Namespace) -> None:
    """PM2-style reload on SIGUSR2: fork a new worker, SIGTERM an old one once it listens."""
    follow_lifecycle()

    def reload() -> None:
        olds = [w for w in (cluster.workers or {}).values() if w.is_connected()]
        emit("reload", old=[w.id for w in olds])
        for old in olds:
            new = cluster.fork()
            new.once("listening", lambda *_, old=old: old.kill("SIGTERM"))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR2, reload)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: cluster.disconnect())
        for _ in range(args.workers):
            cluster.fork()
        await cluster.wait_closed()

    asyncio.run(main())
    emit("stopped")


def worker_main(args: argparse.Namespace) -> None:
    """Serve until disconnected (or killed)."""
    global _log_fd
    _log_fd = os.open(
        os.path.join(args.log_dir, f"w{os.getpid()}.log"),
        os.O_WRONLY | os.O_CREAT | os.O_APPEND,
        0o644,
    )
    tap_handoffs()
    with HelloServer(("127.0.0.1", args.port), HelloHandler) as server:
        server.serve_forever()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options shared by the primary and its workers (workers get the same argv)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-dir", required=True)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--mode", choices=("supervised", "naive"), default="supervised")
    parser.add_argument("--restart-delay", type=float, default=0.05)
    parser.add_argument("--restart-backoff", type=float, default=2.0)
    return parser.parse_args(argv)


def main() -> None:
    """Entry point for both roles."""
    args = parse_args()
    if cluster.is_worker:
        worker_main(args)
    elif args.mode == "naive":
        naive_primary(args)
    else:
        supervised_primary(args)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
