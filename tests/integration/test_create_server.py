"""``cluster.create_server`` over real sockets: every address kind, option and policy.

Each cluster program forks workers that serve through ``cluster.create_server`` and
answer every connection (or datagram) with their worker id; the primary, driven by
asyncio, connects as a client and prints what it saw as JSON lines.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import textwrap

import pytest

import pycluster as cluster
from tests.conftest import Cluster, Live, free_port

PRELUDE = """
import asyncio, json, os, socket, sys, time
import pycluster as cluster

def emit(**kw):
    # One write per line: the workers share this output.
    sys.stdout.write(json.dumps(kw) + "\\n")

def ask(family, address):
    # One fresh connection: the id of the worker that answered it.
    with socket.socket(family, socket.SOCK_STREAM) as c:
        c.settimeout(5)
        c.connect(address)
        data = b""
        while chunk := c.recv(64):
            data += chunk
    return int(data)

def serve(srv):
    # Answer each connection with our id until the server is closed (disconnect).
    while True:
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        with conn:
            conn.sendall(b"%d" % cluster.worker.id)

def describe(srv):
    # What kind of listener the worker got, as the primary should see it.
    real = isinstance(srv, socket.socket)
    info = {"real": real, "name": list(srv.getsockname())}
    if real:
        info["accepting"] = srv.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        info["reuseport"] = srv.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        info["inode"] = os.fstat(srv.fileno()).st_ino
    return info

inbox = asyncio.Queue() if cluster.is_primary else None

def watch():
    # Collect workers' messages in `inbox`, and report every exit.
    cluster.on("message", lambda w, m, h: inbox.put_nowait([w.id, m]))
    cluster.on("exit", lambda w, code, sig: emit(exit=w.id, code=code, signal=sig))

def as_list(worker, address):
    # An Address named tuple, as JSON: [worker id, [address, port, address_type]].
    assert isinstance(address, cluster.Address), address
    assert address == (address.address, address.port, address.address_type)
    return [worker.id, list(address)]

async def fork_listening(n, env=None):
    # Fork n workers; wait until each has reported its listening server, both on
    # `cluster` and on the worker, with the same Address.
    got, got_on_worker = asyncio.Queue(), asyncio.Queue()
    cluster.on("listening", lambda w, a: got.put_nowait(as_list(w, a)))
    watch()
    workers = [cluster.fork(env) for _ in range(n)]
    for w in workers:
        w.on("listening", lambda a, w=w: got_on_worker.put_nowait(as_list(w, a)))
    addresses = [await asyncio.wait_for(got.get(), 15) for _ in range(n)]
    on_workers = [await asyncio.wait_for(got_on_worker.get(), 15) for _ in range(n)]
    assert sorted(addresses) == sorted(on_workers), (addresses, on_workers)
    return workers, addresses

async def finish():
    await cluster.disconnect()
    await cluster.wait_closed()
    emit(done=True)
"""


def program(body: str) -> str:
    """A cluster program: the shared helpers followed by ``body``."""
    return PRELUDE + textwrap.dedent(body)


def exits_ok(events: list[dict[str, object]], n: int) -> None:
    """Every one of ``n`` workers exited with status 0, and the primary finished."""
    exits = [e for e in events if "exit" in e]
    assert len(exits) == n, events
    assert all(e["code"] == 0 and e["signal"] is None for e in exits), exits
    assert {"done": True} in events


def only(events: list[dict[str, object]], key: str) -> dict[str, object]:
    """The single event carrying ``key``."""
    found = [e for e in events if key in e]
    assert len(found) == 1, events
    return found[0]


def has_ipv6() -> bool:
    """Whether this host can bind ``::1``."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not has_ipv6(), reason="no IPv6 loopback (::1)")

TCP4 = program(
    """
    PORT = int(os.environ["PORT"])
    if cluster.is_primary:
        how = sys.argv[1]
        if how == "attr-reuseport":
            cluster.scheduling_policy = cluster.SCHED_REUSEPORT
        elif how == "attr-none":
            cluster.scheduling_policy = cluster.SCHED_NONE
        elif how == "attr-rr":
            cluster.scheduling_policy = cluster.SCHED_RR

        async def main():
            workers, addresses = await fork_listening(2)
            kinds = [await asyncio.wait_for(inbox.get(), 10) for _ in workers]
            ids = [await asyncio.to_thread(ask, socket.AF_INET, ("127.0.0.1", PORT))
                   for _ in range(40)]
            emit(listening=addresses, kinds=kinds, ids=ids, policy=cluster.scheduling_policy)
            await finish()

        asyncio.run(main())
    else:
        srv = cluster.create_server(("127.0.0.1", PORT))
        cluster.worker.send(describe(srv))
        serve(srv)
    """
)


class TestPolicies:
    """TCP over IPv4 under each policy, chosen by the variable or by assignment."""

    @pytest.mark.parametrize(
        ("how", "env_policy", "policy"),
        [
            ("default", None, cluster.SCHED_RR),
            ("env", "none", cluster.SCHED_NONE),
            ("attr-none", None, cluster.SCHED_NONE),
            ("attr-rr", "none", cluster.SCHED_RR),  # an assignment wins over the variable
            ("attr-reuseport", None, cluster.SCHED_REUSEPORT),
        ],
    )
    def test_two_workers_share_a_port(
        self, cluster_env: Cluster, how: str, env_policy: str | None, policy: int
    ) -> None:
        port = free_port()
        env = {"PORT": str(port)}
        if env_policy is not None:
            env["PYCLUSTER_SCHED_POLICY"] = env_policy
        result = cluster_env.run(TCP4, how, env=env)
        assert result.returncode == 0, result.stderr
        events = result.events()
        report = only(events, "listening")
        assert report["policy"] == policy
        assert sorted(report["listening"]) == [
            [1, ["127.0.0.1", port, 4]],
            [2, ["127.0.0.1", port, 4]],
        ]
        ids = report["ids"]
        assert len(ids) == 40 and set(ids) <= {1, 2}
        kinds = [k for _, k in report["kinds"]]
        if policy == cluster.SCHED_RR:
            # The primary accepts and alternates between free workers; each worker's
            # socket still looks like the listening socket it asked for.
            assert set(ids) == {1, 2}
            assert all(k["real"] and k["accepting"] and not k["reuseport"] for k in kinds)
            assert all(k["name"] == ["127.0.0.1", port] for k in kinds), kinds
            assert kinds[0]["inode"] != kinds[1]["inode"], kinds  # a hand-off socket each
        elif policy == cluster.SCHED_NONE:
            # One listening socket, the primary's, accepted on in each worker.
            assert all(k["real"] and k["accepting"] and not k["reuseport"] for k in kinds)
            assert kinds[0]["inode"] == kinds[1]["inode"], kinds
        else:
            # Each worker has its own SO_REUSEPORT socket; the kernel spreads by hash.
            assert all(k["real"] and k["accepting"] and k["reuseport"] for k in kinds)
            assert kinds[0]["inode"] != kinds[1]["inode"], kinds
            assert set(ids) == {1, 2}
        exits_ok(events, 2)

    def test_invalid_policy_variable_is_a_value_error(self, cluster_env: Cluster) -> None:
        code = """
        import pycluster as cluster
        try:
            cluster.fork()
        except ValueError as exc:
            print("ValueError:", exc)
        else:
            print("forked")
        print("workers:", len(cluster.workers))
        """
        result = cluster_env.run(code, env={"PYCLUSTER_SCHED_POLICY": "fastest"})
        assert result.returncode == 0, result.stderr
        first = result.lines[0]
        assert first.startswith("ValueError:"), result.stdout
        for word in ("PYCLUSTER_SCHED_POLICY", "rr", "none", "fastest"):
            assert word in first
        assert result.lines[1] == "workers: 0"


SERVE_ADDRESS = program(
    """
    ADDRESS = json.loads(os.environ["ADDRESS"])
    FAMILY = getattr(socket, os.environ["FAMILY"])
    DUAL = os.environ.get("DUAL") == "1"
    if cluster.is_primary:
        async def main():
            workers, addresses = await fork_listening(2)
            targets = json.loads(os.environ["CONNECT"])
            answers = {}
            for fam, addr in targets:
                fam = getattr(socket, fam)
                addr = addr if isinstance(addr, str) else tuple(addr)
                answers[str(addr)] = [
                    await asyncio.to_thread(ask, fam, addr) for _ in range(6)
                ]
            emit(listening=addresses, answers=answers)
            await finish()

        asyncio.run(main())
    else:
        address = ADDRESS if isinstance(ADDRESS, str) else tuple(ADDRESS)
        srv = cluster.create_server(address, family=FAMILY, dualstack_ipv6=DUAL)
        serve(srv)
    """
)


class TestAddressKinds:
    """IPv6, dual stack and Unix sockets, shared round-robin by two workers."""

    def run(
        self,
        cluster_env: Cluster,
        address: object,
        family: str,
        connect: list[tuple[str, object]],
        dual: bool = False,
    ) -> dict[str, object]:
        import json

        env = {
            "ADDRESS": json.dumps(address),
            "FAMILY": family,
            "CONNECT": json.dumps(connect),
            "DUAL": "1" if dual else "0",
        }
        result = cluster_env.run(SERVE_ADDRESS, env=env)
        assert result.returncode == 0, result.stderr
        exits_ok(result.events(), 2)
        report = only(result.events(), "listening")
        for answers in report["answers"].values():
            assert set(answers) == {1, 2}, report  # round-robin reaches both workers
        return report

    @needs_ipv6
    def test_ipv6(self, cluster_env: Cluster) -> None:
        port = free_port()
        report = self.run(cluster_env, ["::1", port], "AF_INET6", [("AF_INET6", ["::1", port])])
        assert sorted(report["listening"]) == [[1, ["::1", port, 6]], [2, ["::1", port, 6]]]

    @needs_ipv6
    def test_dual_stack_takes_ipv4_and_ipv6(self, cluster_env: Cluster) -> None:
        port = free_port()
        connect = [("AF_INET", ["127.0.0.1", port]), ("AF_INET6", ["::1", port])]
        report = self.run(cluster_env, ["::", port], "AF_INET6", connect, dual=True)
        assert sorted(report["listening"]) == [[1, ["::", port, 6]], [2, ["::", port, 6]]]

    def test_unix_socket_path(self, cluster_env: Cluster) -> None:
        # A relative path: the Address carries it exactly as the worker passed it.
        report = self.run(cluster_env, "srv.sock", "AF_UNIX", [("AF_UNIX", "srv.sock")])
        assert sorted(report["listening"]) == [
            [1, ["srv.sock", None, -1]],
            [2, ["srv.sock", None, -1]],
        ]
        # Closed with its last worker, the socket file went with it (as in Node).
        assert not (cluster_env.tmp / "srv.sock").exists()


UDP = program(
    """
    HOST = os.environ["HOST"]
    PORT = int(os.environ["PORT"])
    FAMILY = socket.AF_INET6 if ":" in HOST else socket.AF_INET
    if cluster.is_primary:
        def until_both():
            # Send datagrams until both workers have answered one (each worker pauses
            # after answering, so the other one is left to take the next datagram).
            seen = []
            with socket.socket(FAMILY, socket.SOCK_DGRAM) as c:
                c.settimeout(0.5)
                for _ in range(400):
                    c.sendto(b"who?", (HOST, PORT))
                    try:
                        data, _ = c.recvfrom(64)
                    except TimeoutError:
                        continue
                    seen.append(int(data))
                    if len(set(seen)) == 2:
                        break
            return seen

        async def main():
            workers, addresses = await fork_listening(2)
            kinds = [await asyncio.wait_for(inbox.get(), 10) for _ in workers]
            seen = await asyncio.to_thread(until_both)
            emit(listening=addresses, seen=seen, kinds=kinds)
            await finish()

        asyncio.run(main())
    else:
        srv = cluster.create_server((HOST, PORT), type=socket.SOCK_DGRAM)
        cluster.worker.send({"type": int(srv.type), "inode": os.fstat(srv.fileno()).st_ino})
        srv.settimeout(0.2)
        while True:
            try:
                data, peer = srv.recvfrom(64)
            except TimeoutError:
                continue
            except OSError:
                break  # closed by disconnect
            srv.sendto(b"%d" % cluster.worker.id, peer)
            time.sleep(0.05)
    """
)


class TestUDP:
    """UDP is always shared: one bound socket, and both workers receive datagrams."""

    @pytest.mark.parametrize(
        ("policy", "host", "kind"),
        [("rr", "127.0.0.1", "udp4"), pytest.param("none", "::1", "udp6", marks=needs_ipv6)],
    )
    def test_both_workers_receive(
        self, cluster_env: Cluster, host: str, kind: str, policy: str
    ) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = {"HOST": host, "PORT": str(port), "PYCLUSTER_SCHED_POLICY": policy}
        result = cluster_env.run(UDP, env=env)
        assert result.returncode == 0, result.stderr
        events = result.events()
        report = only(events, "listening")
        assert sorted(report["listening"]) == [[1, [host, port, kind]], [2, [host, port, kind]]]
        assert set(report["seen"]) == {1, 2}, report
        kinds = [k for _, k in report["kinds"]]
        assert all(k["type"] == socket.SOCK_DGRAM for k in kinds)
        assert kinds[0]["inode"] == kinds[1]["inode"], kinds  # the same socket
        exits_ok(events, 2)


FD = program(
    """
    if cluster.is_primary:
        # The primary's own listening socket: workers name it by its descriptor.
        own = socket.create_server(("127.0.0.1", 0))
        port = own.getsockname()[1]

        async def main():
            workers, addresses = await fork_listening(2, env={"FD": str(own.fileno())})
            ids = [await asyncio.to_thread(ask, socket.AF_INET, ("127.0.0.1", port))
                   for _ in range(6)]
            emit(listening=addresses, port=port, ids=ids)
            await finish()

        asyncio.run(main())
        own.close()
    else:
        srv = cluster.create_server(None, fd=int(os.environ["FD"]))
        serve(srv)
    """
)

PORT0 = program(
    """
    if cluster.is_primary:
        async def main():
            workers, addresses = await fork_listening(3)
            port = addresses[0][1][1]
            ids = [await asyncio.to_thread(ask, socket.AF_INET, ("127.0.0.1", port))
                   for _ in range(12)]
            emit(listening=addresses, ids=ids)
            await finish()

        asyncio.run(main())
    else:
        serve(cluster.create_server(("127.0.0.1", 0)))
    """
)

EXCLUSIVE = program(
    """
    if cluster.is_primary:
        async def main():
            listening = []
            cluster.on("listening", lambda w, a: listening.append(w.id))
            watch()
            workers = [cluster.fork() for _ in range(2)]
            ports = dict([await asyncio.wait_for(inbox.get(), 10) for _ in workers])
            answers = {
                str(wid): [await asyncio.to_thread(ask, socket.AF_INET, ("127.0.0.1", p))
                           for _ in range(3)]
                for wid, p in ports.items()
            }
            emit(ports=ports, answers=answers, listening=listening)
            await finish()

        asyncio.run(main())
    else:
        srv = cluster.create_server(("127.0.0.1", 0), exclusive=True)
        cluster.worker.send(srv.getsockname()[1])
        serve(srv)
    """
)


class TestPortOptions:
    """``fd=N``, port 0, ``exclusive=True`` and ``backlog``."""

    @pytest.mark.parametrize("policy", ["rr", "none"])
    def test_fd_of_the_primary(self, cluster_env: Cluster, policy: str) -> None:
        result = cluster_env.run(FD, env={"PYCLUSTER_SCHED_POLICY": policy})
        assert result.returncode == 0, result.stderr
        events = result.events()
        report = only(events, "listening")
        port = report["port"]
        assert sorted(report["listening"]) == [
            [1, ["127.0.0.1", port, 4]],
            [2, ["127.0.0.1", port, 4]],
        ]
        assert set(report["ids"]) <= {1, 2} and len(report["ids"]) == 6
        if policy == "rr":
            assert set(report["ids"]) == {1, 2}
        exits_ok(events, 2)

    @pytest.mark.parametrize("policy", ["rr", "none"])
    def test_port_zero_is_one_random_port_for_all(self, cluster_env: Cluster, policy: str) -> None:
        result = cluster_env.run(PORT0, env={"PYCLUSTER_SCHED_POLICY": policy})
        assert result.returncode == 0, result.stderr
        events = result.events()
        report = only(events, "listening")
        ports = {a[1] for _, a in report["listening"]}
        assert len(ports) == 1 and next(iter(ports)) != 0, report
        assert sorted(w for w, _ in report["listening"]) == [1, 2, 3]
        assert set(report["ids"]) <= {1, 2, 3} and len(report["ids"]) == 12
        if policy == "rr":
            assert set(report["ids"]) == {1, 2, 3}
        exits_ok(events, 3)

    def test_exclusive_port_zero_gives_each_worker_its_own_port(self, cluster_env: Cluster) -> None:
        result = cluster_env.run(EXCLUSIVE)
        assert result.returncode == 0, result.stderr
        events = result.events()
        report = only(events, "ports")
        ports = report["ports"]
        assert sorted(ports) == ["1", "2"] and len(set(ports.values())) == 2, report
        # Each port is served by its own worker alone.
        assert report["answers"] == {"1": [1, 1, 1], "2": [2, 2, 2]}
        # As in Node, an exclusive server is the worker's own: not reported.
        assert report["listening"] == []
        exits_ok(events, 2)

    @pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss(8) to read the backlog")
    @pytest.mark.parametrize("policy", ["rr", "none"])
    @pytest.mark.parametrize("backlog", [7, 1000])
    def test_backlog_reaches_the_listening_socket(
        self, cluster_env: Cluster, live: Live, policy: str, backlog: int
    ) -> None:
        # At least Node's 511 (a program's small request_queue_size must not drop a
        # burst), a larger request as asked, both capped by the kernel's somaxconn.
        with open("/proc/sys/net/core/somaxconn") as f:
            expected = min(max(backlog, 511), int(f.read()))
        port = free_port()
        code = program(
            """
            PORT = int(os.environ["PORT"])
            if cluster.is_primary:
                cluster.on("listening", lambda w, a: emit(listening=w.id))
                cluster.fork()
                cluster.run()
            else:
                serve(cluster.create_server(("127.0.0.1", PORT), backlog=int(os.environ["BACKLOG"])))
            """
        )
        program_ = live.start(
            code,
            env={"PORT": str(port), "PYCLUSTER_SCHED_POLICY": policy, "BACKLOG": str(backlog)},
        )
        program_.wait_for(listening=1)
        out = subprocess.run(
            ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
        ).stdout
        rows = [line.split() for line in out.splitlines() if line.strip()]
        # A listening socket's Send-Q column is its backlog; one socket, the shared one.
        assert len(rows) == 1, out
        assert rows[0][2] == str(expected), out
        program_.proc.terminate()
        assert program_.finish().returncode == 0


class TestOutsideACluster:
    """Outside a cluster, ``cluster.create_server`` is ``socket.create_server``."""

    def test_tcp_matches_socket_create_server(self) -> None:
        with (
            cluster.create_server(("127.0.0.1", 0)) as ours,
            socket.create_server(("127.0.0.1", 0)) as theirs,
        ):
            assert type(ours) is type(theirs) is socket.socket
            assert (ours.family, ours.type) == (theirs.family, theirs.type)
            assert ours.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
            assert ours.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == theirs.getsockopt(
                socket.SOL_SOCKET, socket.SO_REUSEADDR
            )
            with socket.create_connection(ours.getsockname(), timeout=5) as client:
                conn, peer = ours.accept()
                with conn:
                    assert peer == client.getsockname()

    def test_options_pass_through(self) -> None:
        with cluster.create_server(("127.0.0.1", 0), reuse_port=True, backlog=3) as s:
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        with cluster.create_server(("127.0.0.1", 0), exclusive=True) as s:
            assert type(s) is socket.socket
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1

    @needs_ipv6
    def test_dual_stack(self) -> None:
        with cluster.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True) as s:
            assert s.family == socket.AF_INET6
            assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
            with socket.create_connection(("127.0.0.1", s.getsockname()[1]), timeout=5):
                conn, _ = s.accept()
                conn.close()

    def test_udp_unix_and_fd(self, tmp_path: os.PathLike[str]) -> None:
        with cluster.create_server(("127.0.0.1", 0), type=socket.SOCK_DGRAM) as udp:
            assert udp.type == socket.SOCK_DGRAM and udp.getsockname()[1] != 0
        path = os.path.join(tmp_path, "s.sock")
        with cluster.create_server(path, family=socket.AF_UNIX) as unix:
            assert unix.family == socket.AF_UNIX and unix.getsockname() == path
            assert unix.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        raw = socket.socket()
        raw.bind(("127.0.0.1", 0))
        with cluster.create_server(None, fd=raw.detach()) as wrapped:
            assert wrapped.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1

    def test_in_the_primary(self, cluster_env: Cluster) -> None:
        code = program(
            """
            async def main():
                reported = []
                cluster.on("listening", lambda w, a: reported.append(list(a)))
                cluster.fork()
                srv = cluster.create_server(("127.0.0.1", 0))
                with srv, socket.create_connection(srv.getsockname(), timeout=5):
                    conn, _ = srv.accept()
                    conn.close()
                emit(type=type(srv).__name__, module=type(srv).__module__,
                     reported=reported)
                await finish()

            if cluster.is_primary:
                asyncio.run(main())
            """
        )
        result = cluster_env.run(code)
        assert result.returncode == 0, result.stderr
        assert only(result.events(), "type") == {
            "type": "socket",
            "module": "socket",
            "reported": [],
        }


RELISTEN = """
import json, os, sys
import pycluster as cluster

if cluster.is_primary:
    cluster.scheduling_policy = getattr(cluster, sys.argv[1])
    cluster.fork({"ROLE": "stay"})
    cluster.fork({"ROLE": "cycle"})
    cluster.on("message", lambda w, m, h: (print(json.dumps(m), flush=True), cluster.disconnect()))
    cluster.run()
else:
    port = int(os.environ["PORT"])
    if os.environ["ROLE"] == "stay":
        srv = cluster.create_server(("127.0.0.1", port))
        cluster.worker.wait_disconnected()
    else:
        errors = []
        for _ in range(50):
            try:
                cluster.create_server(("127.0.0.1", port)).close()
            except OSError as exc:
                errors.append(str(exc))
        cluster.worker.send({"errors": errors})
        cluster.worker.wait_disconnected()
"""


@pytest.mark.parametrize("policy", ["SCHED_RR", "SCHED_NONE"])
def test_close_then_listen_again_at_once(cluster_env: Cluster, policy: str) -> None:
    # While another worker keeps the port open, one worker closes its server and
    # opens it again, fifty times over, faster than the primary reads the closes.
    result = cluster_env.run(RELISTEN, policy, env={"PORT": str(free_port())}, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.events() == [{"errors": []}]


FD_KINDS = """
import json, os, socket, sys
import pycluster as cluster

def emit(**kw):
    sys.stdout.write(json.dumps(kw) + "\\n")
    sys.stdout.flush()

if cluster.is_primary:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(os.path.abspath("given.sock"))
    unix.listen()
    r, w = os.pipe()
    os.makedirs("sub", exist_ok=True)
    cluster.setup_primary(cwd="sub")
    cluster.on("listening", lambda wk, a: emit(listening=list(a)))
    counts = []

    def on_message(worker, msg, handle):
        counts.append(len(os.listdir("/proc/self/fd")))
        if msg == "done":
            emit(fds=counts, sub=os.listdir("sub"), here=os.path.exists("rel.sock"))
            cluster.disconnect()

    cluster.on("message", on_message)
    cluster.fork({"UDP": str(udp.fileno()), "UNIX": str(unix.fileno()), "PIPE": str(r),
                  "PORT": str(udp.getsockname()[1])})
    cluster.run()
else:
    env = os.environ
    # A UDP descriptor is shared as UDP, whatever the worker's defaults say.
    u = cluster.create_server(None, fd=int(env["UDP"]))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.sendto(b"hello", ("127.0.0.1", int(env["PORT"])))
    u.settimeout(5)
    emit(udp=u.type == socket.SOCK_DGRAM, got=u.recv(64).decode())
    # A Unix-socket descriptor reports its path. (Kept referenced: a socket object
    # that is dropped is closed by the garbage collector, as any socket is.)
    given = cluster.create_server(None, fd=int(env["UNIX"]))
    # A relative path is the worker's (cwd=sub), not the primary's.
    rel = cluster.create_server("rel.sock")
    # A descriptor that is no socket: EBADF with a clear reason naming it, and no leak.
    errors = set()
    for i in range(20):
        try:
            cluster.create_server(None, fd=int(env["PIPE"]))
        except OSError as exc:
            errors.add(str(exc))
        if i in (0, 19):
            cluster.worker.send(i)
    emit(errors=sorted(errors))
    cluster.worker.send("done")
    cluster.worker.wait_disconnected()
"""


def test_descriptors_and_relative_paths_are_taken_for_what_they_are(cluster_env: Cluster) -> None:
    result = cluster_env.run(FD_KINDS, timeout=20)
    assert result.returncode == 0, result.stderr
    events = result.events()
    (udp,) = [e for e in events if "udp" in e]
    assert udp == {"udp": True, "got": "hello"}
    listening = [e["listening"] for e in events if "listening" in e]
    assert listening[0][2] == "udp4"
    assert listening[1] == [str(cluster_env.tmp / "given.sock"), None, -1]
    assert listening[2] == ["rel.sock", None, -1]
    (errors,) = [e["errors"] for e in events if "errors" in e]
    assert len(errors) == 1 and "'fd=" in errors[0], errors
    # Refused as API.md says (EBADF), with the reason spelled out.
    assert errors[0].startswith(f"[Errno {errno.EBADF}] "), errors
    assert "not a socket" in errors[0], errors
    (final,) = [e for e in events if "fds" in e]
    first, after_twenty, _ = final["fds"]
    assert after_twenty == first  # nothing leaked by the refused descriptors
    assert final["sub"] == ["rel.sock"] and final["here"] is False


FAIR_SHARE = """
import json, os, socket, sys, time
import pycluster as cluster

def emit(**kw):
    sys.stdout.write(json.dumps(kw) + "\\n")
    sys.stdout.flush()

PORT = int(os.environ["PORT"])
if cluster.is_primary:
    cluster.scheduling_policy = cluster.SCHED_NONE
    cluster.on("message", lambda w, m, h: (emit(**m), cluster.disconnect()))
    cluster.fork()
    cluster.run()
else:
    srv = cluster.create_server(("127.0.0.1", PORT))
    srv.setblocking(False)

    def wake_up():
        # An event loop's accept: until "would block", in one wake-up.
        taken = []
        while True:
            try:
                taken.append(srv.accept()[0])
            except BlockingIOError:
                return taken

    clients = [socket.create_connection(("127.0.0.1", PORT)) for _ in range(6)]
    time.sleep(0.2)  # all six wait in the shared accept queue
    first = wake_up()
    time.sleep(0.01)  # the next wake-up of the loop
    later = wake_up()
    # A steady stream (no quiet spell of 50 ms) for longer than a burst lasts: then a
    # wake-up takes more at once, as every worker is running anyway.
    until = time.monotonic() + 0.4
    while time.monotonic() < until:
        clients.append(socket.create_connection(("127.0.0.1", PORT)))
        time.sleep(0.005)
        clients += wake_up()
    clients += [socket.create_connection(("127.0.0.1", PORT)) for _ in range(12)]
    time.sleep(0.02)
    steady = wake_up()
    cluster.worker.send({"first": len(first), "later": len(later), "steady": len(steady)})
    cluster.worker.wait_disconnected()
"""


def test_a_shared_socket_gives_a_few_connections_per_wake_up(cluster_env: Cluster) -> None:
    # Not the whole queue at once (asyncio accepts up to `backlog` per wake-up): the
    # other workers, woken for the same connections, get their share of a burst; under
    # a steady stream a few more (STEADY_BURST), still not the whole queue.
    result = cluster_env.run(FAIR_SHARE, env={"PORT": str(free_port())}, timeout=20)
    assert result.returncode == 0, result.stderr
    assert result.events() == [{"first": 2, "later": 2, "steady": 8}]
