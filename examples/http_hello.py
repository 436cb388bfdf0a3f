"""The seed's first example: every worker serves port 8000, answering ``hello world``.

Run it with ``make demo`` (or ``python examples/http_hello.py``), then
``curl http://127.0.0.1:8000/``. Ctrl-C shuts the workers down gracefully.
"""

from __future__ import annotations

import os
import sys
from http.server import BaseHTTPRequestHandler

import pycluster as cluster

PORT = int(os.environ.get("PORT", "8000"))


class Hello(BaseHTTPRequestHandler):
    """Answers every GET with ``hello world``."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (the name http.server dispatches to)
        body = b"hello world\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would drown the demo's output


if cluster.is_primary:
    print(f"Primary {os.getpid()} is running", flush=True)
    for _ in range(os.cpu_count() or 1):
        cluster.fork()
    cluster.on("exit", lambda worker, code, signal: print(f"worker {worker.process.pid} died"))
    cluster.run()
else:
    server = cluster.http.ThreadingHTTPServer(("", PORT), Hello)
    print(f"Worker {os.getpid()} started", flush=True)
    server.serve_forever()
    sys.exit(0)
