"""What an ASGI app under ``pycluster serve`` sees of the connection's two ends.

serve answers uvicorn's address questions from what the transport read when it was
made (``pycluster._cli.coalesce.KnownAddresses``), and on uvloop gives the loop a bare
descriptor (``pycluster.aio._Descriptor``): the app must still see the real client and
server addresses, under both policies, on both loops, over IPv4 and IPv6.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket

import pytest

from pycluster import aio
from pycluster._cli.coalesce import CoalescingTransport, KnownAddresses
from tests.conftest import Cluster, Commands, free_port
from tests.integration.test_cli_serve import serve, stop
from tests.integration.test_create_server import has_ipv6

pytest.importorskip("uvicorn")

ADDRESS_APP = """
import json

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = json.dumps({"client": scope["client"], "server": scope["server"]}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
"""


def ask(family: int, host: str, port: int) -> tuple[dict[str, list[object]], tuple[str, int]]:
    """One GET over a new connection: what the app saw, and the client's own address."""
    with socket.socket(family) as client:
        client.settimeout(10)
        client.connect((host, port))
        mine = client.getsockname()[:2]
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := client.recv(4096):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return json.loads(body), mine


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("policy", ["rr", "none"])
def test_the_app_sees_both_ends_of_its_connection(
    cluster_env: Cluster, commands: Commands, policy: str, loop: str
) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    cluster_env.write("addresses.py", ADDRESS_APP)
    port = free_port()
    binds = ["-b", f"127.0.0.1:{port}"]
    if has_ipv6():
        binds += ["-b", f"[::1]:{port}"]
    command = serve(
        commands,
        cluster_env,
        "addresses:app",
        *("-w", "2", *binds, "--policy", policy, "--loop", loop, "--interface", "asgi"),
    )
    ends = [(socket.AF_INET, "127.0.0.1")]
    if has_ipv6():
        ends.append((socket.AF_INET6, "::1"))
    for family, host in ends:
        for _ in range(4):  # both workers
            seen, mine = ask(family, host, port)
            assert seen["client"] == [mine[0], mine[1]]
            assert seen["server"] == [host, port]
    stop(command)


async def _pair(family: int) -> tuple[asyncio.Transport, socket.socket]:
    """A server-side transport of the running loop, and its client's socket."""
    loop = asyncio.get_running_loop()
    made: asyncio.Future[asyncio.Transport] = loop.create_future()

    class Take(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            made.set_result(transport)  # type: ignore[arg-type]

    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    server = await loop.create_server(Take, host, 0)
    client = socket.socket(family)
    client.setblocking(False)
    await loop.sock_connect(client, server.sockets[0].getsockname()[:2])
    transport = await made
    server.close()
    return transport, client


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_known_addresses_are_the_sockets(loop_name: str, family: int) -> None:
    if family == socket.AF_INET6 and not has_ipv6():
        pytest.skip("no IPv6 loopback")

    async def check() -> None:
        transport, client = await _pair(family)
        try:
            real = transport.get_extra_info("socket")
            wrapped = CoalescingTransport(transport, asyncio.get_running_loop())
            sock = wrapped.get_extra_info("socket")
            assert isinstance(sock, KnownAddresses)
            assert sock.getsockname() == real.getsockname() == client.getpeername()
            assert sock.getpeername() == real.getpeername() == client.getsockname()
            assert sock.fileno() == real.fileno() and sock.family == real.family
            assert wrapped.get_extra_info("peername") == client.getsockname()
            assert wrapped.get_extra_info("nothing", 7) == 7
        finally:
            transport.close()
            client.close()

    if loop_name == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        uvloop.run(check())
    else:
        asyncio.run(check())


def test_a_descriptor_the_loop_never_took_is_closed_once() -> None:
    a, b = socket.socketpair()
    try:
        fd = os.dup(a.fileno())
        never_taken = aio._Descriptor(socket.AF_UNIX, 0, fd)
        never_taken.close()
        never_taken.close()
        with pytest.raises(OSError):
            os.fstat(fd)
        fd = os.dup(a.fileno())
        taken = aio._Descriptor(socket.AF_UNIX, 0, fd)
        assert taken.fileno() == fd
        taken.close()  # the loop owns it now: still open
        os.fstat(fd)
        os.close(fd)
    finally:
        a.close()
        b.close()
