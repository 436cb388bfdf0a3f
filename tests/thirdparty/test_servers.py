"""Real third-party servers, unchanged, under ``pycluster run -w 2`` with either policy.

Each test starts one program of ``programs/`` in a two-worker cluster and checks what
its users would: both workers answer (each answer names its pid), answers are right
(request bodies and WebSocket messages come back intact), and a SIGTERM to the
primary stops everything quickly while a slow request is being answered and a
WebSocket is open: the request gets its full answer, the program's shutdown hook
runs, every worker exits with status 0 and no process is left.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import socket
import threading
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import Cluster, Commands, free_port
from tests.thirdparty.harness import (
    POLICIES,
    Running,
    check_stop,
    connection_owner,
    echo_body,
    http_get,
    line_request,
    pid_of,
    pids_seen,
    program,
    start,
    stop_during,
    ws_connect,
    ws_exchange,
)


@dataclass(frozen=True)
class HttpProgram:
    """A program of ``programs/`` that speaks HTTP, and what else it can do."""

    id: str
    file: str
    args: tuple[str, ...] = ()
    ws: bool = False  # has a WebSocket echo at /ws
    echo: bool = True  # has POST /echo
    #: The close code its own shutdown sends an open WebSocket (tornado sends none).
    ws_close: int | None = None
    #: Whether a WebSocket is held open through the stop: hypercorn waits for open
    #: WebSockets until its graceful timeout and then cancels them (close code 1011 and
    #: a logged CancelledError), with or without pycluster.
    ws_at_stop: bool = True
    #: Whether its own stop lets a request in progress finish (Twisted's reactor and
    #: daphne cut it, with or without pycluster).
    drains: bool = True


HTTP_PROGRAMS = [
    HttpProgram("tornado-asyncio", "tornado_asyncio.py", ws=True),
    HttpProgram("tornado-ioloop", "tornado_ioloop.py", ws=True),
    HttpProgram("aiohttp-run_app", "aiohttp_app.py", ws=True, ws_close=1001),
    HttpProgram("flask-app.run", "flask_app.py"),
    # uvicorn.run picks uvloop (installed with the test extra), which accepts in C.
    HttpProgram("uvicorn-uvloop", "uvicorn_app.py", ws=True, ws_close=1012),
    HttpProgram("uvicorn-asyncio", "uvicorn_app.py", ("asyncio",), ws=True, ws_close=1012),
    HttpProgram("websockets-serve", "websockets_app.py", ws=True, echo=False, ws_close=1001),
    HttpProgram("waitress-serve", "waitress_app.py"),
    HttpProgram("twisted-web", "twisted_web.py"),
    HttpProgram("cheroot-wsgi", "cheroot_app.py"),
    HttpProgram("hypercorn-asyncio", "hypercorn_app.py", ws=True, ws_at_stop=False),
    HttpProgram("hypercorn-trio", "hypercorn_app.py", ("trio",), ws=True, ws_at_stop=False),
    HttpProgram("sanic-single-process", "sanic_app.py", ws=True, ws_close=1000),
    HttpProgram("daphne", "daphne_app.py", ws=True, drains=False),
    HttpProgram("django-runserver", "django_runserver.py"),
]


def check_http_answers(run: Running, server: HttpProgram) -> None:
    """Both workers answer; bodies come back intact over one kept-alive client."""
    seen = pids_seen(lambda: int(http_get(run.url + "/")), run.workers)
    assert seen == run.workers, f"answered by {seen}, workers {run.workers}; {run.describe()}"
    if server.echo:
        body = echo_body()
        with httpx.Client(timeout=10) as client:
            for _ in range(3):
                response = client.post(run.url + "/echo", content=body)
                assert response.status_code == 200, run.describe()
                assert response.content == body, run.describe()


def check_websockets(run: Running) -> None:
    """Both workers take WebSocket connections; messages, small and large, come back."""
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


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("server", HTTP_PROGRAMS, ids=lambda s: s.id)
def test_http_program(commands: Commands, server: HttpProgram, policy: str) -> None:
    port = free_port()
    run = start(commands, policy, port, program(server.file), str(port), *server.args)
    check_http_answers(run, server)
    with contextlib.ExitStack() as stack:
        ws = None
        if server.ws:
            check_websockets(run)
        if server.ws and server.ws_at_stop:
            ws = stack.enter_context(ws_connect(run.url.replace("http://", "ws://") + "/ws"))
            assert ws_exchange(ws, "open at SIGTERM").endswith(":open at SIGTERM")
        stop = stop_during(run, lambda: http_get(run.url + "/slow", timeout=20), ws)
    check_stop(run, stop, ws_close=server.ws_close, drains=server.drains)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", ["socketserver_echo.py", "asyncio_streams.py"])
def test_line_echo_program(commands: Commands, name: str, policy: str) -> None:
    port = free_port()
    # asyncio's debug mode checks more of each transport's socket (and logs what fails).
    env = {"PYTHONASYNCIODEBUG": "1"} if name.startswith("asyncio") else None
    run = start(commands, policy, port, program(name), str(port), env=env)
    seen = pids_seen(lambda: pid_of(line_request(port, b"pid\n")), run.workers)
    assert seen == run.workers, f"answered by {seen}; {run.describe()}"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        lines = [b"line %d %s\n" % (i, b"x" * i) for i in range(200)]
        sock.sendall(b"".join(lines))
        received = b""
        with sock.makefile("rb") as answers:
            for _ in lines:
                received += answers.readline()
    pid = received.split()[0]
    assert received == b"".join(pid + b" " + line for line in lines), run.describe()

    def slow() -> str:
        answer = line_request(port, b"slow\n", timeout=20).split()
        return f"slow done {int(answer[0])}" if answer[1:] == [b"slow"] else repr(answer)

    stop = stop_during(run, slow)
    check_stop(run, stop)
    assert "() failed on" not in stop.output, stop.output  # getpeername() failed on <socket>


@pytest.mark.parametrize("policy", POLICIES)
def test_http_server_module(cluster_env: Cluster, commands: Commands, policy: str) -> None:
    """``pycluster run -m http.server``: files served by both workers, a download survives."""
    (cluster_env.tmp / "hello.txt").write_text("hello from a file\n")
    big = bytes(range(256)) * (96 * 1024)  # 24 MiB: far more than the socket buffers hold
    (cluster_env.tmp / "big.bin").write_bytes(big)
    port = free_port()
    run = start(commands, policy, port, "-m", "http.server", "--bind", "127.0.0.1", str(port))

    def ask() -> int:
        # http.server cannot say which process it is: /proc tells who holds the connection.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.connect()
        assert conn.sock is not None
        owner = connection_owner(conn.sock, run.workers)
        conn.request("GET", "/hello.txt")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"hello from a file\n")
        conn.close()
        return owner

    seen = pids_seen(ask, run.workers)
    assert seen == run.workers, f"answered by {seen}; {run.describe()}"

    downloading = threading.Event()
    owner: list[int] = []

    def download() -> str:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        conn.connect()
        assert conn.sock is not None
        owner.append(connection_owner(conn.sock, run.workers))
        conn.request("GET", "/big.bin")
        response = conn.getresponse()
        digest = hashlib.sha256(response.read(65536))
        downloading.set()  # the server is now blocked writing the rest
        while chunk := response.read(1 << 20):
            digest.update(chunk)
        conn.close()
        if digest.hexdigest() != hashlib.sha256(big).hexdigest():
            return "download incomplete or corrupt"
        return f"slow done {owner[0]}"

    def underway() -> int:
        assert downloading.wait(15), "the download did not start"
        return owner[0]

    # http.server has no shutdown hook of its own to observe.
    check_stop(run, stop_during(run, download, underway=underway), cleanup=False)


@pytest.mark.parametrize("policy", POLICIES)
def test_gevent_is_refused_with_the_reason(commands: Commands, policy: str) -> None:
    """Not supported (see README): the run stops at once and says why."""
    port = free_port()
    # The worker that did bind serves on its own and ignores the disconnect: it is
    # killed once the shutdown timeout is over.
    command = commands.start(
        *("run", "-w", "2", "--policy", policy, "--no-control", "--shutdown-timeout", "3"),
        *(program("gevent_app.py"), str(port)),
    )
    code, output = command.finish(timeout=30)
    assert code != 0, output
    assert "socket.socket is gevent._socket3.socket" in output, output
    assert "pycluster cannot share their ports" in output, output
