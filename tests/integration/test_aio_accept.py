"""``cluster.aio`` accepts through pycluster and gives each connection to the loop.

On uvloop, which accepts in C, it must (the loop cannot read a hand-off socket); on
asyncio's own loop it does so too, for less CPU than the loop's accept. Either way the
program sees the loop's own transports: these tests run on both loops.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LOOPS, Cluster, Result, free_port, make_cert

_HEAD = """
import asyncio, json, logging, sys
import pycluster as cluster

PORT = int(sys.argv[1])

async def serve_on(make, handler, **options):
    server = await make(handler, "127.0.0.1", PORT, **options)
    async with server:
        await server.serve_forever()
"""

_RUN = """
if cluster.is_primary:
    for _ in range(WORKERS):
        cluster.fork()
    listening = []
    def on_listening(worker, address):
        listening.append(worker.id)
        if len(listening) == WORKERS:
            print(json.dumps({"ready": True}), flush=True)
    cluster.on("listening", on_listening)
    cluster.run()
    print(json.dumps({"listened": len(listening)}), flush=True)
else:
    logging.basicConfig(level=logging.WARNING)
    if sys.argv[2] == "uvloop":
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())
"""


def program(serving: str, workers: int = 2) -> str:
    """A test program: ``serving`` defines the worker's ``main()``, run on the loop named
    by its second argument; the primary forks ``workers`` workers and prints a ready
    line once all of them listen."""
    return _HEAD + serving + _RUN.replace("WORKERS", str(workers))


def start(
    cluster_env: Cluster,
    source: str,
    port: int,
    policy: str = "rr",
    loop: str = "uvloop",
    *args: str,
) -> subprocess.Popen[str]:
    """Start ``source`` on ``port`` under ``policy`` and ``loop``; returns once every
    worker listens."""
    proc = cluster_env.start(source, str(port), loop, *args, env={"PYCLUSTER_SCHED_POLICY": policy})
    assert proc.stdout is not None
    assert '"ready"' in proc.stdout.readline()
    return proc


def stop(cluster_env: Cluster, proc: subprocess.Popen[str]) -> Result:
    """SIGTERM the primary; the cluster must end with status 0."""
    proc.terminate()
    result = cluster_env.finish(proc)
    assert result.returncode == 0, result.stderr
    return result


def answer_of(port: int) -> bytes:
    """Everything one new connection is sent until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        answer = b""
        while chunk := client.recv(100):
            answer += chunk
        return answer


PROGRAM = program("""
async def handle(reader, writer):
    writer.write(f"worker {cluster.worker.id}".encode())
    await writer.drain()
    writer.close()

async def main():
    await serve_on(cluster.aio.start_server, handle)
""")


@pytest.mark.parametrize("loop", LOOPS)
def test_server_takes_round_robin_hand_offs(cluster_env: Cluster, loop: str) -> None:
    port = free_port()
    proc = start(cluster_env, PROGRAM, port, "rr", loop)
    answers = set()
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            answers.add(client.recv(100))
    # Round robin: the primary alternates, so both workers answer.
    assert answers == {b"worker 1", b"worker 2"}
    assert "Traceback" not in stop(cluster_env, proc).stderr


PEER_PROGRAM = program("""
class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        host, port = transport.get_extra_info("peername")[:2]
        own_host, own_port = transport.get_extra_info("sockname")[:2]
        transport.write(f"{cluster.worker.id} {host} {port} {own_host} {own_port}".encode())
        transport.close()

async def main():
    await serve_on(cluster.aio.create_server, Echo)
""")


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("policy", ["rr", "none"])
def test_connections_know_their_peer(cluster_env: Cluster, policy: str, loop: str) -> None:
    """pycluster's accept skips the peer's address: the transport still has it, and
    its own address."""
    port = free_port()
    proc = start(cluster_env, PEER_PROGRAM, port, policy, loop)
    workers = set()
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            answer = b""
            while chunk := client.recv(100):
                answer += chunk
            worker, host, client_port, own_host, own_port = answer.decode().split()
            assert (host, int(client_port)) == client.getsockname()
            assert (own_host, int(own_port)) == client.getpeername()
            workers.add(worker)
    if policy == "rr":
        assert workers == {"1", "2"}
    assert "Traceback" not in stop(cluster_env, proc).stderr


async def _burst(port: int, clients: int) -> list[str]:
    async def one() -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return (await asyncio.wait_for(reader.read(), 20)).decode().split()[0]
        finally:
            writer.close()

    return await asyncio.gather(*(one() for _ in range(clients)))


@pytest.mark.parametrize("loop", LOOPS)
def test_shared_socket_burst_is_shared_and_all_answered(cluster_env: Cluster, loop: str) -> None:
    """Under ``none`` pycluster accepts a share at a time: a burst after a quiet spell
    is all answered, by both workers."""
    port = free_port()
    proc = start(cluster_env, PEER_PROGRAM, port, "none", loop)
    answers = asyncio.run(_burst(port, 200))
    assert len(answers) == 200
    assert set(answers) == {"1", "2"}
    assert "Traceback" not in stop(cluster_env, proc).stderr


FAILING_PROGRAM = program(
    """
made = 0

class Greeter(asyncio.Protocol):
    def connection_made(self, transport):
        transport.write(f"worker {cluster.worker.id}".encode())
        transport.close()

def factory():
    global made
    made += 1
    if made % 2 == 0:
        raise RuntimeError("no protocol for this one")
    return Greeter()

async def main():
    await serve_on(cluster.aio.create_server, factory)
""",
    workers=1,
)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("policy", ["rr", "none"])
def test_connection_that_fails_to_start_is_closed_and_serving_goes_on(
    cluster_env: Cluster, policy: str, loop: str
) -> None:
    """A protocol factory that raises costs that one connection (closed, logged), no more."""
    port = free_port()
    proc = start(cluster_env, FAILING_PROGRAM, port, policy, loop)
    answers = [answer_of(port) for _ in range(10)]
    assert answers == [b"worker 1", b""] * 5
    result = stop(cluster_env, proc)
    assert result.stderr.count("failed to start: no protocol for this one") == 5


CLIENTS_PROGRAM = program(
    """
BIG = 64 << 20

async def handle(reader, writer):
    writer.write(b"hello\\n")
    line = await reader.readline()
    if line == b"big\\n":
        writer.write(b"x" * BIG)  # more than the kernel's buffers hold: most of it waits
    elif line == b"close\\n":
        SERVER.close_clients()
    elif line == b"abort\\n":
        SERVER.abort_clients()
    await reader.read()
    writer.close()

async def main():
    global SERVER
    context = None
    if len(sys.argv) > 3:
        import ssl
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(sys.argv[3], sys.argv[4])
    SERVER = await cluster.aio.start_server(handle, "127.0.0.1", PORT, ssl=context)
    async with SERVER:
        await SERVER.serve_forever()
""",
    workers=1,
)
BIG = 64 << 20


def _read_all(client: socket.socket) -> tuple[int, bool]:
    """Bytes read from ``client`` until it ended, and whether it ended abruptly (a
    reset, or a TLS stream cut without its closing message)."""
    buf = bytearray(1 << 20)
    total = 0
    try:
        while n := client.recv_into(buf):
            total += n
    except (ConnectionResetError, ssl.SSLError):
        return total, True
    return total, False


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("policy", ["rr", "none"])
@pytest.mark.parametrize("how", ["close", "abort"])
def test_close_and_abort_clients(
    cluster_env: Cluster, tmp_path: Path, policy: str, loop: str, how: str, tls: bool
) -> None:
    """``close_clients()`` ends every connection the server took after what it sent;
    ``abort_clients()`` drops what was not sent; the server itself goes on serving."""
    port = free_port()
    args: list[str] = []
    connect = socket.create_connection
    if tls:
        ca, cert, key = make_cert(tmp_path)
        args = [str(cert), str(key)]
        context = ssl.create_default_context()
        ca.configure_trust(context)

        def connect(address: tuple[str, int], timeout: float) -> socket.socket:
            plain = socket.create_connection(address, timeout=timeout)
            return context.wrap_socket(plain, server_hostname="localhost")

    proc = start(cluster_env, CLIENTS_PROGRAM, port, policy, loop, *args)
    busy = connect(("127.0.0.1", port), timeout=10)
    idle = connect(("127.0.0.1", port), timeout=10)
    trigger = connect(("127.0.0.1", port), timeout=10)
    with busy, idle, trigger:
        for client in (busy, idle, trigger):
            assert client.recv(6) == b"hello\n"
        busy.sendall(b"big\n")
        assert busy.recv(1) == b"x"  # the server has written it all to its transport
        trigger.sendall(f"{how}\n".encode())
        # The trigger's own connection ends too: after that, and not before, read the
        # busy one (read meanwhile, it could take everything before the abort came).
        assert _read_all(trigger)[0] == 0
        received, reset = _read_all(busy)
        if how == "close":
            assert (received, reset) == (BIG - 1, False)
        else:
            assert received < BIG - 1
        assert _read_all(idle)[0] == 0
    with connect(("127.0.0.1", port), timeout=10) as later:
        assert later.recv(6) == b"hello\n"
    assert "Traceback" not in stop(cluster_env, proc).stderr


KIND_PROGRAM = program("""
import ssl

class Kind(asyncio.Protocol):
    def connection_made(self, transport):
        kind = type(transport)
        transport.write(f"{cluster.worker.id} {kind.__module__}.{kind.__name__}".encode())
        transport.close()

async def main():
    context = None
    if len(sys.argv) > 3:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(sys.argv[3], sys.argv[4])
    await serve_on(cluster.aio.create_server, Kind, ssl=context)
""")

#: The transport classes each loop's own accept makes, in plain TCP and in TLS.
_TRANSPORTS = {
    "asyncio": (
        "asyncio.selector_events._SelectorSocketTransport",
        "asyncio.sslproto._SSLProtocolTransport",
    ),
    "uvloop": ("uvloop.loop.TCPTransport", "uvloop.loop._SSLProtocolTransport"),
}


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("policy", ["rr", "none"])
def test_transports_are_the_loops_own(cluster_env: Cluster, policy: str, loop: str) -> None:
    """The program's protocols get the transport the loop itself would make."""
    port = free_port()
    proc = start(cluster_env, KIND_PROGRAM, port, policy, loop)
    answers = {answer_of(port).decode() for _ in range(10)}
    kinds = {answer.split()[1] for answer in answers}
    assert kinds == {_TRANSPORTS[loop][0]}, answers
    if policy == "rr":
        assert {answer.split()[0] for answer in answers} == {"1", "2"}
    assert "Traceback" not in stop(cluster_env, proc).stderr


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("policy", ["rr", "none"])
def test_tls_server(cluster_env: Cluster, tmp_path: Path, policy: str, loop: str) -> None:
    """``ssl=`` works on a shared port: every worker completes the handshake and answers."""
    ca, cert, key = make_cert(tmp_path)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    port = free_port()
    proc = start(cluster_env, KIND_PROGRAM, port, policy, loop, str(cert), str(key))
    answers = set()
    for _ in range(10):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client_context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                answer = b""
                while chunk := tls.recv(100):
                    answer += chunk
                answers.add(answer.decode())
    assert {answer.split()[1] for answer in answers} == {_TRANSPORTS[loop][1]}, answers
    if policy == "rr":
        assert {answer.split()[0] for answer in answers} == {"1", "2"}
    assert "Traceback" not in stop(cluster_env, proc).stderr


KEEPALIVE_PROGRAM = program("""
import socket
mode = "keep_alive"

class Probe(asyncio.Protocol):
    def connection_made(self, transport):
        sock = transport.get_extra_info("socket")
        on = sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        transport.write(f"{mode} {int(bool(on))}".encode())
        transport.close()

async def main():
    global mode
    try:
        server = await cluster.aio.create_server(Probe, "127.0.0.1", PORT, keep_alive=True)
    except TypeError:
        mode = "refused"
        server = await cluster.aio.create_server(Probe, "127.0.0.1", PORT)
    async with server:
        await server.serve_forever()
""")


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_option_for_the_loops_own_accept_is_honoured(cluster_env: Cluster, policy: str) -> None:
    """An option ``connect_accepted_socket`` does not take (``keep_alive``, Python 3.13)
    is left to asyncio's own accept: set where asyncio has it, refused where not, and
    refused before the port is taken (each worker listens once: no connection can be
    accepted for a server that then fails)."""
    port = free_port()
    proc = start(cluster_env, KEEPALIVE_PROGRAM, port, policy, "asyncio")
    answers = {answer_of(port).decode() for _ in range(6)}
    expected = "keep_alive 1" if sys.version_info >= (3, 13) else "refused 0"
    assert answers == {expected}
    result = stop(cluster_env, proc)
    assert "Traceback" not in result.stderr
    assert '{"listened": 2}' in result.stdout


BAD_OPTIONS_PROGRAM = program("""
errors = []

class Report(asyncio.Protocol):
    def connection_made(self, transport):
        transport.write(json.dumps(errors).encode())
        transport.close()

async def main():
    for bad in ({"ssl": "yes"}, {"ssl_handshake_timeout": 5.0}, {"nonsense": 1}):
        try:
            await cluster.aio.create_server(Report, "127.0.0.1", PORT, **bad)
        except (TypeError, ValueError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    await serve_on(cluster.aio.create_server, Report)
""")


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("policy", ["rr", "none"])
def test_bad_options_are_refused_before_the_port_is_taken(
    cluster_env: Cluster, policy: str, loop: str
) -> None:
    """A bad ``ssl``, a TLS timeout without TLS and an unknown option are refused at
    ``create_server``, as the loop refuses them, and the port is not taken: the
    program's next server on it works, and each worker listened once."""
    port = free_port()
    proc = start(cluster_env, BAD_OPTIONS_PROGRAM, port, policy, loop)
    answers = {answer_of(port).decode() for _ in range(4)}
    assert len(answers) == 1
    errors = json.loads(answers.pop())
    assert errors[:2] == [
        "TypeError: ssl argument must be an SSLContext or None",
        "ValueError: ssl_handshake_timeout is only meaningful with ssl",
    ]
    assert errors[2].startswith("TypeError: ") and "'nonsense'" in errors[2]
    result = stop(cluster_env, proc)
    assert "Traceback" not in result.stderr
    assert '{"listened": 2}' in result.stdout
