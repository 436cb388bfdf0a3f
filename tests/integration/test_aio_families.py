"""``cluster.aio`` listens where asyncio listens: every address the host resolves to.

``asyncio.start_server(cb, None, port)`` listens on ``0.0.0.0`` and ``::``; so must
``cluster.aio.start_server`` in a worker (each a shared listener), and so must an
unchanged asyncio program under ``pycluster run``, or its IPv6 clients are refused.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import Cluster, Commands, free_port
from tests.integration.test_create_server import needs_ipv6

SERVER = """
import asyncio, json, os, socket, sys
import pycluster as cluster

PORT = int(os.environ["PORT"])

async def on_client(reader, writer):
    writer.write(b"%d" % (cluster.worker.id if cluster.worker else 0))
    await writer.drain()
    writer.close()

def ask(host):
    try:
        with socket.create_connection((host, PORT), timeout=5) as c:
            return c.recv(16).decode()
    except OSError as exc:
        return repr(exc)

async def main():
    server = await START(on_client, None, PORT)
    names = sorted(list(s.getsockname()[:2]) for s in server.sockets)
    answers = {host: await asyncio.to_thread(ask, host) for host in ("127.0.0.1", "::1")}
    with open(f"seen-{os.getpid()}.json", "w") as f:
        json.dump({"names": names, "answers": answers}, f)
    server.close()
    await server.wait_closed()

START = asyncio.start_server if "plain" in sys.argv else cluster.aio.start_server
if cluster.is_primary and "cluster" in sys.argv:
    cluster.scheduling_policy = getattr(cluster, sys.argv[-1])
    cluster.fork()
    cluster.run()
else:
    asyncio.run(main())
"""


def seen(cluster_env: Cluster) -> dict[str, object]:
    (path,) = cluster_env.tmp.glob("seen-*.json")
    result: dict[str, object] = json.loads(path.read_text())
    return result


@needs_ipv6
@pytest.mark.parametrize("policy", ["SCHED_RR", "SCHED_NONE"])
def test_host_none_listens_on_ipv4_and_ipv6(cluster_env: Cluster, policy: str) -> None:
    port = free_port()
    result = cluster_env.run(SERVER, "cluster", policy, env={"PORT": str(port)}, timeout=30)
    assert result.returncode == 0, result.stderr
    assert seen(cluster_env) == {
        "names": [["0.0.0.0", port], ["::", port]],
        "answers": {"127.0.0.1": "1", "::1": "1"},
    }


@needs_ipv6
def test_plain_asyncio_does_the_same(cluster_env: Cluster) -> None:
    # What the cluster must match: asyncio's own server, outside any cluster.
    port = free_port()
    result = cluster_env.run(SERVER, "plain", env={"PORT": str(port)}, timeout=30)
    assert result.returncode == 0, result.stderr
    assert seen(cluster_env) == {
        "names": [["0.0.0.0", port], ["::", port]],
        "answers": {"127.0.0.1": "0", "::1": "0"},
    }


@needs_ipv6
@pytest.mark.parametrize("policy", ["rr", "none"])
def test_unchanged_asyncio_program_under_run(commands: Commands, policy: str) -> None:
    port = free_port()
    path = commands.cluster.write("server.py", SERVER)
    code, output = commands.run(
        "run", "-w", "1", "--policy", policy, "--no-control", "--restart", "never",
        str(path), "plain", env={"PORT": str(port)}, timeout=30,
    )  # fmt: skip
    assert code == 0, output
    assert seen(commands.cluster) == {
        "names": [["0.0.0.0", port], ["::", port]],
        "answers": {"127.0.0.1": "1", "::1": "1"},
    }, output
