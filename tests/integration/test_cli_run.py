"""``pycluster run``: unchanged server programs run in several workers sharing their port."""

from __future__ import annotations

import http.client
import signal

import pytest

from tests.conftest import Cluster, Commands, free_port

THREADING_HTTP = """
import http.server, os, sys

class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/crash":
            os._exit(7)
        body = str(os.getpid()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

with http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Hello) as server:
    server.serve_forever()
os.write(1, b"serve_forever returned\\n")
"""

PLAIN_SOCKET = """
import os, socket, sys

sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", int(sys.argv[1])))
sock.listen()
os.write(1, f"program listens on {sock.getsockname()[1]}\\n".encode())
try:
    while True:
        conn, _ = sock.accept()
        with conn:
            conn.recv(65536)
            body = str(os.getpid()).encode()
            head = b"HTTP/1.1 200 OK\\r\\nConnection: close\\r\\nContent-Length: %d\\r\\n\\r\\n"
            conn.sendall(head % len(body) + body)
except KeyboardInterrupt:
    # Stopped as Ctrl-C would: the socket still has its address (cheroot's stop()
    # connects to it to wake its own accept).
    os.write(1, f"after the stop the socket is on {sock.getsockname()}\\n".encode())
"""

SOCKETSERVER = """
import os, socketserver, sys

class Answer(socketserver.StreamRequestHandler):
    def handle(self):
        while self.rfile.readline() not in (b"\\r\\n", b""):
            pass
        body = str(os.getpid()).encode()
        head = b"HTTP/1.1 200 OK\\r\\nConnection: close\\r\\nContent-Length: %d\\r\\n\\r\\n"
        self.wfile.write(head % len(body) + body)

with socketserver.ForkingTCPServer(("127.0.0.1", int(sys.argv[1])), Answer) as server:
    server.serve_forever()
os.write(1, b"serve_forever returned\\n")
"""

ASYNCIO_STREAMS = """
import asyncio, os, sys

async def answer(reader, writer):
    await reader.readuntil(b"\\r\\n\\r\\n")
    body = str(os.getpid()).encode()
    head = b"HTTP/1.1 200 OK\\r\\nConnection: close\\r\\nContent-Length: %d\\r\\n\\r\\n"
    writer.write(head % len(body) + body)
    await writer.drain()
    writer.close()

async def main():
    server = await asyncio.start_server(answer, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()
    os.write(1, b"serve_forever returned\\n")

if sys.argv[2] == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""


def get(port: int, path: str = "/") -> tuple[int, str]:
    """One GET on a new connection: status and body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def pids_answering(port: int, want: int, tries: int = 40) -> set[str]:
    """Worker pids seen answering, asking until ``want`` were seen or ``tries`` ran out."""
    seen: set[str] = set()
    for _ in range(tries):
        status, body = get(port)
        assert status == 200
        seen.add(body)
        if len(seen) >= want:
            break
    return seen


def stop(command: object) -> str:
    """SIGTERM the primary; it must end with status 0. Returns its output."""
    command.proc.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
    code, output = command.finish()  # type: ignore[attr-defined]
    assert code == 0, output
    assert "Traceback" not in output, output
    return str(output)


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_threading_http_server_serves_from_every_worker(
    cluster_env: Cluster, commands: Commands, policy: str
) -> None:
    cluster_env.write("server.py", THREADING_HTTP)
    port = free_port()
    command = commands.start("run", "-w", "2", "--policy", policy, "server.py", str(port))
    command.wait_line("ready: 2 worker(s)")
    assert len(command.wait_line(f"listening on 127.0.0.1:{port}", count=2)) == 2
    seen = pids_answering(port, want=2)
    if policy == "rr":
        assert len(seen) == 2  # round-robin reaches both workers
    output = stop(command)
    # The drop-in server drained and serve_forever() returned: the program ended itself.
    assert output.count("serve_forever returned") == 2
    assert output.count("exited (code 0)") == 2


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_plain_socket_program_is_shared(
    cluster_env: Cluster, commands: Commands, policy: str
) -> None:
    cluster_env.write("server.py", PLAIN_SOCKET)
    port = free_port()
    command = commands.start("run", "-w", "2", "--policy", policy, "server.py", str(port))
    command.wait_line("ready: 2 worker(s)")
    # The program's own getsockname() sees the shared port.
    assert len(command.wait_line(f"program listens on {port}", count=2)) == 2
    seen = pids_answering(port, want=2)
    if policy == "rr":
        assert len(seen) == 2
    output = stop(command)
    assert output.count("exited (code 0)") == 2
    assert output.count(f"after the stop the socket is on ('127.0.0.1', {port})") == 2, output


#: A program with its own epoll loop and its own SIGTERM handler that takes the listener out
#: of its epoll instances, as Twisted's reactor does in its shutdown (which raises if the
#: descriptor is not registered). Its handler says whether the descriptor was already
#: retired (another file) when the signal came, then keeps touching the registrations
#: until it is: with many instances to move, a retirement running while the program
#: stops listening shows as ENOENT.
EPOLL_STOPS_LISTENING = """
import os, select, signal, socket, sys, time

sock = socket.socket()
sock.setblocking(False)
sock.bind(("127.0.0.1", int(sys.argv[1])))
sock.listen()
fd = sock.fileno()
shared = os.fstat(fd).st_ino
pollers = [select.epoll() for _ in range(64)]
for poller in pollers:
    poller.register(fd, select.EPOLLIN)
errors = []
stopping = False

def stop(signum, frame):
    global stopping
    stopping = True
    os.write(1, f"retired before the stop: {os.fstat(fd).st_ino != shared}\\n".encode())
    deadline = time.monotonic() + 2
    while os.fstat(fd).st_ino == shared and time.monotonic() < deadline:
        for poller in pollers:
            try:
                poller.modify(fd, select.EPOLLIN)
            except OSError as exc:
                errors.append(exc.errno)
    for poller in pollers:
        try:
            poller.unregister(fd)
        except OSError as exc:
            errors.append(exc.errno)

signal.signal(signal.SIGTERM, stop)
os.write(1, b"program listens\\n")
while not stopping:
    for _ in pollers[0].poll(0.05):
        try:
            sock.accept()[0].close()
        except BlockingIOError:
            pass
sock.close()
os.write(1, f"epoll errors at the stop: {errors}\\n".encode())
"""


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_program_stops_listening_after_its_descriptor_is_retired(
    cluster_env: Cluster, commands: Commands, policy: str
) -> None:
    # The retirement moves the program's epoll registrations (drop, swap, register
    # again); a program that stops listening meanwhile would find its descriptor
    # unregistered. Its own stop signal comes once the retirement is done.
    cluster_env.write("server.py", EPOLL_STOPS_LISTENING)
    port = free_port()
    command = commands.start("run", "-w", "2", "--policy", policy, "server.py", str(port))
    command.wait_line("ready: 2 worker(s)")
    command.wait_line("program listens", count=2)
    output = stop(command)
    assert output.count("retired before the stop: True") == 2, output
    assert output.count("epoll errors at the stop: []") == 2, output
    assert output.count("exited (code 0)") == 2, output


def test_socketserver_program_is_shared(cluster_env: Cluster, commands: Commands) -> None:
    # A forking socketserver: each connection is served by a grandchild of the worker.
    cluster_env.write("server.py", SOCKETSERVER)
    port = free_port()
    command = commands.start("run", "-w", "2", "server.py", str(port))
    command.wait_line("ready: 2 worker(s)")
    assert len(pids_answering(port, want=3)) >= 2
    output = stop(command)
    assert output.count("serve_forever returned") == 2


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_asyncio_program(cluster_env: Cluster, commands: Commands, policy: str) -> None:
    cluster_env.write("server.py", ASYNCIO_STREAMS)
    port = free_port()
    command = commands.start(
        "run", "-w", "2", "--policy", policy, "server.py", str(port), "asyncio"
    )
    command.wait_line("ready: 2 worker(s)")
    seen = pids_answering(port, want=2)
    if policy == "rr":
        assert len(seen) == 2
    output = stop(command)
    assert output.count("serve_forever returned") == 2


def test_uvloop_program_is_round_robin_too(cluster_env: Cluster, commands: Commands) -> None:
    pytest.importorskip("uvloop")
    cluster_env.write("server.py", ASYNCIO_STREAMS)
    port = free_port()
    command = commands.start("run", "-w", "2", "server.py", str(port), "uvloop")
    command.wait_line("ready: 2 worker(s)")
    # uvloop accepts in C; pycluster takes the hand-offs and gives them to the loop.
    pids = {get(port)[1] for _ in range(6)}
    assert len(pids) == 2, pids
    output = stop(command)
    assert output.count("serve_forever returned") == 2, output


def test_module_with_bind_override(cluster_env: Cluster, commands: Commands) -> None:
    (cluster_env.tmp / "hello.txt").write_text("hello from a file\n")
    port = free_port()
    # http.server asks for port 0; --bind puts its server on our port instead.
    command = commands.start("run", "-w", "2", "-b", f"127.0.0.1:{port}", "-m", "http.server", "0")
    command.wait_line("ready: 2 worker(s)")
    assert get(port, "/hello.txt") == (200, "hello from a file\n")
    stop(command)


def test_bad_programs_fail_fast(cluster_env: Cluster, commands: Commands) -> None:
    code, output = commands.run("run", "-w", "2", "missing.py")
    assert code == 2 and "no such program: missing.py" in output
    cluster_env.write("crash.py", "raise SystemExit('cannot start: no config')\n")
    code, output = commands.run("run", "-w", "2", "crash.py")
    assert code == 3, output
    assert "cannot start: no config" in output
    assert "failed before any worker listened" in output
    code, output = commands.run("run", "-w", "2")
    assert code == 2 and "run needs a SCRIPT" in output


def test_module_options_belong_to_the_module(cluster_env: Cluster, commands: Commands) -> None:
    (cluster_env.tmp / "site").mkdir()
    (cluster_env.tmp / "site" / "page.txt").write_text("served from site/\n")
    port = free_port()
    # As with python -m, everything after -m MODULE is the module's: --directory and
    # --bind here are http.server's options, not pycluster's.
    command = commands.start(
        "run", "-w", "2", "-b", f"127.0.0.1:{port}", "-m", "http.server",
        "--bind", "127.0.0.1", "--directory", "site", "0",
    )  # fmt: skip
    command.wait_line("ready: 2 worker(s)")
    assert get(port, "/page.txt") == (200, "served from site/\n")
    stop(command)


def test_a_recovered_crash_still_ends_with_status_0(
    cluster_env: Cluster, commands: Commands
) -> None:
    cluster_env.write("server.py", THREADING_HTTP)
    port = free_port()
    command = commands.start("run", "-w", "1", "--restart-delay", "0", "server.py", str(port))
    command.wait_line("ready: 1 worker(s)")
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        get(port, "/crash")
    command.wait_line("restarting slot 0")
    command.wait_line("worker 2 (pid")
    assert get(port)[0] == 200
    # Restarted and serving again: a stop afterwards is a clean stop.
    output = stop(command)
    assert "exited (code 7)" in output


def test_bad_targets_are_one_line_errors_before_any_fork(
    cluster_env: Cluster, commands: Commands
) -> None:
    cluster_env.write("server.py", THREADING_HTTP)
    for options, message in [
        (("-b", "fd://97"), "fd://97: descriptor 97 is not open in this process"),
        (("-b", "unix:no/such/dir/app.sock"), "/no/such/dir does not exist"),
        (("--cwd", "/no/such/dir"), "--cwd /no/such/dir: no such directory"),
    ]:
        code, output = commands.run("run", "-w", "2", *options, "server.py", "0")
        assert code == 2, output
        assert output.count("pycluster: error:") == 1, output
        assert message in output, output
        assert "Traceback" not in output and "started in slot" not in output, output


def test_a_crash_that_is_never_restarted_ends_with_status_1(
    cluster_env: Cluster, commands: Commands
) -> None:
    cluster_env.write("server.py", THREADING_HTTP)
    port = free_port()
    command = commands.start("run", "-w", "1", "--restart", "never", "server.py", str(port))
    command.wait_line("ready: 1 worker(s)")
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        get(port, "/crash")
    code, output = command.finish()
    # The only worker is gone for good: the cluster ends, and says it failed.
    assert code == 1, output
    assert "exited (code 7)" in output


FOREIGN_SOCKETS = """
import _socket, socket, sys, time

# What gevent's monkey-patching does: socket.socket becomes a class of its own that
# never goes through the standard library's methods.
class Foreign(_socket.socket):
    pass

socket.socket = Foreign
sock = socket.socket()
sock.bind(("127.0.0.1", int(sys.argv[1])))
sock.listen()
time.sleep(30)
"""


def test_a_program_with_its_own_socket_class_is_told_why_it_cannot_share(
    cluster_env: Cluster, commands: Commands
) -> None:
    cluster_env.write("server.py", FOREIGN_SOCKETS)
    port = free_port()
    command = commands.start("run", "-w", "2", "server.py", str(port))
    code, output = command.finish(timeout=30)
    assert code != 0, output
    assert "pycluster cannot share their ports" in output, output
    assert "socket.socket is __main__.Foreign" in output, output
