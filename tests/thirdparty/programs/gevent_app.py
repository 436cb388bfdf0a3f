"""A WSGI application on gevent's ``WSGIServer``, after ``monkey.patch_all()``.

Usage: ``gevent_app.py PORT``. gevent's sockets do not go through the standard
library's ``socket.socket``, so pycluster cannot share this program's port: the test
checks that ``pycluster run`` says so and stops.
"""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from typing import Any  # noqa: E402

from gevent.pywsgi import WSGIServer  # noqa: E402


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


if __name__ == "__main__":
    WSGIServer(("127.0.0.1", int(sys.argv[1])), app, log=None).serve_forever()
