"""``pycluster serve``: WSGI and ASGI applications on uvicorn's HTTP, in several workers."""

from __future__ import annotations

import http.client
import re
import signal
import socket
import threading
import time

import pytest

from tests.conftest import Cluster, Command, Commands, free_port, get_over_unix_socket

pytest.importorskip("uvicorn")

STARLETTE_APP = """
import asyncio, os
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

async def pid(request):
    return PlainTextResponse(str(os.getpid()))

async def slow(request):
    await asyncio.sleep(float(request.query_params["s"]))
    return PlainTextResponse("slow done")

async def echo(request):
    return PlainTextResponse(str(len(await request.body())))

app = Starlette(routes=[
    Route("/", pid), Route("/slow", slow), Route("/echo", echo, methods=["POST"])
])
"""

FLASK_APP = """
import os
from flask import Flask, request

app = Flask(__name__)

@app.get("/")
def pid():
    return str(os.getpid())

@app.post("/echo")
def echo():
    return str(len(request.get_data()))
"""

RAW_ASGI_APP = """
async def app(scope, receive, send):
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"raw asgi"})
"""


def request(
    port: int, method: str = "GET", path: str = "/", body: bytes | None = None
) -> tuple[int, str]:
    """One request on a new connection that the server closes: status and body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def serve(commands: Commands, cluster_env: Cluster, app: str, *options: str) -> Command:
    """Start ``pycluster serve`` with a private control socket; wait until it is ready."""
    control = str(cluster_env.tmp / "run" / "control.sock")
    command = commands.start("serve", "--control", control, *options, app)
    command.wait_line("ready: ")
    return command


def stop(command: Command) -> str:
    """SIGTERM the primary; it must end with status 0 and no traceback."""
    command.proc.send_signal(signal.SIGTERM)
    code, output = command.finish()
    assert code == 0, output
    assert "Traceback" not in output, output
    return output


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_asgi_app_keep_alive_close_and_body_limit(
    cluster_env: Cluster, commands: Commands, policy: str
) -> None:
    cluster_env.write("webapp.py", STARLETTE_APP)
    port = free_port()
    command = serve(
        commands,
        cluster_env,
        "webapp:app",
        *("-w", "2", "-b", f"127.0.0.1:{port}", "--policy", policy),
        *("--limit-request-body", "1K"),
    )
    assert "serving webapp:app as ASGI" in command.output
    # Keep-alive: one connection, one worker, many requests.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    answers = set()
    for _ in range(5):
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.status == 200
        answers.add(response.read().decode())
    conn.close()
    assert len(answers) == 1
    # Connection: close: new connections reach both workers under round-robin.
    seen = {request(port)[1] for _ in range(6)}
    if policy == "rr":
        assert len(seen) == 2
    assert request(port, "POST", "/echo", b"x" * 10) == (200, "10")
    status, _ = request(port, "POST", "/echo", b"x" * 2000)
    assert status == 413
    stop(command)


def test_wsgi_app_is_detected_and_served(cluster_env: Cluster, commands: Commands) -> None:
    cluster_env.write("flaskapp.py", FLASK_APP)
    port = free_port()
    command = serve(commands, cluster_env, "flaskapp:app", "-w", "2", "-b", f"127.0.0.1:{port}")
    assert "serving flaskapp:app as WSGI" in command.output
    status, pid = request(port)
    assert status == 200 and pid.isdigit()
    assert request(port, "POST", "/echo", b"abc") == (200, "3")
    stop(command)


def test_raw_asgi_on_a_unix_socket(cluster_env: Cluster, commands: Commands) -> None:
    cluster_env.write("rawapp.py", RAW_ASGI_APP)
    path = cluster_env.tmp / "app.sock"
    command = serve(
        commands,
        cluster_env,
        "rawapp:app",
        *("-w", "1", "-b", f"unix:{path}", "--loop", "asyncio", "--http", "h11"),
    )
    assert "as ASGI" in command.output
    data = get_over_unix_socket(path)
    assert data.startswith(b"HTTP/1.1 200") and b"raw asgi" in data
    stop(command)
    assert not path.exists()  # the primary's socket file is gone with it


def test_reload_drains_requests_in_progress(cluster_env: Cluster, commands: Commands) -> None:
    cluster_env.write("webapp.py", STARLETTE_APP)
    port = free_port()
    control = str(cluster_env.tmp / "run" / "control.sock")
    command = serve(commands, cluster_env, "webapp:app", "-w", "2", "-b", f"127.0.0.1:{port}")
    before = {request(port)[1] for _ in range(4)}
    results: list[tuple[int, str]] = []
    # A request in progress when its worker is retired still gets its full answer.
    slow = threading.Thread(target=lambda: results.append(request(port, "GET", "/slow?s=1")))
    slow.start()
    reload = commands.start("reload", "--control", control)
    failures = []
    while reload.proc.poll() is None:  # load while the reload runs: nothing may fail
        try:
            status, _ = request(port)
        except OSError as exc:
            failures.append(repr(exc))
        else:
            if status != 200:
                failures.append(str(status))
    code, output = reload.finish()
    slow.join(10)
    assert code == 0 and "reloaded 2 worker(s)" in output, output
    assert failures == []
    assert results == [(200, "slow done")]
    after = {request(port)[1] for _ in range(4)}
    assert not before & after  # every worker was replaced
    stop(command)


def test_app_that_cannot_load_stops_with_status_4(commands: Commands) -> None:
    code, output = commands.run("serve", "--no-control", "-w", "2", "nosuchmodule:app")
    assert code == 4, output
    assert "cannot load the application: no module 'nosuchmodule'" in output
    code, output = commands.run("serve", "--no-control", "-w", "1", "json:nosuch")
    assert code == 4 and "has no attribute 'nosuch'" in output


def test_help_is_built_from_the_settings(commands: Commands) -> None:
    code, output = commands.run("--help")
    assert code == 0
    assert "pycluster run" in output and "pycluster serve" in output
    code, output = commands.run("serve", "--help")
    assert code == 0
    for option in ("--workers", "--bind", "--policy", "--restart", "--max-requests", "--timeout"):
        assert option in output
    # The command line keeps crashed workers alive (argparse may wrap at the hyphen).
    assert re.search(r"\(default: on-\s*failure\)", output), output
    code, output = commands.run("serve", "--max-requests", "lots", "app:app")
    assert code == 2 and "'lots' is not an integer" in output


SPINNING_WSGI_APP = """
import os

def app(environ, start_response):
    if environ["PATH_INFO"] == "/spin":
        while True:  # a handler stuck in a loop
            pass
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]
"""


@pytest.mark.parametrize("threads", ["10", "1"])
def test_timeout_catches_a_wsgi_handler_stuck_in_a_loop(
    cluster_env: Cluster, commands: Commands, threads: str
) -> None:
    cluster_env.write("spin.py", SPINNING_WSGI_APP)
    port = free_port()
    command = serve(
        commands,
        cluster_env,
        "spin:app",
        *("-w", "1", "-b", f"127.0.0.1:{port}", "--timeout", "1", "--restart-delay", "0"),
        *("--threads", threads),
    )
    status, first = request(port)
    assert status == 200
    # In a pool, the event loop keeps running while the handler spins in its thread:
    # the stuck call itself is what --timeout must catch. Inline, the loop stops.
    with pytest.raises((http.client.HTTPException, ConnectionError, TimeoutError)):
        request(port, path="/spin")
    command.wait_line("sent no heartbeat")
    command.wait_line("listening on", count=2)
    status, second = request(port)
    assert status == 200 and second != first
    output = stop(command)
    assert "in app" in output  # faulthandler's stack names the stuck function


def test_max_requests_recycles_a_served_worker(cluster_env: Cluster, commands: Commands) -> None:
    cluster_env.write("webapp.py", STARLETTE_APP)
    port = free_port()
    command = serve(
        commands,
        cluster_env,
        "webapp:app",
        *("-w", "1", "-b", f"127.0.0.1:{port}", "--max-requests", "3"),
    )
    pids = [request(port)[1] for _ in range(3)]
    assert len(set(pids)) == 1
    command.wait_line("served 3 connections: recycling it")
    command.wait_line("exited (code 0)")
    # Every request is answered across the recycling, then by the new worker.
    later = {request(port) for _ in range(2)}
    assert all(status == 200 for status, _ in later)
    assert pids[0] not in {pid for _, pid in later}
    stop(command)


UPLOAD_WSGI_APP = """
def app(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"got %d" % len(body)]
"""


@pytest.mark.parametrize("threads", ["10", "1"])
def test_timeout_spares_a_worker_waiting_for_a_slow_client(
    cluster_env: Cluster, commands: Commands, threads: str
) -> None:
    cluster_env.write("upload.py", UPLOAD_WSGI_APP)
    port = free_port()
    command = serve(
        commands,
        cluster_env,
        "upload:app",
        *("-w", "1", "-b", f"127.0.0.1:{port}", "--timeout", "1", "--threads", threads),
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"POST / HTTP/1.0\r\nContent-Length: 4\r\n\r\n")
        for _ in range(4):  # one byte every 0.6 s: 2.4 s in all, well over the timeout
            time.sleep(0.6)
            conn.sendall(b"x")
        answer = conn.makefile("rb").read()
    assert answer.startswith(b"HTTP/1.1 200 OK") and b"got 4" in answer, answer
    output = stop(command)
    assert "sent no heartbeat" not in output
