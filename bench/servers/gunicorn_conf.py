"""gunicorn settings for bench/http.py: hooks that make gunicorn report like the others.

``post_worker_init`` prints the readiness line the benchmark waits for (one per
worker); ``worker_exit`` runs in the worker as it stops and writes its request count.
"""

from __future__ import annotations

import os
from typing import Any

from _counts import announce_ready, write_count

accesslog = None
loglevel = "warning"


def post_worker_init(worker: Any) -> None:
    """The worker has loaded the app and is about to accept."""
    announce_ready(f"gunicorn pid {os.getpid()}")


def worker_exit(server: Any, worker: Any) -> None:
    """Write this worker's count; the app module is loaded in the worker by then."""
    import wsgi_app

    write_count(f"gunicorn-{os.getpid()}", wsgi_app.served_so_far(), wsgi_app.fresh_so_far())
