"""Tiny WSGI hello-world app: the gunicorn reference for bench/http.py.

Run as ``gunicorn -c bench/servers/gunicorn_conf.py --chdir bench/servers wsgi_app:app``;
the config's hooks announce each worker and write its request count at exit.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

BODY = b"hello world\n"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]

# Atomic under the GIL (one C call), so the gthread worker's threads can share it.
_served = itertools.count()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Answer every request with ``hello world``."""
    next(_served)
    start_response("200 OK", HEADERS)
    return [BODY]


def served_so_far() -> int:
    """Requests served by this worker: next() returns how many times it was called before."""
    return next(_served)
