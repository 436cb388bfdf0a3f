"""``pycluster serve`` sends a small response's headers and body in one write.

What a client must still see: headers that are not followed by a body in the same
step go out at once (a streaming response, an app waiting for the request body),
large and streamed bodies arrive whole, and a WebSocket upgrade (a new protocol on
the same transport) still works.
"""

from __future__ import annotations

import hashlib
import http.client
import socket

import pytest

from tests.conftest import Cluster, Commands, free_port
from tests.integration.test_cli_serve import serve, stop

pytest.importorskip("uvicorn")

APP = """
import hashlib

async def app(scope, receive, send):
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        message = await receive()
        await send({"type": "websocket.send", "text": "echo " + message["text"]})
        await send({"type": "websocket.close"})
        return
    if scope["type"] != "http":
        return
    if scope["path"] == "/after-headers":
        # Headers first, then wait for the request body, which the client only
        # sends once it has read them.
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2"), (b"x-first", b"yes")]})
        message = await receive()
        await send({"type": "http.response.body", "body": message["body"]})
        return
    # /stream: 40 chunks of 100 kB, each with its own send.
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for i in range(40):
        await send({"type": "http.response.body", "body": bytes([65 + i % 26]) * 100_000,
                    "more_body": True})
    await send({"type": "http.response.body", "body": b""})
"""

STREAMED = b"".join(bytes([65 + i % 26]) * 100_000 for i in range(40))


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_headers_go_out_before_a_body_that_waits_for_the_client(
    cluster_env: Cluster, commands: Commands, policy: str
) -> None:
    cluster_env.write("writesapp.py", APP)
    port = free_port()
    command = serve(
        commands,
        cluster_env,
        "writesapp:app",
        *("-w", "1", "-b", f"127.0.0.1:{port}", "--policy", policy),
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"POST /after-headers HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)  # times out if the headers were held back
            assert chunk, head
            head += chunk
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"x-first: yes" in head
        client.sendall(b"ok")
        body = head.split(b"\r\n\r\n", 1)[1]
        while len(body) < 2:
            body += client.recv(4096)
        assert body == b"ok"
    stop(command)


def test_streamed_body_and_websocket_arrive_whole(cluster_env: Cluster, commands: Commands) -> None:
    websockets_client = pytest.importorskip("websockets.sync.client")
    cluster_env.write("writesapp.py", APP)
    port = free_port()
    command = serve(commands, cluster_env, "writesapp:app", *("-w", "2", "-b", f"127.0.0.1:{port}"))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for _ in range(2):  # keep-alive: the second response on the same connection
        conn.request("GET", "/stream")
        response = conn.getresponse()
        assert response.status == 200
        data = response.read()
        assert hashlib.sha256(data).digest() == hashlib.sha256(STREAMED).digest()
    conn.close()
    with websockets_client.connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "echo hello"
    stop(command)
