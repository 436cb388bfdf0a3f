"""Request bodies sent with ``Transfer-Encoding: chunked`` reach WSGI applications whole."""

from __future__ import annotations

import hashlib
import http.client
import os
from collections.abc import Iterator

import pytest

from tests.conftest import Cluster, Commands, free_port
from tests.integration.test_cli_serve import serve, stop

pytest.importorskip("uvicorn")

PLAIN_WSGI_APP = """
import hashlib

def app(environ, start_response):
    assert environ.get("wsgi.input_terminated"), "input not terminated"
    stream = environ["wsgi.input"]
    digest, size = hashlib.sha256(), 0
    while chunk := stream.read(65536):  # to EOF, as PEP 3333 allows when terminated
        digest.update(chunk)
        size += len(chunk)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{size} {digest.hexdigest()}".encode()]
"""

FLASK_UPLOAD_APP = """
import hashlib
from flask import Flask, request

app = Flask(__name__)

@app.post("/")
def upload():
    body = request.get_data()
    return f"{len(body)} {hashlib.sha256(body).hexdigest()}"
"""


def chunks(data: bytes, size: int = 100_000) -> Iterator[bytes]:
    """``data`` in pieces, as a streaming client sends it."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def post_chunked(port: int, data: bytes) -> str:
    """POST ``data`` with ``Transfer-Encoding: chunked`` (no Content-Length): the answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(
            "POST",
            "/",
            body=chunks(data),
            headers={"Transfer-Encoding": "chunked", "Connection": "close"},
            encode_chunked=True,
        )
        response = conn.getresponse()
        assert response.status == 200, response.read()
        return response.read().decode()
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("module", "code"), [("plainapp", PLAIN_WSGI_APP), ("flaskapp", FLASK_UPLOAD_APP)]
)
@pytest.mark.parametrize("http_parser", ["httptools", "h11"])
def test_chunked_bodies_reach_wsgi_apps_whole(
    cluster_env: Cluster, commands: Commands, module: str, code: str, http_parser: str
) -> None:
    if module == "flaskapp":
        pytest.importorskip("flask")
    cluster_env.write(f"{module}.py", code)
    port = free_port()
    command = serve(
        commands,
        cluster_env,
        f"{module}:app",
        *("-w", "1", "-b", f"127.0.0.1:{port}", "--http", http_parser),
    )
    assert "as WSGI" in command.output
    for size in (5 * 1024 * 1024, 0):
        data = os.urandom(size)
        assert post_chunked(port, data) == f"{size} {hashlib.sha256(data).hexdigest()}"
    stop(command)


def test_a_chunked_body_over_the_limit_is_refused(cluster_env: Cluster, commands: Commands) -> None:
    cluster_env.write("plainapp.py", PLAIN_WSGI_APP)
    port = free_port()
    command = serve(
        commands,
        cluster_env,
        "plainapp:app",
        *("-w", "1", "-b", f"127.0.0.1:{port}", "--limit-request-body", "1M"),
    )
    assert post_chunked(port, b"x" * 1000).startswith("1000 ")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(
            "POST",
            "/",
            body=chunks(b"x" * (3 * 1024 * 1024)),
            headers={"Transfer-Encoding": "chunked"},
            encode_chunked=True,
        )
        assert conn.getresponse().status == 413
    except ConnectionError:
        pass  # the server may close before the client sent it all: also a refusal
    finally:
        conn.close()
    stop(command)
