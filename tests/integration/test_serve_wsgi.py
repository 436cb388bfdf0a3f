"""``pycluster serve``'s own HTTP/1.1 for WSGI apps, from real HTTP clients (httpx, sockets).

Each behaviour is checked with the app inline on the loop (``--threads 1``) and in
a thread pool (``--threads 4``), the two ways the server runs a WSGI call; the
default, ``--threads auto``, moves from the first to the second once the app waits.
"""

from __future__ import annotations

import hashlib
import signal
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import (
    Cluster,
    Command,
    Commands,
    check_head_limit,
    free_port,
    make_cert,
    post_after_100_continue,
)
from tests.integration.test_cli_serve import FLASK_APP, serve, stop

pytest.importorskip("uvicorn")
pytest.importorskip("httptools")
httpx = pytest.importorskip("httpx")

#: One route per PEP 3333 rule the server must keep.
PEP3333_APP = """
import hashlib, os, sys, threading, time

CLOSED = []

class Body:
    \"\"\"A response iterable with close(), as PEP 3333 requires the server to call.\"\"\"
    def __init__(self, parts):
        self.parts = parts
    def __iter__(self):
        return iter(self.parts)
    def close(self):
        CLOSED.append(1)

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/environ":
        keys = ("REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING",
                "SERVER_PROTOCOL", "HTTP_X_TWICE", "wsgi.url_scheme", "wsgi.multithread")
        text = "\\n".join(f"{k}={environ.get(k)}" for k in keys)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [text.encode()]
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return Body([b"then ", b"returned"])
    if path == "/closed":
        start_response("200 OK", [])
        return [str(len(CLOSED)).encode()]
    if path == "/stream":
        size = int(environ["QUERY_STRING"])
        def pieces():
            block = b"x" * 65536
            for _ in range(size // 65536):
                yield block
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return pieces()
    if path == "/file":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"](open(__file__, "rb"), 1000)
    if path == "/fail-early":
        raise RuntimeError("boom before start_response")
    if path == "/exc-info":
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("changed my mind")
        except ValueError:
            start_response("500 Internal Server Error", [("X-Why", "exc_info")], sys.exc_info())
        return [b"replaced"]
    if path == "/echo":
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()]
    if path == "/slow":
        time.sleep(float(environ["QUERY_STRING"]))
        start_response("200 OK", [])
        return [b"slow done"]
    if path == "/hold":  # holds its place for 2 s; a file says when it started
        marker = os.path.join(os.path.dirname(__file__), "held")
        open(marker, "w").close()
        time.sleep(2)
        start_response("200 OK", [])
        return [b"held"]
    if path == "/spin":  # computes with the GIL held, never waiting
        end = time.perf_counter() + float(environ["QUERY_STRING"])
        while time.perf_counter() < end:
            pass
        start_response("200 OK", [])
        return [b"spun"]
    if path == "/async":  # sync code running a coroutine, as asgiref's async_to_sync does
        import asyncio
        async def nap():
            await asyncio.sleep(0)
            return b"ran a loop of its own"
        start_response("200 OK", [])
        return [asyncio.run(nap())]
    if path == "/who":
        start_response("200 OK", [])
        return [f"{os.getpid()} {threading.current_thread().name}".encode()]
    start_response("404 Not Found", [])
    return [b"no such page"]
"""

THREADS = ["1", "4"]


def dechunk(data: bytes) -> bytes:
    """The body framed by ``Transfer-Encoding: chunked`` in ``data`` (which must end it)."""
    body = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            assert data == b"\r\n", data
            return body
        body, data = body + data[:size], data[size + 2 :]


def start(commands: Commands, cluster_env: Cluster, *options: str) -> tuple[Command, str]:
    """``pycluster serve pep:app`` with ``options``; the command and its base URL."""
    cluster_env.write("pep.py", PEP3333_APP)
    port = free_port()
    command = serve(commands, cluster_env, "pep:app", "-b", f"127.0.0.1:{port}", *options)
    assert "as WSGI" in command.output
    return command, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("policy", ["rr", "none"])
def test_pep3333_rules_over_keep_alive(
    cluster_env: Cluster, commands: Commands, threads: str, policy: str
) -> None:
    command, url = start(
        commands,
        cluster_env,
        *("-w", "2", "--policy", policy, "--threads", threads, "--root-path", "/app"),
    )
    with httpx.Client(base_url=url, timeout=10) as client:
        environ = dict(
            line.split("=", 1)
            for line in client.get(
                "/app/environ?a=1&b=%20", headers=[("X-Twice", "1"), ("X-Twice", "2")]
            ).text.splitlines()
        )
        assert environ == {
            "REQUEST_METHOD": "GET",
            "SCRIPT_NAME": "/app",
            "PATH_INFO": "/environ",
            "QUERY_STRING": "a=1&b=%20",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_X_TWICE": "1,2",
            "wsgi.url_scheme": "http",
            "wsgi.multithread": str(threads != "1"),
        }
        # write() and the returned iterable, in order; close() is called on it.
        response = client.get("/write")
        assert response.text == "written then returned"
        closed_before = int(client.get("/closed").text)
        client.get("/write")
        assert int(client.get("/closed").text) == closed_before + 1
        # A generator is sent chunked, as produced.
        streamed = client.get("/stream?1048576")
        assert streamed.headers["transfer-encoding"] == "chunked"
        assert streamed.content == b"x" * 1048576
        # wsgi.file_wrapper sends a file whole.
        assert client.get("/file").content == (cluster_env.tmp / "pep.py").read_bytes()
        # HEAD: the headers of a GET, no body.
        head = client.head("/write")
        assert head.status_code == 200 and head.content == b""
        # An error before start_response is a 500, and the server goes on.
        assert client.get("/fail-early").status_code == 500
        # start_response again with exc_info before anything was sent replaces the answer.
        replaced = client.get("/exc-info")
        assert (replaced.status_code, replaced.headers["x-why"]) == (500, "exc_info")
        assert client.get("/nothing").status_code == 404
        # Every answer above came over one kept-alive connection per worker at most.
        body = b"\x00\xff" * 300_000
        echoed = client.post("/echo", content=body).text
        assert echoed == f"{len(body)} {hashlib.sha256(body).hexdigest()}"
    command.proc.send_signal(signal.SIGTERM)
    code, output = command.finish()
    assert code == 0, output
    assert "RuntimeError: boom before start_response" in output  # logged, traceback too


# auto: the first request waits inline, so the worker may move to the pool between
# two pipelined requests; the order holds either way.
@pytest.mark.parametrize("threads", [*THREADS, "auto"])
def test_pipelined_requests_are_answered_in_order(
    cluster_env: Cluster, commands: Commands, threads: str
) -> None:
    command, url = start(commands, cluster_env, "-w", "1", "--threads", threads)
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"GET /slow?0.2 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /write HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    answers = [part for part in data.split(b"HTTP/1.1 ")[1:]]
    assert [a[:3] for a in answers] == [b"200", b"200", b"404"], data
    assert answers[0].endswith(b"slow done")
    head, _, chunked = answers[1].partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    assert dechunk(chunked) == b"written then returned"
    check_head_limit(port, b"/write")
    stop(command)


@pytest.mark.parametrize("threads", THREADS)
def test_expect_100_continue_and_body_limit(
    cluster_env: Cluster, commands: Commands, threads: str
) -> None:
    command, url = start(
        commands,
        cluster_env,
        *("-w", "1", "--threads", threads, "--limit-request-body", "1K"),
    )
    port = int(url.rsplit(":", 1)[1])
    data = post_after_100_continue(port, "/echo", b"hello")
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(
        b"5 " + hashlib.sha256(b"hello").hexdigest().encode()
    )
    # Over the limit: refused from the headers, with no 100 Continue first.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        assert sock.recv(65536).startswith(b"HTTP/1.1 413")
    stop(command)


@pytest.mark.parametrize("threads", THREADS)
def test_a_slow_reader_gets_a_large_stream_whole(
    cluster_env: Cluster, commands: Commands, threads: str
) -> None:
    """Flow control: the app produces as the client reads, and nothing is lost."""
    command, url = start(commands, cluster_env, "-w", "1", "--threads", threads)
    size = 32 * 1024 * 1024
    digest = hashlib.sha256()
    received = 0
    with httpx.Client(base_url=url, timeout=20) as client:
        with client.stream("GET", f"/stream?{size}") as response:
            for piece in response.iter_bytes():
                digest.update(piece)
                received += len(piece)
                if received < 4 * 1024 * 1024:
                    time.sleep(0.001)  # slow at first: the server must wait, not buffer
        assert received == size
        assert digest.hexdigest() == hashlib.sha256(b"x" * size).hexdigest()
        assert client.get("/write").text == "written then returned"  # still serving
    stop(command)


def test_threads_run_requests_side_by_side(cluster_env: Cluster, commands: Commands) -> None:
    """With a pool, a slow request does not hold the worker; inline, requests take turns."""
    for threads, overlapped in (("4", True), ("1", False)):
        command, url = start(commands, cluster_env, "-w", "1", "--threads", threads)
        results: list[str] = []

        def slow(url: str = url, results: list[str] = results) -> None:
            results.append(httpx.get(f"{url}/slow?1", timeout=10).text)

        began = time.monotonic()
        callers = [threading.Thread(target=slow) for _ in range(3)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(15)
        took = time.monotonic() - began
        assert results == ["slow done"] * 3
        assert (took < 2.5) is overlapped, f"--threads {threads}: 3 slow calls took {took:.1f}s"
        stop(command)


@pytest.mark.parametrize("threads", THREADS)
def test_reload_lets_a_wsgi_request_in_progress_finish(
    cluster_env: Cluster, commands: Commands, threads: str
) -> None:
    command, url = start(commands, cluster_env, "-w", "1", "--threads", threads)
    control = str(cluster_env.tmp / "run" / "control.sock")
    results: list[str] = []
    slow = threading.Thread(
        target=lambda: results.append(httpx.get(f"{url}/slow?1", timeout=10).text)
    )
    slow.start()
    time.sleep(0.3)  # the request is in the app (sleeping) when the reload begins
    code, output = commands.run("reload", "--control", control)
    slow.join(10)
    assert code == 0, output
    assert results == ["slow done"]
    assert httpx.get(f"{url}/write", timeout=10).text == "written then returned"
    stop(command)


@pytest.mark.parametrize("threads", THREADS)
def test_flask_runs_unchanged(cluster_env: Cluster, commands: Commands, threads: str) -> None:
    pytest.importorskip("flask")
    cluster_env.write("flaskapp.py", FLASK_APP)
    port = free_port()
    command = serve(
        commands,
        cluster_env,
        "flaskapp:app",
        *("-w", "2", "-b", f"127.0.0.1:{port}", "--threads", threads),
    )
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        pids = {client.get("/").text for _ in range(3)}
        assert all(pid.isdigit() for pid in pids)
        assert client.post("/echo", content=b"y" * 70_000).text == "70000"
        assert client.get("/missing").status_code == 404
    stop(command)


def test_https_for_a_wsgi_app(cluster_env: Cluster, commands: Commands, tmp_path: Path) -> None:
    ca, cert, key = make_cert(tmp_path)
    command, url = start(
        commands, cluster_env, "-w", "2", "--certfile", str(cert), "--keyfile", str(key)
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
    https = url.replace("http://", "https://")
    with httpx.Client(base_url=https, verify=context, timeout=10) as client:
        environ = client.get("/environ").text
        assert "wsgi.url_scheme=https" in environ
        body = b"z" * 200_000
        assert client.post("/echo", content=body).text.startswith("200000 ")
    stop(command)


@pytest.mark.parametrize("threads", THREADS)
def test_max_requests_recycles_a_wsgi_worker(
    cluster_env: Cluster, commands: Commands, threads: str
) -> None:
    command, url = start(
        commands, cluster_env, "-w", "1", "--threads", threads, "--max-requests", "3"
    )
    who = [httpx.get(f"{url}/who", headers={"Connection": "close"}).text for _ in range(3)]
    assert len({answer.split()[0] for answer in who}) == 1
    command.wait_line("served 3 connections: recycling it")
    command.wait_line("exited (code 0)")
    later = httpx.get(f"{url}/who", timeout=10).text
    assert later.split()[0] != who[0].split()[0]  # a new worker answers
    stop(command)


def test_limit_concurrency_answers_503_beyond_it(cluster_env: Cluster, commands: Commands) -> None:
    command, url = start(
        commands, cluster_env, "-w", "1", "--threads", "4", "--limit-concurrency", "1"
    )
    results: list[str] = []
    slow = threading.Thread(
        target=lambda: results.append(httpx.get(f"{url}/hold", timeout=10).text)
    )
    slow.start()
    marker = cluster_env.tmp / "held"
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)  # until the app says the request holds the one place
    assert httpx.get(f"{url}/write", timeout=10).status_code == 503
    slow.join(10)
    assert results == ["held"]
    assert httpx.get(f"{url}/write", timeout=10).status_code == 200  # the place is free again
    stop(command)


def test_threads_auto_runs_inline_until_the_app_waits(
    cluster_env: Cluster, commands: Commands
) -> None:
    command, url = start(commands, cluster_env, "-w", "1")  # --threads auto
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/who").text.endswith(" MainThread")
        for _ in range(5):  # 50 ms each with the GIL held: computing is not waiting
            assert client.get("/spin?0.05").text == "spun"
        assert client.get("/who").text.endswith(" MainThread")
        assert "requests run in a pool" not in command.output
        # Longer than the watchdog's longest sleep: it looks while the call waits.
        assert client.get("/slow?0.6").text == "slow done"
    command.wait_line("requests run in a pool of 10 threads from now on")
    # From now on requests that wait overlap: five of 0.6 s take far less than 3 s.
    names: list[str] = []

    def wait_once() -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            assert client.get("/slow?0.6").text == "slow done"
            names.append(client.get("/who").text.split()[1])

    began = time.monotonic()
    threads = [threading.Thread(target=wait_once) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert time.monotonic() - began < 2.0
    assert len(names) == 5 and all(name.startswith("pycluster-wsgi-") for name in names), names
    stop(command)


@pytest.mark.parametrize("threads", ["1", "auto"])
def test_inline_calls_may_run_an_event_loop_of_their_own(
    cluster_env: Cluster, commands: Commands, threads: str
) -> None:
    command, url = start(commands, cluster_env, "-w", "1", "--threads", threads)
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/who").text.endswith(" MainThread")
        answer = client.get("/async")
        assert (answer.status_code, answer.text) == (200, "ran a loop of its own")
        assert client.get("/environ").status_code == 200  # the worker's loop goes on
    stop(command)
