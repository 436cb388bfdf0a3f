"""Tiny WSGI hello-world app for bench/http.py: gunicorn, granian and ``pycluster serve``.

Under gunicorn (``gunicorn -c bench/servers/gunicorn_conf.py --chdir bench/servers
wsgi_app:app``) the config's hooks announce each worker and write its request count.
Servers without such hooks set ``BENCH_WSGI_STANDALONE=1``: the app then announces
itself when a worker imports it and writes the count when the worker process exits,
or when it gets SIGTERM (uvicorn, under ``pycluster serve``, ends a worker signalled
directly by re-raising the signal once its graceful shutdown is done, so no exit
handler would run).
"""

from __future__ import annotations

import atexit
import itertools
import os
import signal
import threading
from collections.abc import Callable, Iterable
from typing import Any

from _counts import FRESH_PATH, announce_ready, worker_key, write_count

BODY = b"hello world\n"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]

# Atomic under the GIL (one C call), so the threads of a worker can share them.
_served = itertools.count()
_fresh = itertools.count()  # requests for FRESH_PATH


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Answer every request with ``hello world``."""
    next(_served)
    if environ.get("PATH_INFO") == FRESH_PATH:
        next(_fresh)
    start_response("200 OK", HEADERS)
    return [BODY]


def served_so_far() -> int:
    """Requests served by this worker: next() returns how many times it was called before."""
    return next(_served)


def fresh_so_far() -> int:
    """Requests for FRESH_PATH served by this worker (as served_so_far)."""
    return next(_fresh)


def _write_at_exit() -> None:
    """Write this worker's count as its interpreter exits."""
    write_count(worker_key("wsgi"), served_so_far(), fresh_so_far())


def _write_on_sigterm(signum: int, frame: object) -> None:
    """Write this worker's count, then die of the signal as the server meant it to."""
    _write_at_exit()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


if os.environ.get("BENCH_WSGI_STANDALONE") == "1":
    # Imported by a worker that is about to serve: close enough to ready for the
    # benchmark, which also waits for a correct answer and warms up before measuring.
    announce_ready(f"wsgi pid {os.getpid()}")
    atexit.register(_write_at_exit)
    # A server that installs its own handler while it runs puts this one back after
    # (uvicorn does) before it re-raises the signal; outside the main thread there is
    # no handler to install, and the exit handler is all there is.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _write_on_sigterm)
