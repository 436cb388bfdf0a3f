"""What a program observes of the listening sockets it makes, written as JSON.

Usage: ``socket_probe.py PORT OUTPUT``. Run plainly and as a ``pycluster run`` worker, the two
records must be equal: a worker's listening socket is a real socket that behaves as the
one the program asked for. Every observation is a value, or the name of the exception
that the step raised (``blocked`` when a call that must not block did).
"""

import errno
import json
import os
import select
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

HOST = "127.0.0.1"


class Blocked(Exception):
    """A call that should have returned at once was still waiting."""


@contextmanager
def at_most(seconds: float) -> Iterator[None]:
    def alarm(signum: int, frame: Any) -> None:
        raise Blocked

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def attempt(step: Callable[[], Any], limit: float = 3.0) -> Any:
    """The step's value, or the name of what it raised (``blocked`` past ``limit`` s)."""
    try:
        with at_most(limit):
            return step()
    except Blocked:
        return "blocked"
    except Exception as exc:
        return raised(exc)


def raised(exc: Exception) -> str:
    """An exception's type, and its errno's name when it has one."""
    code = getattr(exc, "errno", None)
    return f"raised {type(exc).__name__}" + (f" {errno.errorcode[code]}" if code else "")


def mode(sock: socket.socket) -> list[Any]:
    """Blocking mode as Python reports it."""
    return [sock.getblocking(), sock.gettimeout()]


def address(sock_address: Any, port: int) -> Any:
    """An address with the port the test chose (or the kernel's, for 0) made comparable."""
    if isinstance(sock_address, str):
        return sock_address  # a Unix socket's path
    host, got, *rest = sock_address
    return [host, "PORT" if got == port else ("EPHEMERAL" if port == 0 else got), *rest]


def options(sock: socket.socket) -> dict[str, Any]:
    sol = socket.SOL_SOCKET
    return {
        "SO_REUSEADDR": attempt(lambda: sock.getsockopt(sol, socket.SO_REUSEADDR) != 0),
        "SO_TYPE": attempt(lambda: sock.getsockopt(sol, socket.SO_TYPE)),
        "SO_DOMAIN": attempt(lambda: sock.getsockopt(sol, socket.SO_DOMAIN)),
        "SO_ACCEPTCONN": attempt(lambda: sock.getsockopt(sol, socket.SO_ACCEPTCONN)),
    }


def accept_from_client(
    listener: socket.socket, target: Any, family: int = socket.AF_INET
) -> dict[str, Any]:
    """Connect a client to ``target``, accept it, and look at what both ends see."""
    client = socket.socket(family, socket.SOCK_STREAM)
    client.settimeout(5)
    client.connect(target)
    seen: dict[str, Any] = {}
    try:
        seen["select_readable"] = attempt(lambda: bool(select.select([listener], [], [], 5)[0]))
        with at_most(5):
            conn, peer = listener.accept()
        with conn:
            seen["conn_type_is_socket"] = type(conn) is socket.socket
            seen["conn_family_type"] = [int(conn.family), int(conn.type)]
            seen["peer_is_client"] = peer == client.getsockname()
            seen["conn_sockname_is_server"] = conn.getsockname() == client.getpeername()
            seen["conn_peername_is_client"] = conn.getpeername() == client.getsockname()
            seen["conn_timeout"] = [conn.gettimeout(), conn.getblocking()]
            # Linux copies these from the listening socket to the connections it accepts.
            seen["conn_TCP_NODELAY"] = attempt(
                lambda: conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            )
            seen["conn_SO_KEEPALIVE"] = attempt(
                lambda: conn.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0
            )
            client.sendall(b"ping")
            seen["conn_recv"] = conn.recv(16).decode()
            conn.sendall(b"pong")
            seen["client_recv"] = client.recv(16).decode()
    except Blocked:
        seen["accept"] = "blocked"
    except Exception as exc:
        seen["accept"] = raised(exc)
    finally:
        client.close()
    return seen


def probe_nonblocking_before_bind(port: int) -> dict[str, Any]:
    """tornado's way: non-blocking and SO_REUSEADDR set before bind."""
    obs: dict[str, Any] = {}
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fds = [sock.fileno()]
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setblocking(False)
    obs["bind"] = attempt(lambda: sock.bind((HOST, port)))
    fds.append(sock.fileno())
    obs["listen"] = attempt(lambda: sock.listen(128))
    fds.append(sock.fileno())
    obs["isinstance_socket"] = isinstance(sock, socket.socket)
    obs["fileno_stable"] = len(set(fds)) == 1
    obs["family_type_proto"] = attempt(lambda: [int(sock.family), int(sock.type), sock.proto])
    obs["blocking_timeout"] = attempt(lambda: mode(sock))
    obs["getsockname"] = attempt(lambda: address(sock.getsockname(), port))
    obs["options"] = options(sock)
    obs["accept_nothing_waiting"] = attempt(sock.accept)
    obs["select_nothing_waiting"] = attempt(lambda: select.select([sock], [], [], 0.2)[0] == [])
    obs["set_TCP_NODELAY"] = attempt(
        lambda: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    )
    obs["get_TCP_NODELAY"] = attempt(
        lambda: sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    )
    obs["set_SO_REUSEADDR_after_listen"] = attempt(
        lambda: sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    )
    obs["set_SO_KEEPALIVE_after_listen"] = attempt(
        lambda: sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    )
    obs["inheritable_default"] = attempt(sock.get_inheritable)
    obs["set_inheritable"] = attempt(lambda: sock.set_inheritable(True))
    obs["inheritable_after_set"] = [attempt(sock.get_inheritable), os.get_inheritable(fds[0])]
    attempt(lambda: sock.set_inheritable(False))
    obs["inheritable_after_unset"] = attempt(sock.get_inheritable)
    obs["accepted_nonblocking"] = accept_from_client(sock, (HOST, port))

    # Blocking mode changed after listen: a timeout, then blocking again.
    obs["settimeout_after_listen"] = attempt(lambda: sock.settimeout(0.3))
    obs["timeout_after_listen"] = attempt(lambda: mode(sock))
    obs["accept_with_timeout"] = attempt(sock.accept)
    attempt(lambda: sock.settimeout(None))
    obs["blocking_after_listen"] = attempt(lambda: mode(sock))
    # Blocking: with nothing waiting, accept() waits (here: until the probe gives up).
    obs["accept_blocking_nothing_waiting"] = attempt(sock.accept, limit=0.5)
    obs["accepted_blocking"] = accept_from_client(sock, (HOST, port))

    # dup(): another working listening socket on the same port.
    dup = sock.dup()
    obs["dup"] = {
        "isinstance_socket": isinstance(dup, socket.socket),
        "other_fd": dup.fileno() != sock.fileno(),
        "family_type": [int(dup.family), int(dup.type)],
        "getsockname": attempt(lambda: address(dup.getsockname(), port)),
        "options": options(dup),
        "accepted": accept_from_client(dup, (HOST, port)),
    }
    # detach(): the descriptor outlives the object, and a new socket object takes it.
    fd = dup.detach()
    obs["detach"] = [dup.fileno(), fd >= 0]
    again = socket.socket(fileno=fd)
    obs["reopened"] = {
        "family_type": [int(again.family), int(again.type)],
        "getsockname": attempt(lambda: address(again.getsockname(), port)),
        "options": options(again),
        "accepted": accept_from_client(again, (HOST, port)),
    }
    again.close()
    # shutdown() on a listening socket ends its accept() (servers use it to stop an
    # accept thread).
    obs["shutdown"] = attempt(lambda: sock.shutdown(socket.SHUT_RDWR))
    obs["accept_after_shutdown"] = attempt(sock.accept, limit=1.0)
    sock.close()
    obs["fileno_after_close"] = sock.fileno()
    return obs


def probe_timeout_before_bind() -> dict[str, Any]:
    """A timeout set before bind (port 0): accept waits that long, then TimeoutError."""
    obs: dict[str, Any] = {}
    sock = socket.socket()
    sock.settimeout(0.3)
    obs["bind"] = attempt(lambda: sock.bind((HOST, 0)))
    obs["listen"] = attempt(sock.listen)
    obs["blocking_timeout"] = attempt(lambda: mode(sock))
    obs["getsockname"] = attempt(lambda: address(sock.getsockname(), 0))
    obs["accept_nothing_waiting"] = attempt(sock.accept)
    port = sock.getsockname()[1]
    obs["accepted"] = accept_from_client(sock, (HOST, port))
    sock.close()
    return obs


def probe_family(family: int, bind_to: Any) -> dict[str, Any]:
    """The main observations for another address family (IPv6 on port 0, a Unix path)."""
    obs: dict[str, Any] = {}
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    obs["bind"] = attempt(lambda: sock.bind(bind_to))
    obs["listen"] = attempt(lambda: sock.listen(16))
    obs["isinstance_socket"] = isinstance(sock, socket.socket)
    obs["family_type"] = [int(sock.family), int(sock.type)]
    obs["blocking_timeout"] = attempt(lambda: mode(sock))
    obs["getsockname"] = attempt(lambda: address(sock.getsockname(), 0))
    obs["options"] = options(sock)
    obs["accept_nothing_waiting"] = attempt(sock.accept)
    target = bind_to if family == socket.AF_UNIX else sock.getsockname()
    obs["accepted"] = accept_from_client(sock, target, family)
    dup = sock.dup()
    obs["dup"] = {
        "getsockname": attempt(lambda: address(dup.getsockname(), 0)),
        "accepted": accept_from_client(dup, target, family),
    }
    again = socket.socket(fileno=dup.detach())
    obs["reopened"] = {
        "family_type": [int(again.family), int(again.type)],
        "getsockname": attempt(lambda: address(again.getsockname(), 0)),
        "accepted": accept_from_client(again, target, family),
    }
    again.close()
    sock.close()
    # Not compared: whether a Unix socket's file outlives close(). The cluster's
    # primary owns the file, and removes it once no worker listens there.
    return obs


if __name__ == "__main__":
    observed = {
        "nonblocking_before_bind": probe_nonblocking_before_bind(int(sys.argv[1])),
        "timeout_before_bind": probe_timeout_before_bind(),
        "ipv6": probe_family(socket.AF_INET6, ("::1", 0)),
        "unix": probe_family(socket.AF_UNIX, "probe.sock"),
    }
    # A file, not stdout: a line this long may interleave with the cluster's log lines.
    with open(sys.argv[2], "w") as out:
        json.dump(observed, out, sort_keys=True)
