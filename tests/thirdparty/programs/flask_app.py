"""A Flask application served by ``app.run()``: werkzeug's development server, threaded.

Usage: ``flask_app.py PORT``. ``/`` answers the worker's pid, ``/slow`` takes half a
second, ``/echo`` returns the body it was sent. Writes ``cleanup-PID`` once
``app.run()`` has returned.
"""

import os
import sys
import time
from pathlib import Path

from flask import Flask, request


def mark(what: str) -> None:
    """Leave ``WHAT-PID`` in the working directory, for the test to find."""
    Path(f"{what}-{os.getpid()}").touch()


app = Flask(__name__)


@app.get("/")
def pid() -> str:
    return str(os.getpid())


@app.get("/slow")
def slow() -> str:
    mark("slow")
    time.sleep(0.5)
    return f"slow done {os.getpid()}"


@app.post("/echo")
def echo() -> bytes:
    return request.get_data()


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[1]))
    mark("cleanup")
