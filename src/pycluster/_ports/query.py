"""Asking the primary for a listener, and putting its descriptor behind a program's socket."""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from pycluster import _child as child
from pycluster._ipc.channel import ChannelClosedError
from pycluster._ipc.messages import Act
from pycluster._ports.listener import (
    HISTORY,
    OWN,
    RR,
    SHARED,
    C,
    Listener,
    address_type,
    blocking,
    register,
    registry_lock,
    retired_names,
)
from pycluster._turns import AcceptTurns

#: This worker's port-0 servers in use, per address asked for: ``[next index, indexes]``.
#: As Node's ``index``: the k-th port-0 server of every worker shares one port, so a
#: worker's second port-0 server gets a port of its own, as outside a cluster.
_port_zero: dict[tuple[Any, ...], tuple[list[int], set[int]]] = {}
_port_zero_lock = threading.Lock()


def _take_index(family: int, type_: int, host: Any) -> tuple[int, Callable[[], None]]:
    """The next port-0 index for ``host``, and what gives it back when the server ends."""
    key = (family, type_, host)
    with _port_zero_lock:
        counter, used = _port_zero.setdefault(key, ([0], set()))
        index = counter[0]
        counter[0] += 1
        used.add(index)

    def release() -> None:
        with _port_zero_lock:
            entry = _port_zero.get(key)
            if entry is not None and entry[1] is used:
                used.discard(index)
                if not used:  # every one is closed: the next is the first again
                    del _port_zero[key]

    return index, release


def share(
    sock: socket.socket,
    address: Any,
    *,
    backlog: int | None = None,
    fd: int | None = None,
    policy: int | None = None,
    created: bool = False,
) -> None:
    """Bind ``sock`` the cluster's way: its descriptor becomes the shared listener.

    Raises ``OSError`` where ``bind()`` would (the primary's ``EADDRINUSE``,
    ``EACCES``, ...). Outside a worker, ``sock`` is simply bound.
    """
    runtime = child.runtime()
    if runtime is None:
        C.bind(sock, address)
        return
    dualstack = False
    if sock.family == socket.AF_INET6:
        dualstack = not C.getsockopt(sock, socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
    reply = query(
        runtime, int(sock.family), int(sock.type), address, backlog, fd, policy, dualstack
    )
    adopt(runtime, sock, reply, address, fd, created)


def query(
    runtime: child.ChildRuntime,
    family: int,
    type_: int,
    address: Any,
    backlog: int | None,
    fd: int | None,
    policy: int | None,
    dualstack: bool,
) -> dict[str, Any]:
    """Ask the primary for the listener at ``address``; raises ``OSError`` as bind would."""
    host: Any = None
    port: int | None = None
    if fd is not None:
        pass  # the primary's descriptor decides what it is
    elif family == socket.AF_UNIX:
        path = os.fsdecode(address) if isinstance(address, (bytes, os.PathLike)) else address
        # Relative to this worker's directory, not the primary's (as Node resolves it).
        host = os.path.abspath(path) if path and not path.startswith("\0") else path
    else:
        host, port = address[0] or "", int(address[1])
    index: int | None = None
    release: Callable[[], None] | None = None
    if port == 0 and fd is None:
        index, release = _take_index(family, type_, host)
    try:
        reply = runtime.request(
            Act.QUERY_SERVER,
            address=host,
            port=port,
            family=family,
            type=type_,
            backlog=backlog,
            fd=fd,
            dualstack=dualstack,
            policy=policy,
            index=index,
        )
    except ChannelClosedError:
        if release is not None:
            release()
        if not runtime.worker.exited_after_disconnect:
            raise
        reply = {"errno": errno.ECONNABORTED}
    except BaseException:
        if release is not None:
            release()
        raise
    if "errno" in reply:
        if release is not None:
            release()
        for extra in reply.get("_fds", []):
            os.close(extra)
        err = int(reply["errno"])
        if err != errno.ECONNABORTED or not runtime.worker.exited_after_disconnect:
            where = f"fd={fd}" if fd is not None else address
            raise OSError(err, str(reply.get("error") or os.strerror(err)), where)
    elif release is not None:
        reply["_release"] = release  # the listener gives its index back when it ends
    return reply


def adopt(
    runtime: child.ChildRuntime,
    sock: socket.socket,
    reply: dict[str, Any],
    address: Any,
    fd: int | None,
    created: bool,
) -> None:
    """Put the descriptor the primary answered with behind ``sock``, and register it."""
    release: Callable[[], None] | None = reply.pop("_release", None)
    try:
        listener = _adopt(runtime, sock, reply, address, fd, created)
    except BaseException:
        if release is not None:
            release()
        raise
    if listener is None:
        if release is not None:
            release()
        return
    listener.release = release
    register(sock.fileno(), listener)
    HISTORY[:] = [old for old in HISTORY if old.fds or old.retired]
    HISTORY.append(listener)
    listener.token = runtime.servers.add(lambda: listener.closer())
    if int(reply.get("type", sock.type)) != socket.SOCK_STREAM:
        listener.listen()  # a datagram socket serves once bound


def _adopt(
    runtime: child.ChildRuntime,
    sock: socket.socket,
    reply: dict[str, Any],
    address: Any,
    fd: int | None,
    created: bool,
) -> Listener | None:
    if "errno" in reply:
        # The worker is being disconnected: the server is born closed (a socket of
        # ours) or retired (the program's), so serving ends as a disconnect ends it.
        if created:
            sock.close()
        else:
            _go_quiet(sock, _asked_name(int(sock.family), address))
        return None
    fds: list[int] = reply.get("_fds", [])
    mode = str(reply.get("mode"))
    family, type_ = int(sock.family), int(sock.type)
    real_family, real_type = int(reply.get("family", family)), int(reply.get("type", type_))
    rhost, rport = reply.get("host"), reply.get("port")
    sockname: Any = rhost if real_family == socket.AF_UNIX else (rhost, rport)
    if real_family == socket.AF_INET6 and isinstance(sockname, tuple):
        sockname = (rhost, rport, 0, 0)
    shown = address if real_family == socket.AF_UNIX and fd is None else rhost
    port = None if real_family == socket.AF_UNIX else rport
    report = (shown, port, address_type(real_family, real_type))
    own_fd = sock.fileno()
    shadow: socket.socket | None = None
    if mode == "reuseport":
        C.setsockopt(sock, socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        C.setsockopt(sock, socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        C.bind(sock, (address[0] or "", rport))
        mode = OWN
    elif mode in (RR, SHARED) and fds:
        # The program's own socket stays, unbound, to answer for its options (round
        # robin) and to be given back to a client that binds and then connects.
        shadow = socket.socket(family, type_, sock.proto, fileno=os.dup(own_fd))
        os.set_inheritable(shadow.fileno(), False)
        os.dup2(fds[0], own_fd, inheritable=os.get_inheritable(own_fd))
        os.close(fds.pop(0))
        if mode == SHARED and real_type == socket.SOCK_STREAM:
            # The descriptor's flags are every worker's: it stays non-blocking (a
            # blocking accept() waits in pycluster, see _blocking_accept), and the
            # program's blocking mode is recorded (see hooks._settimeout_hook).
            wanted = C.gettimeout(sock)
            C.settimeout(sock, 0.0 if wanted is None else wanted)
            if wanted is None:
                blocking[own_fd] = os.fstat(own_fd).st_ino
        else:
            C.settimeout(sock, sock.gettimeout())  # the program's mode, on the new descriptor
    else:
        raise OSError(errno.EPROTO, f"the primary answered with an unknown mode {mode!r}")
    turns: AcceptTurns | None = None
    if mode == SHARED and fds and int(reply.get("turn_slot", -1)) >= 0:
        turns = AcceptTurns.open_fd(fds[0], int(reply["turn_slot"]))  # mapped: fd may go
    for extra in fds:
        os.close(extra)
    fds.clear()
    kernel_name: Any = sockname
    if mode != RR:
        sockname = kernel_name = C.getsockname(sock)
    if real_family == socket.AF_UNIX:
        kernel_name = reply.get("bound", kernel_name)
        if fd is None and isinstance(address, (str, bytes, os.PathLike)):
            sockname = _given_unix_name(address)
    listener = Listener(
        mode, sock, sockname, shadow, runtime, int(reply["handle"]), report, created
    )
    listener.kernel_name = kernel_name
    listener.requested = address
    listener.turns = turns
    return listener


def _go_quiet(sock: socket.socket, name: Any) -> None:
    # A retired socket still answers getsockname() with the address it was given, as
    # one retired after it served does: a program reads it right after bind()
    # (http.server turns it into the server's name).
    quiet = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    C.bind(quiet, "")
    C.listen(quiet, 1)
    with registry_lock:
        os.dup2(quiet.fileno(), sock.fileno(), inheritable=False)
        retired_names[sock.fileno()] = (os.fstat(quiet.fileno()).st_ino, name)
    quiet.close()
    C.settimeout(sock, sock.gettimeout())


def _given_unix_name(address: str | bytes | os.PathLike[Any]) -> str | bytes:
    """What ``getsockname()`` says for a Unix address the program bound: the name as
    it gave it (an abstract one, starting with a NUL byte, as bytes)."""
    given = os.fsdecode(address)
    return given.encode() if given.startswith("\0") else given


def _asked_name(family: int, address: Any) -> Any:
    """``address`` as ``getsockname()`` gives it back (numeric host, IPv6 4-tuple).

    For a socket that never got the address it asked for (a bind during a disconnect).
    """
    if family == socket.AF_UNIX:
        return _given_unix_name(address)
    host, port = address[0] or None, int(address[1])
    try:
        found = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except (OSError, UnicodeError):
        found = []
    if found:
        return found[0][4]
    return (host or "", port) if family == socket.AF_INET else (host or "", port, 0, 0)
