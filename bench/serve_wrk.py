"""``pycluster serve`` beside gunicorn, uvicorn and granian: wrk, interleaved, medians.

Usage (from the repository root)::

    python bench/serve_wrk.py [--rounds 3] [--duration 2s] [NAME ...]

Every server gets 2 workers on 127.0.0.1 and the same hello-world app
(``bench/servers/wsgi_app.py``, ``asgi_app.py``). All are started first, then each
round runs ``wrk -t1 -c50`` against each in turn (keep-alive, then
``Connection: close``), so background load on a shared machine falls on all of
them alike; the table shows each one's median and its ratio to the anchors
(gunicorn sync for WSGI, uvicorn for ASGI). Every wrk run holds ``/tmp/bench.lock``.

Names: ``gunicorn-sync``, ``uvicorn``, ``granian-wsgi``, ``granian-asgi``, and
``serve-IFACE-POLICY`` with IFACE ``wsgi`` (the default, ``--threads auto``),
``wsgi10`` (thread pool, ``--threads 10``), ``wsgi1`` (inline, ``--threads 1``) or
``asgi``, POLICY ``rr``, ``none`` or ``reuseport``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "bench" / "servers"
BIN = Path(sys.executable).parent
DEFAULT = (
    "gunicorn-sync serve-wsgi-rr serve-wsgi-none serve-wsgi10-rr serve-wsgi10-none "
    "serve-wsgi1-rr serve-wsgi1-none granian-wsgi "
    "uvicorn serve-asgi-rr serve-asgi-none granian-asgi"
).split()


def command(name: str, port: int) -> list[str]:
    """The command line that starts server ``name`` on ``port``."""
    host = ["--host", "127.0.0.1", "--port", str(port)]
    if name == "gunicorn-sync":
        return [
            str(BIN / "gunicorn"),
            "-w",
            "2",
            "--chdir",
            str(APPS),
            "-b",
            f"127.0.0.1:{port}",
            "wsgi_app:app",
        ]
    if name == "uvicorn":
        return [
            str(BIN / "uvicorn"),
            "--app-dir",
            str(APPS),
            "asgi_app:app",
            "--workers",
            "2",
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            *host,
        ]
    if name.startswith("granian-"):
        iface = name.split("-")[1]
        return [
            str(BIN / "granian"),
            "--interface",
            iface,
            "--workers",
            "2",
            *host,
            "--working-dir",
            str(APPS),
            f"{iface}_app:app",
        ]
    _, iface, policy = name.split("-")
    app = "asgi_app:app" if iface == "asgi" else "wsgi_app:app"
    threads = {"wsgi1": ["--threads", "1"], "wsgi10": ["--threads", "10"]}.get(iface, [])
    return [
        str(BIN / "pycluster"),
        "serve",
        "-w",
        "2",
        "--policy",
        policy,
        "--app-dir",
        str(APPS),
        "-b",
        f"127.0.0.1:{port}",
        *threads,
        app,
    ]


def wait_ready(port: int) -> None:
    """Until the server answers a request (or 20 s)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        # A raw request: urllib would import bench/http.py (this directory) as ``http``.
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if sock.recv(12).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"no answer on port {port}")


def wrk(port: int, duration: str, close: bool) -> float:
    """Requests per second of one ``wrk -t1 -c50`` run, under the bench lock."""
    header = ["-H", "Connection: close"] if close else []
    argv = [
        "flock",
        "/tmp/bench.lock",
        "wrk",
        "-t1",
        "-c50",
        f"-d{duration}",
        *header,
        f"http://127.0.0.1:{port}/",
    ]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    raise RuntimeError(out)


def main() -> None:
    """Start the servers, run the rounds, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", default="2s")
    parser.add_argument("names", nargs="*", default=DEFAULT)
    args = parser.parse_args()
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for i, name in enumerate(args.names):
            port = 18700 + i
            proc = subprocess.Popen(
                command(name, port),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                cwd=ROOT,
            )
            procs[name] = (proc, port)
        for _, port in procs.values():
            wait_ready(port)
        results: dict[tuple[str, bool], list[float]] = {}
        for _ in range(args.rounds):
            for close in (False, True):
                for name, (_, port) in procs.items():
                    results.setdefault((name, close), []).append(wrk(port, args.duration, close))
    finally:
        for proc, _ in procs.values():
            os.killpg(proc.pid, signal.SIGTERM)
        for proc, _ in procs.values():
            proc.wait(timeout=30)
    median = {key: statistics.median(values) for key, values in results.items()}
    print(
        f"{'server':<24} {'keep-alive':>11} {'ratio':>6} {'close':>9} {'ratio':>6}   (medians of {args.rounds})"
    )
    for name in procs:
        anchor = "uvicorn" if "asgi" in name or name == "uvicorn" else "gunicorn-sync"
        cells = []
        for close in (False, True):
            value = median[(name, close)]
            base = median.get((anchor, close))
            ratio = f"{value / base:.2f}x" if base else "-"
            cells.append(
                f"{value:>11,.0f} {ratio:>6}" if not close else f"{value:>9,.0f} {ratio:>6}"
            )
        print(f"{name:<24} {cells[0]} {cells[1]}")


if __name__ == "__main__":
    main()
