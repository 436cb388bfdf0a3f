"""Hang detection (``timeout``) with real stuck workers.

A worker whose serving loop stops beating for ``timeout`` seconds is sent SIGABRT,
so faulthandler writes where it was stuck to its stderr, then SIGKILL if that did
not end it, and a replacement takes its slot. The beat comes from the serving loop
itself: pycluster's http.server and asyncio servers beat on their own, other code
calls ``cluster.worker.heartbeat()``. A worker whose channel thread is busy (a slow
``'message'`` listener) while its serving loop runs is left alone.
"""

from __future__ import annotations

import http.client
import signal
import socket
import time

import pytest

from tests.conftest import Live, LiveProgram, free_port

PROGRAM = """
import asyncio, json, os, signal, socketserver, sys, time
from http.server import BaseHTTPRequestHandler
import pycluster as cluster

KIND = sys.argv[1]
PORT = int(os.environ.get("PORT", "0"))

def emit(**kw):
    sys.stdout.write(json.dumps(kw) + "\\n")
    sys.stdout.flush()

def spin_forever():
    while True:
        pass

def block_the_loop():
    time.sleep(120)

class Web(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/spin":
            spin_forever()
        body = str(cluster.worker.id).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Line(socketserver.StreamRequestHandler):
    def handle(self):
        self.rfile.readline()
        self.wfile.write(b"%d\\n" % cluster.worker.id)

async def on_client(reader, writer):
    line = await reader.readline()
    if line == b"spin\\n":
        block_the_loop()
    writer.write(b"%d\\n" % cluster.worker.id)
    await writer.drain()
    writer.close()

async def serve_aio():
    server = await cluster.aio.start_server(on_client, "127.0.0.1", PORT)
    async with server:
        await server.serve_forever()

def slow_listener(msg, handle):
    # Runs on the channel thread and holds it far longer than the timeout.
    emit(ev="slow_start")
    time.sleep(2.5)
    emit(ev="slow_done")

if cluster.is_primary:
    cluster.setup_primary(args=[KIND], timeout=1.0, shutdown_timeout=2.0, restart_delay=0.05)
    cluster.on("listening", lambda w, a: emit(ev="listening", id=w.id, slot=w.slot, port=a.port))
    cluster.on("online", lambda w: emit(ev="online", id=w.id, slot=w.slot))
    cluster.on("exit", lambda w, code, sig: emit(
        ev="exit", id=w.id, slot=w.slot, code=code, sig=sig,
        planned=w.exited_after_disconnect, t=time.monotonic(),
    ))
    cluster.on("restart", lambda old, new: emit(ev="restart", old=old.id, new=new.id, slot=new.slot))
    cluster.on("message", lambda w, msg, h: emit(ev="message", id=w.id, msg=msg, t=time.monotonic()))
    if KIND == "slow_listener":
        cluster.on("listening", lambda w, a: w.send("be slow"))
    cluster.fork()
    cluster.run()
    emit(ev="done")
elif KIND in ("http", "slow_listener"):
    if KIND == "slow_listener":
        cluster.worker.on("message", slow_listener)
    with cluster.http.HTTPServer(("127.0.0.1", PORT), Web) as server:
        server.serve_forever()
elif KIND == "aio":
    asyncio.run(serve_aio())
elif KIND == "tcp":
    with cluster.socketserver.TCPServer(("127.0.0.1", PORT), Line) as server:
        server.serve_forever()
elif KIND == "manual":
    if cluster.worker.id == 1:
        # A loop of its own that beats by hand for longer than the timeout, then
        # gets stuck where SIGABRT cannot end it (ignored): SIGKILL must follow.
        signal.signal(signal.SIGABRT, signal.SIG_IGN)
        until = time.monotonic() + 1.8
        while time.monotonic() < until:
            cluster.worker.heartbeat()
            time.sleep(0.05)
        cluster.worker.send("stopped beating")
        spin_forever()
    cluster.worker.wait_disconnected()
"""


def get(port: int, path: str = "/") -> str:
    """GET ``path`` on a fresh connection; the body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        conn.close()


def start(live: Live, kind: str) -> tuple[LiveProgram, int]:
    port = free_port()
    program = live.start(PROGRAM, kind, env={"PORT": str(port)})
    return program, port


def stop(program: LiveProgram) -> list[dict[str, object]]:
    """SIGTERM the primary; it shuts down gracefully and ends. Its events."""
    program.proc.send_signal(signal.SIGTERM)
    result = program.finish(15)
    assert result.returncode == 0, result.stderr
    return result.events()


def assert_replaced(program: LiveProgram, sig: str) -> None:
    """Worker 1 died of ``sig``, unplanned, and worker 2 took slot 0."""
    (exit_,) = program.wait_for(ev="exit", id=1, timeout=15)
    assert (exit_["sig"], exit_["planned"]) == (sig, False), program.stderr
    program.wait_for(ev="restart", old=1, new=2, slot=0)
    assert "worker 1" in program.stderr and "sent no heartbeat" in program.stderr


class TestStuckServingLoop:
    """The server integrations beat from their loop: a stuck loop is caught."""

    def test_endless_loop_in_an_http_handler(self, live: Live) -> None:
        program, port = start(live, "http")
        program.wait_for(ev="listening", id=1)
        assert get(port) == "1"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as stuck:
            stuck.sendall(b"GET /spin HTTP/1.0\r\n\r\n")
            assert_replaced(program, "SIGABRT")
            # The stuck request gets no answer: its worker is gone.
            try:
                answer = stuck.recv(100)
            except ConnectionResetError:
                answer = b""
            assert answer == b""
        # faulthandler wrote the stuck worker's stack: the handler in its endless loop.
        assert "Fatal Python error: Aborted" in program.stderr
        assert "spin_forever" in program.stderr and "do_GET" in program.stderr
        program.wait_for(ev="listening", id=2)
        assert get(port) == "2"
        events = stop(program)
        assert [e["id"] for e in events if e.get("ev") == "exit"] == [1, 2]

    def test_blocked_asyncio_loop(self, live: Live) -> None:
        program, port = start(live, "aio")
        program.wait_for(ev="listening", id=1)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as stuck:
            stuck.sendall(b"spin\n")
            assert_replaced(program, "SIGABRT")
        assert "block_the_loop" in program.stderr and "on_client" in program.stderr
        program.wait_for(ev="listening", id=2)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as ok:
            ok.sendall(b"hello\n")
            assert ok.makefile("rb").readline() == b"2\n"
        stop(program)


def test_hung_workers_replacement_keeps_its_port_zero(live: Live) -> None:
    # `restart` left at "never": only hang detection replaces the worker, and the
    # replacement takes over its predecessor's port, as after a crash.
    program = live.start(PROGRAM, "http", env={"PORT": "0"})
    (first,) = program.wait_for(ev="listening", id=1)
    port = int(first["port"])  # type: ignore[call-overload]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as stuck:
        stuck.sendall(b"GET /spin HTTP/1.0\r\n\r\n")
        assert_replaced(program, "SIGABRT")
    (second,) = program.wait_for(ev="listening", id=2)
    assert second["port"] == port
    assert get(port) == "2"
    stop(program)


def test_manual_heartbeat_then_sigkill_when_abort_is_ignored(live: Live) -> None:
    program, _ = start(live, "manual")
    # Beating by hand kept the worker alive for longer than the timeout.
    (stopped,) = program.wait_for(ev="message", id=1, msg="stopped beating")
    assert not [e for e in program.events() if e.get("ev") == "exit"]
    # It ignores SIGABRT, so it is killed outright after the abort grace period.
    assert_replaced(program, "SIGKILL")
    (exit_,) = program.wait_for(ev="exit", id=1)
    # Silent for the timeout, then the grace period after SIGABRT: not earlier.
    assert float(exit_["t"]) - float(stopped["t"]) >= 1.0 + 1.5  # type: ignore[arg-type]
    program.wait_for(ev="online", id=2)
    stop(program)


@pytest.mark.timeout(30)
def test_slow_message_listener_with_a_live_serving_loop_is_left_alone(live: Live) -> None:
    program, port = start(live, "slow_listener")
    program.wait_for(ev="slow_start")
    # The channel thread is busy for 2.5 s (timeout 1.0 s); the server answers meanwhile.
    answered = 0
    while not [e for e in program.events() if e.get("ev") == "slow_done"]:
        assert get(port) == "1"
        answered += 1
        time.sleep(0.05)  # pace the requests; the loop itself ends on an event
    assert answered >= 10
    events = stop(program)
    assert [(e["id"], e["sig"], e["planned"]) for e in events if e.get("ev") == "exit"] == [
        (1, None, True)
    ]
    assert not [e for e in events if e.get("ev") == "restart"]
    assert "sent no heartbeat" not in program.stderr


def test_idle_servers_keep_beating(live: Live) -> None:
    """With no request at all, each integration's serving loop still beats."""
    programs = []
    for kind in ("tcp", "http", "aio"):
        # One after the other: in CI, with the three starting at once, one of them
        # twice printed nothing for 30 s (its process states are in the failure
        # message should it happen again).
        program, port = start(live, kind)
        program.wait_for(ev="listening", id=1, timeout=30)
        programs.append((program, port))
    time.sleep(2.5)  # idle for well over the 1 s timeout: that is the point
    for program, port in programs:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            # Each kind answers with the worker id last (http: as the body).
            assert conn.makefile("rb").read().split()[-1] == b"1"
        assert not [e for e in program.events() if e.get("ev") == "exit"], program.stderr
    for program, _ in programs:
        events = stop(program)
        assert [(e["id"], e["sig"]) for e in events if e.get("ev") == "exit"] == [(1, None)]
