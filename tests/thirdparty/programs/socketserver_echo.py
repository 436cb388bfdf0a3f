"""A ``socketserver.ThreadingTCPServer`` line echo, the standard library's example shape.

Usage: ``socketserver_echo.py PORT``. Each line comes back prefixed with the worker's
pid; the line ``slow`` is answered half a second later. Writes ``cleanup-PID`` once
``serve_forever()`` has returned.
"""

import os
import socketserver
import sys
import time
from pathlib import Path


def mark(what: str) -> None:
    """Leave ``WHAT-PID`` in the working directory, for the test to find."""
    Path(f"{what}-{os.getpid()}").touch()


class Echo(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            if line == b"slow\n":
                mark("slow")
                time.sleep(0.5)
            self.wfile.write(b"%d %s" % (os.getpid(), line))


if __name__ == "__main__":
    with socketserver.ThreadingTCPServer(("127.0.0.1", int(sys.argv[1])), Echo) as server:
        server.serve_forever()
    mark("cleanup")
