"""A WSGI application on cheroot (CherryPy's server): a thread pool, a selector loop.

Usage: ``cheroot_app.py PORT``. ``/`` answers the worker's pid, ``/slow`` takes half
a second, ``/echo`` returns the body it was sent. Stopped as its documentation shows
(Ctrl-C, then ``stop()``, which connects to the server's own address to wake its
accept); writes ``cleanup-PID`` after that.
"""

import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cheroot import wsgi


def mark(what: str) -> None:
    """Leave ``WHAT-PID`` in the working directory, for the test to find."""
    Path(f"{what}-{os.getpid()}").touch()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/slow":
        mark("slow")
        time.sleep(0.5)
        body = f"slow done {os.getpid()}".encode()
    elif path == "/echo":
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    else:
        body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


if __name__ == "__main__":
    server = wsgi.Server(("127.0.0.1", int(sys.argv[1])), app, numthreads=4)
    try:
        server.start()
    except KeyboardInterrupt:
        server.stop()
    mark("cleanup")
