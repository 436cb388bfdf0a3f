"""``pycluster serve``'s own HTTP/1.1 for ASGI apps, from real clients (httpx, sockets).

What an ASGI app and its clients rely on: the scope as uvicorn gives it, the
lifespan's state in each request, framing chosen for responses that declare none,
flow control on request bodies, 500 for apps that fail before they answer, cut
connections for apps that fail after, refused header injection, pipelining in
order, 100-continue only when the body is asked for, 400 for garbage, idle
keep-alive connections closed after ``--keep-alive``, and 503 beyond
``--limit-concurrency``.
"""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import threading
import time

import pytest

from tests.conftest import (
    Cluster,
    Command,
    Commands,
    check_head_limit,
    free_port,
    post_after_100_continue,
)
from tests.conftest import exchange_until_closed as exchange
from tests.integration.test_cli_serve import serve, stop
from tests.integration.test_serve_wsgi import dechunk

pytest.importorskip("uvicorn")
pytest.importorskip("httptools")
httpx = pytest.importorskip("httpx")

APP = """
import asyncio, hashlib, json, os
from pathlib import Path

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["started"] = "yes"
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"][len(scope["root_path"]):]

    async def answer(body, headers=()):
        await send({"type": "http.response.start", "status": 200, "headers": list(headers)})
        await send({"type": "http.response.body", "body": body})

    if path.startswith("/scope"):
        keys = ("type", "asgi", "http_version", "method", "scheme", "path", "raw_path",
                "root_path", "query_string", "state")
        seen = {k: scope[k] for k in keys}
        seen["raw_path"] = seen["raw_path"].decode()
        seen["query_string"] = seen["query_string"].decode()
        seen["headers"] = [[n.decode(), v.decode()] for n, v in scope["headers"]]
        seen["client"] = scope["client"]
        seen["server"] = scope["server"]
        await answer(json.dumps(seen).encode(), [(b"content-type", b"application/json")])
    elif path == "/whole":
        await answer(b"whole")
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(int(scope["query_string"])):
            await send({"type": "http.response.body", "body": b"x" * 1000, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/pid":
        await answer(str(os.getpid()).encode())
    elif path == "/big":
        # Produced as fast as send() returns: flow control must hold the app back.
        await send({"type": "http.response.start", "status": 200, "headers": []})
        block = b"z" * 65536
        for _ in range(int(scope["query_string"])):
            await send({"type": "http.response.body", "body": block, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/echo":
        digest, size, more = hashlib.sha256(), 0, True
        while more:
            message = await receive()
            digest.update(message["body"])
            size += len(message["body"])
            more = message["more_body"]
            await asyncio.sleep(0.001)  # a slow reader: the server must hold the rest
        await answer(f"{size} {digest.hexdigest()}".encode())
    elif path == "/two-readers":
        # Two tasks of the app wait on receive() at once: both must wake.
        got = await asyncio.wait_for(asyncio.gather(receive(), receive()), 5)
        await answer(b"".join(message.get("body", b"") for message in got))
    elif path == "/ignore-body":
        await answer(b"not read")
    elif path == "/fail-early":
        raise RuntimeError("boom before the response")
    elif path == "/fail-after-start":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"transfer-encoding", b"chunked")]})
        raise RuntimeError("boom after the start")
    elif path == "/fail-late":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"10")]})
        await send({"type": "http.response.body", "body": b"12345", "more_body": True})
        raise RuntimeError("boom in the middle")
    elif path == "/nothing":
        return
    elif path == "/bad-status":
        await send({"type": "http.response.start", "status": 1000, "headers": []})
        await send({"type": "http.response.body", "body": b"no"})
    elif path == "/inject":
        await answer(b"no", [(b"x-bad", b"a\\r\\nx-injected: 1")])
    elif path == "/hold":
        Path("held").touch()
        await asyncio.sleep(1)
        await answer(b"held")
    else:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"not found"})
"""


def start(commands: Commands, cluster_env: Cluster, *options: str) -> tuple[Command, int]:
    """``pycluster serve asgiapp:app`` with ``options``; the command and its port."""
    cluster_env.write("asgiapp.py", APP)
    port = free_port()
    command = serve(commands, cluster_env, "asgiapp:app", "-b", f"127.0.0.1:{port}", *options)
    assert "as ASGI" in command.output
    return command, port


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_asgi_rules_over_keep_alive(cluster_env: Cluster, commands: Commands, policy: str) -> None:
    # --root-path: a proxy strips /app, and the app sees it in path and root_path.
    command, port = start(
        commands, cluster_env, "-w", "2", "--policy", policy, "--root-path", "/app"
    )
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        response = client.get("/scope%20x?a=1&b=%20", headers=[("X-Twice", "1"), ("X-Twice", "2")])
        seen = json.loads(response.text)
        client_port = seen.pop("client")[1]
        assert seen == {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/app/scope x",
            "raw_path": "/app/scope%20x",
            "root_path": "/app",
            "query_string": "a=1&b=%20",
            "state": {"started": "yes"},
            "headers": [
                ["host", f"127.0.0.1:{port}"],
                ["accept", "*/*"],
                ["accept-encoding", "gzip, deflate"],
                ["connection", "keep-alive"],
                ["user-agent", f"python-httpx/{httpx.__version__}"],
                ["x-twice", "1"],
                ["x-twice", "2"],
            ],
            "server": ["127.0.0.1", port],
        }
        assert isinstance(client_port, int)
        # A whole body without a length gets one; a streamed one is chunked.
        whole = client.get("/whole")
        assert (whole.text, whole.headers["content-length"]) == ("whole", "5")
        streamed = client.get("/stream?300")
        assert streamed.headers["transfer-encoding"] == "chunked"
        assert streamed.content == b"x" * 300_000
        # HEAD: the headers, no body, and the connection goes on.
        assert client.head("/whole").content == b""
        # A large body, read slowly by the app, arrives whole; and one it never reads
        # does not hold the connection.
        body = bytes(range(256)) * 8192
        echoed = client.post("/echo", content=body).text
        assert echoed == f"{len(body)} {hashlib.sha256(body).hexdigest()}"
        assert client.post("/ignore-body", content=body).text == "not read"
        assert client.get("/whole").text == "whole"
        # The app's failures before any of its answer left are 500s (a start alone
        # is held for its body, so a failure right after it is one too).
        for path in ("/fail-early", "/nothing", "/inject", "/bad-status", "/fail-after-start"):
            failed = client.get(path)
            assert (failed.status_code, failed.text) == (500, "Internal Server Error"), path
            assert "x-injected" not in failed.headers
            assert "transfer-encoding" not in failed.headers
        # One that fails after it answered cuts the connection: the client sees it.
        with pytest.raises(httpx.RemoteProtocolError):
            client.get("/fail-late")
        assert client.get("/nope").status_code == 404
    command.proc.send_signal(signal.SIGTERM)
    code, output = command.finish()
    assert code == 0, output
    assert "RuntimeError: boom before the response" in output  # logged, traceback too
    assert "ASGI callable returned without starting response" in output


def test_pipelining_http10_and_bad_requests(cluster_env: Cluster, commands: Commands) -> None:
    command, port = start(commands, cluster_env, "-w", "1")
    data = exchange(
        port,
        b"GET /stream?3 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /whole HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    answers = data.split(b"HTTP/1.1 ")[1:]
    assert [a[:3] for a in answers] == [b"200", b"200", b"404"], data
    head, _, chunked = answers[0].partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    assert dechunk(chunked) == b"x" * 3000
    assert answers[1].endswith(b"\r\n\r\nwhole")
    # HTTP/1.0 has no chunks: a streamed body ends with the connection.
    data = exchange(port, b"GET /stream?2 HTTP/1.0\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"connection: close" in head and b"transfer-encoding" not in head
    assert body == b"x" * 2000
    # Two receive() waiting at once both wake when the body comes.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /two-readers HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n")
        time.sleep(0.2)
        sock.sendall(b"ok")
        data = b""
        while not data.endswith(b"ok") and (chunk := sock.recv(65536)):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n\r\nok"), data
    # Garbage is a 400, and the connection closes.
    data = exchange(port, b"NOT HTTP AT ALL\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400 "), data
    check_head_limit(port, b"/whole")
    stop(command)


def test_a_slow_reader_gets_a_large_stream_whole(cluster_env: Cluster, commands: Commands) -> None:
    """Flow control: send() waits while the client is behind, and nothing is lost."""
    command, port = start(commands, cluster_env, "-w", "1")
    blocks = 512  # 32 MiB
    digest = hashlib.sha256()
    received = 0
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20) as client:
        pid = int(client.get("/pid").text)
        peak_before = peak_rss(pid)
        with client.stream("GET", f"/big?{blocks}") as response:
            for piece in response.iter_bytes():
                digest.update(piece)
                received += len(piece)
                if received < 4 * 1024 * 1024:
                    time.sleep(0.001)  # slow at first: the server must wait, not buffer
        assert received == blocks * 65536
        assert digest.hexdigest() == hashlib.sha256(b"z" * received).hexdigest()
        # Held back, not buffered: the worker's peak memory grew by far less than
        # the 32 MiB it sent.
        assert peak_rss(pid) - peak_before < 12 * 1024 * 1024
        assert client.get("/whole").text == "whole"  # the connection goes on
    stop(command)


def peak_rss(pid: int) -> int:
    """The highest resident memory process ``pid`` has had, in bytes (``VmHWM``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


def test_expect_100_continue_only_when_the_body_is_read(
    cluster_env: Cluster, commands: Commands
) -> None:
    command, port = start(commands, cluster_env, "-w", "1")
    data = post_after_100_continue(port, "/echo", b"hello")
    assert data.startswith(b"HTTP/1.1 200 ")
    assert data.endswith(b"5 " + hashlib.sha256(b"hello").hexdigest().encode())
    # An app that answers without reading the body: no 100 Continue, just the answer.
    data = exchange(
        port,
        b"POST /ignore-body HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\nConnection: close\r\n\r\n",
    )
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"not read"), data
    stop(command)


def test_idle_keep_alive_connections_close_after_the_timeout(
    cluster_env: Cluster, commands: Commands
) -> None:
    command, port = start(commands, cluster_env, "-w", "1", "--keep-alive", "1")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /whole HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while not data.endswith(b"whole"):
            data += sock.recv(65536)
        answered = time.monotonic()
        assert sock.recv(65536) == b""  # closed by the server, not by the 10 s timeout
        idle = time.monotonic() - answered
    assert 0.9 < idle < 3, idle
    stop(command)


def test_limit_concurrency_answers_503_beyond_it(cluster_env: Cluster, commands: Commands) -> None:
    command, port = start(commands, cluster_env, "-w", "1", "--limit-concurrency", "1")
    url = f"http://127.0.0.1:{port}"
    results: list[str] = []
    slow = threading.Thread(
        target=lambda: results.append(httpx.get(f"{url}/hold", timeout=10).text)
    )
    slow.start()
    marker = cluster_env.tmp / "held"
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)  # until the app says the request holds the one place
    refused = httpx.get(f"{url}/whole", timeout=10)
    assert (refused.status_code, refused.text) == (503, "Service Unavailable")
    slow.join(10)
    assert results == ["held"]
    assert httpx.get(f"{url}/whole", timeout=10).text == "whole"  # the place is free again
    stop(command)
