"""Real ASGI frameworks under ``pycluster serve -w 2``, on serve's own HTTP protocol.

serve answers ASGI apps with its own HTTP/1.1 (:mod:`pycluster._cli.asgi`), not
uvicorn's: these tests hold it to what the frameworks need of a server. Each starts
a framework's app of ``programs/`` under both policies and checks what its users
would see: both workers answer; request bodies come back intact (with a length and
chunked, three times over one kept-alive connection); a streamed response arrives
whole; HEAD gets the headers and no body; a WebSocket upgrade is served (handed to
uvicorn's WebSocket protocol); a client that leaves a streamed response is seen to
go (``http.disconnect``); and a SIGTERM lets a slow request finish, runs the
lifespan's shutdown and stops every worker with status 0.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import Commands, free_port
from tests.thirdparty.harness import (
    POLICIES,
    Running,
    check_stop,
    echo_body,
    http_get,
    pids_seen,
    start_serve,
    stop_during,
    wait_file,
    ws_connect,
    ws_exchange,
)

STREAMED = b"".join(bytes([65 + i % 26]) * 10_000 for i in range(20))


@dataclass(frozen=True)
class Framework:
    """An ASGI app of ``programs/`` and what it offers."""

    id: str
    app: str
    ws: bool = True
    #: Whether ``/watch`` exists: it streams until the client goes, then writes ``gone-PID``.
    watch: bool = False
    #: Whether the app has a lifespan shutdown that writes ``cleanup-PID``.
    cleanup: bool = True
    #: The WebSocket close code an open WebSocket gets at the stop (uvicorn's 1012).
    ws_close: int | None = 1012


FRAMEWORKS = [
    Framework("starlette", "uvicorn_app:app", watch=True),
    Framework("fastapi", "fastapi_app:app", watch=True),
    Framework("quart", "quart_app:app"),
    Framework("django", "django_asgi:application", ws=False, cleanup=False),
]


def chunked(body: bytes) -> Iterator[bytes]:
    """``body`` as a chunked upload (httpx sends an iterator without a length)."""
    for i in range(0, len(body), 10_000):
        yield body[i : i + 10_000]


def check_bodies(run: Running) -> None:
    """Uploads with a length and chunked, a streamed download, HEAD: over one connection."""
    body = echo_body()
    with httpx.Client(timeout=10) as client:
        for _ in range(3):
            response = client.post(run.url + "/echo", content=body)
            assert response.status_code == 200, run.describe()
            assert response.content == body, run.describe()
            response = client.post(run.url + "/echo", content=chunked(body))
            assert response.status_code == 200, run.describe()
            assert response.content == body, run.describe()
            response = client.get(run.url + "/stream")
            assert response.status_code == 200, run.describe()
            assert hashlib.sha256(response.content).digest() == hashlib.sha256(STREAMED).digest()
    conn = http.client.HTTPConnection("127.0.0.1", run.port, timeout=10)
    try:
        conn.request("HEAD", "/")
        response = conn.getresponse()
        assert response.status == 200, run.describe()
        assert response.read() == b""
        conn.request("GET", "/")  # the same connection: HEAD left nothing behind
        response = conn.getresponse()
        assert response.read().decode().isdigit(), run.describe()
    finally:
        conn.close()


def check_websockets(run: Running) -> None:
    """Both workers take WebSocket connections; small and large messages come back."""
    url = run.url.replace("http://", "ws://") + "/ws"

    def ask() -> int:
        with ws_connect(url) as ws:
            pid, _, text = ws_exchange(ws, "hello").partition(":")
            assert text == "hello"
            big = "é" * 70_000
            assert ws_exchange(ws, big) == f"{pid}:{big}"
            return int(pid)

    seen = pids_seen(ask, run.workers, rounds=15)
    assert seen == run.workers, f"WebSockets served by {seen}; {run.describe()}"


def check_client_leaving(run: Running) -> None:
    """A client that leaves a never-ending stream is seen to go: the app stops it."""
    with socket.create_connection(("127.0.0.1", run.port), timeout=10) as client:
        client.sendall(b"GET /watch HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while received.count(b"tick") < 3:
            chunk = client.recv(4096)
            assert chunk, received
            received += chunk
        assert received.startswith(b"HTTP/1.1 200 "), received
        assert b"transfer-encoding: chunked" in received.lower(), received
    wait_file("gone-*", run.cwd, timeout=10)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("framework", FRAMEWORKS, ids=lambda f: f.id)
def test_framework_under_serve(commands: Commands, framework: Framework, policy: str) -> None:
    port = free_port()
    run = start_serve(commands, policy, port, framework.app)
    seen = pids_seen(lambda: int(http_get(run.url + "/")), run.workers)
    assert seen == run.workers, f"answered by {seen}, workers {run.workers}; {run.describe()}"
    check_bodies(run)
    if framework.watch:
        check_client_leaving(run)
    with contextlib.ExitStack() as stack:
        ws = None
        if framework.ws:
            check_websockets(run)
            ws = stack.enter_context(ws_connect(run.url.replace("http://", "ws://") + "/ws"))
            assert ws_exchange(ws, "open at SIGTERM").endswith(":open at SIGTERM")
        stop = stop_during(run, lambda: http_get(run.url + "/slow", timeout=20), ws)
    check_stop(run, stop, cleanup=framework.cleanup, ws_close=framework.ws_close)
