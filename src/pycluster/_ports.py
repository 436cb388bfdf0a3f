"""The worker side of port sharing: the listening sockets a worker's program gets.

A program in a worker gets a **real** ``socket.socket``, the very object it created
(``pycluster run``, ``socketserver``) or a fresh one (``create_server``); pycluster
never swaps its class or sets attributes on it. What changes is the descriptor behind
it, swapped with ``dup2`` when the program binds:

* round-robin: this worker's end of its *hand-off socket* (a ``SOCK_SEQPACKET`` pair
  with the primary, which accepts and sends each connection's descriptor down it).
  It is readable exactly when a connection waits, so ``select``, ``selectors``,
  asyncio and tornado readers all work on it unchanged;
* shared: the primary's listening socket itself, which the worker accepts on.

A few methods of ``socket.socket`` are hooked in worker processes (never in the
primary, never outside a cluster) so that, for those descriptors, the program
observes what it would observe without pycluster: ``accept()`` takes the next
hand-off and returns a real connected socket with the peer's address, honouring the
object's own blocking mode and timeout; ``getsockname()`` is the shared address;
``getsockopt``/``setsockopt`` reach a socket of the program's own kind (its original
descriptor, kept with the options it set); ``listen()`` only records that the program
listens (the primary's socket already does, with the backlog it needs); ``dup()``
works; a shared descriptor stays non-blocking underneath (its flags are shared by
every worker) while a blocking ``accept()`` still blocks. Every hook costs one
dictionary look-up for other sockets.

When the worker disconnects, a program's listening socket is *retired*: a quiet
socket that never gets a connection takes its descriptor, so the program's accept
loop idles instead of failing, and the primary, seeing the hand-off socket close,
routes connections elsewhere. A socket pycluster created itself (``create_server``)
is closed instead, as Node closes a server.
"""

from __future__ import annotations

import _socket
import errno
import os
import select
import socket
import struct
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pycluster import _child as child
from pycluster._ipc.channel import ChannelClosedError
from pycluster._ipc.messages import Act

RR, SHARED, OWN = "rr", "shared", "own"
SCHED_NONE = 1
#: Seconds an ``accept()`` woken by a retirement waits for the quiet socket to arrive.
RETIRE_WAIT = 1.0
#: How often draining checks whether connections are still open.
DRAIN_POLL = 0.05

_RECV_FLAGS = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
_ANCILLARY = socket.CMSG_SPACE(4 * 4)
_ACK = b"A"
_C = _socket.socket
_c_accept: Callable[[socket.socket], tuple[int, Any]] = _C._accept  # type: ignore[attr-defined]
_STREAM_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)
_ZERO_PEER: dict[int, Any] = {
    socket.AF_INET: ("0.0.0.0", 0),
    socket.AF_INET6: ("::", 0, 0, 0),
    socket.AF_UNIX: "",
}


def address_type(family: int, type_: int) -> int | str:
    """Node's ``addressType`` for a socket family and type."""
    if family == socket.AF_UNIX:
        return -1
    if type_ == socket.SOCK_DGRAM:
        return "udp6" if family == socket.AF_INET6 else "udp4"
    return 6 if family == socket.AF_INET6 else 4


class Listener:
    """One server this worker listens with: what its descriptors are, and how it ends."""

    def __init__(
        self,
        mode: str,
        sock: socket.socket,
        sockname: Any,
        shadow: socket.socket | None,
        runtime: child.ChildRuntime,
        handle_id: int | None,
        report: tuple[Any, Any, int | str] | None,
        created: bool,
    ) -> None:
        self.mode = mode
        self.family = int(sock.family)
        self.type = int(sock.type)
        self.sockname = sockname
        #: Round robin: a socket of the program's own kind, holding its options.
        self.shadow = shadow
        self.runtime = runtime
        self.handle_id = handle_id
        #: What to tell the primary (``listening``) when the program starts listening.
        self.report = report
        #: ``create_server`` made the socket: a disconnect closes it (else retires it).
        self.created = created
        self.owner: weakref.ref[socket.socket] = weakref.ref(sock)
        self.ino = os.fstat(sock.fileno()).st_ino
        self.fds: set[int] = set()
        self.listening = False
        self.retired = False
        self.closing = False
        self.swapped = threading.Event()
        self._wake: tuple[int, int] | None = None
        self.token: int | None = None
        self.closer: Callable[[], None] = self.close_for_disconnect

    def __repr__(self) -> str:
        return f"<Listener {self.mode} {self.sockname!r} fds={sorted(self.fds)}>"

    # -- accept --------------------------------------------------------------------------
    def accept(self, sock: socket.socket) -> tuple[int, Any]:
        """``socket._accept()`` for a descriptor of this listener."""
        if not self.listening and self.type == socket.SOCK_STREAM:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        if self.mode == RR:
            return self._take(sock)
        if self.mode == SHARED and sock.gettimeout() is None:
            return self._blocking_accept(sock)
        fd, addr = _c_accept(sock)
        self._count()
        return fd, addr

    def _take(self, sock: socket.socket) -> tuple[int, Any]:
        while True:
            # The object's own recvmsg: its timeout and blocking mode apply as to accept().
            msg, ancillary, _flags, _addr = _C.recvmsg(sock, 1, _ANCILLARY, _RECV_FLAGS)
            fds = _fds_of(ancillary)
            if not msg and not fds:
                return self._ended(sock)
            for extra in fds[1:]:
                os.close(extra)
            if not fds:
                continue
            fd = fds[0]
            try:
                os.write(sock.fileno(), _ACK)
            except OSError:
                # Not acknowledged (a disconnect shut the hand-off, or the primary is
                # gone): the primary gives this connection to another worker.
                os.close(fd)
                continue
            self._count()
            return fd, _peer(fd, self.family)

    def _ended(self, sock: socket.socket) -> tuple[int, Any]:
        """The hand-off socket reached its end: retired, closed, or the primary stopped."""
        if self.retired:
            self.swapped.wait(RETIRE_WAIT)
            if sock.fileno() == -1 or _lookup(sock) is not None:
                raise OSError(errno.EBADF, os.strerror(errno.EBADF))
            return _c_accept(sock)  # the quiet socket: blocks, or EAGAIN
        if self.closing or sock.fileno() == -1:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        # The primary stopped serving this port: end the server the way a disconnect
        # would (its serving loop then stops), rather than spin on the closed socket.
        self._close_in_background()
        raise OSError(errno.ECONNABORTED, "the primary stopped handing over connections")

    def _blocking_accept(self, sock: socket.socket) -> tuple[int, Any]:
        # Every worker shares the descriptor's flags, so it stays non-blocking and a
        # blocking accept() waits here, where a retirement can wake it.
        while True:
            try:
                fd, addr = _c_accept(sock)
            except (BlockingIOError, InterruptedError):
                pass
            else:
                self._count()
                return fd, addr
            wake = self._wake_pipe()
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
            poller.register(wake[0], select.POLLIN)
            ready = [fd for fd, _ in poller.poll()]
            if wake[0] in ready or self.retired or self.closing:
                self.swapped.wait(RETIRE_WAIT)
                if sock.fileno() == -1 or _lookup(sock) is not None:
                    raise OSError(errno.EBADF, os.strerror(errno.EBADF))
                return _c_accept(sock)

    def _wake_pipe(self) -> tuple[int, int]:
        if self._wake is None:
            self._wake = os.pipe2(os.O_CLOEXEC)
        return self._wake

    def _count(self) -> None:
        status = self.runtime.status
        if status is not None:
            status.count_connection()

    # -- listening -------------------------------------------------------------------------
    def listen(self) -> None:
        """The program listens: the primary's socket already does; tell it we serve."""
        if self.listening:
            return
        self.listening = True
        if self.report is not None:
            address, port, kind = self.report
            try:
                self.runtime.send_internal(
                    Act.LISTENING, address=address, port=port, addressType=kind
                )
            except OSError:
                pass  # the channel is closing: the worker is going away

    def getsockopt(self, args: tuple[Any, ...]) -> Any:
        """An option of the program's socket (its own kind, its own options)."""
        level, name = args[0], args[1]
        if level == socket.SOL_SOCKET and name == socket.SO_ACCEPTCONN:
            value = int(self.listening)
            return value if len(args) == 2 else struct.pack("i", value)[: args[2]]
        assert self.shadow is not None
        return _C.getsockopt(self.shadow, *args)

    # -- ending -----------------------------------------------------------------------------
    def close_for_disconnect(self) -> None:
        """``worker.disconnect()``: stop taking connections, the way the program expects."""
        if not self.created:
            self.retire()
            return
        sock = self.owner()
        self.closing = True
        self._wake_blocked()
        if sock is not None:
            sock.close()
        else:
            self.finish()

    def _close_in_background(self) -> None:
        self.closing = True
        if self.token is not None:
            self.runtime.servers.close_one(self.token)

    def _wake_blocked(self) -> None:
        """Wake threads blocked in ``accept()`` on this listener."""
        if self.mode in (RR, OWN) and self.fds:
            _on_fd(next(iter(self.fds)), lambda s: s.shutdown(socket.SHUT_RDWR))
        elif self._wake is not None:
            os.write(self._wake[1], b"x")

    def retire(self) -> None:
        """Give the program's descriptors a quiet socket that never gets a connection."""
        if self.retired:
            return
        self.retired = True
        self._wake_blocked()
        quiet = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        _C.bind(quiet, "")  # an unnamed abstract address: nobody can connect to it
        _C.listen(quiet, 1)
        owner = self.owner()
        blocking = owner is None or owner.gettimeout() is None
        quiet.setblocking(blocking)
        for fd in list(self.fds):
            os.dup2(quiet.fileno(), fd, inheritable=False)
            _forget(fd)
        quiet.close()
        self.finish()
        self.swapped.set()

    def finish(self) -> None:
        """No descriptor of this listener is left: release what it held."""
        for fd in list(self.fds):
            _forget(fd)
        if self.token is not None:
            self.runtime.servers.discard(self.token)
            self.token = None
            if self.handle_id is not None:
                try:
                    self.runtime.send_internal(Act.CLOSE, handle=self.handle_id)
                except OSError:
                    pass
        if self.shadow is not None:
            self.shadow.close()
            self.shadow = None
        if self._wake is not None:
            for fd in self._wake:
                os.close(fd)
            self._wake = None
        self.swapped.set()

    # -- draining ------------------------------------------------------------------------------
    def open_connections(self) -> int:
        """Connections of this process on this listener's address that are still open."""
        return connections_on(self.family, self.sockname)

    def wait_drained(self, timeout: float | None = None) -> bool:
        """Wait until no connection on this listener's address is open."""
        return wait_drained([self], timeout)


# -- the registry of listening descriptors -----------------------------------------------------
_by_fd: dict[int, Listener] = {}
_by_ino: dict[int, Listener] = {}
_registry_lock = threading.Lock()


def _register(fd: int, listener: Listener) -> None:
    with _registry_lock:
        listener.fds.add(fd)
        _by_fd[fd] = listener
        _by_ino[listener.ino] = listener


def _forget(fd: int) -> Listener | None:
    with _registry_lock:
        listener = _by_fd.pop(fd, None)
        if listener is not None:
            listener.fds.discard(fd)
            if not listener.fds and _by_ino.get(listener.ino) is listener:
                del _by_ino[listener.ino]
        return listener


def _lookup(sock: socket.socket) -> Listener | None:
    """The listener behind ``sock``'s descriptor, if it is one (checked, not assumed)."""
    fd = _C.fileno(sock)
    listener = _by_fd.get(fd)
    if listener is None:
        return None
    try:
        same = os.fstat(fd).st_ino == listener.ino
    except OSError:
        same = False
    if not same:  # the descriptor was closed behind Python's back and reused
        _forget(fd)
        return None
    return listener


def _discover(sock: socket.socket) -> Listener | None:
    """A copy of a listener's descriptor made outside Python's socket object (fromfd)."""
    if not _by_ino:
        return None
    fd = _C.fileno(sock)
    try:
        listener = _by_ino.get(os.fstat(fd).st_ino)
    except OSError:
        return None
    if listener is not None:
        _register(fd, listener)
    return listener


def listener_of(sock: Any) -> Listener | None:
    """The cluster listener behind ``sock``, if any (for pycluster's integrations)."""
    if not isinstance(sock, socket.socket) or sock.fileno() == -1:
        return None
    return _lookup(sock) or _discover(sock)


def wake_waiters(sock: Any) -> None:
    """Wake whatever waits to accept on ``sock`` (before closing it from another thread).

    A poll on a descriptor does not end when another thread closes it; shutting a
    hand-off socket down does (a shared socket is everyone's, so only its own blocking
    ``accept()`` is woken).
    """
    listener = listener_of(sock)
    if listener is not None:
        listener.closing = True
        listener._wake_blocked()


def is_round_robin(sock: Any) -> bool:
    """Whether ``sock`` takes connections handed over by the primary."""
    listener = listener_of(sock)
    return listener is not None and listener.mode == RR


def _on_fd(fd: int, action: Callable[[socket.socket], object]) -> None:
    """Run ``action`` on a throw-away socket object for ``fd`` (the descriptor stays)."""
    temp = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, 0, fileno=fd)
    try:
        action(temp)
    except OSError:
        pass
    finally:
        temp.detach()


def _fds_of(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds.extend(int.from_bytes(data[i : i + 4], "little") for i in range(0, usable, 4))
    return fds


def _peer(fd: int, family: int) -> Any:
    temp = _C(family, socket.SOCK_STREAM, 0, fd)
    try:
        return temp.getpeername()
    except OSError:
        return _ZERO_PEER.get(family)  # the client is already gone: as accept() would say
    finally:
        temp.detach()


# -- the hooks on socket.socket ---------------------------------------------------------------
_py_dup = socket.socket.dup
_py_real_close = socket.socket._real_close  # type: ignore[attr-defined]
#: Set by ``pycluster run``: whether to share a socket the program binds, and how.
BindFilter = Callable[[socket.socket, Any], "dict[str, Any] | None"]
bind_filter: BindFilter | None = None
_marked: dict[int, dict[str, Any]] = {}
_installed = False
#: Every listener this worker has had, for draining at disconnect.
_history: list[Listener] = []
_local = threading.local()


@contextmanager
def _binding_privately() -> Iterator[None]:
    """pycluster binds a socket of its own here (exclusive, SO_REUSEPORT): not shared."""
    _local.private = True
    try:
        yield
    finally:
        _local.private = False


def history() -> list[Listener]:
    """Every listener this worker has had (closed and retired ones included)."""
    return list(_history)


def _accept_hook(self: socket.socket) -> tuple[int, Any]:
    listener = _lookup(self) if _by_fd else None
    if listener is None:
        try:
            return _c_accept(self)
        except OSError as exc:
            if exc.errno != errno.EINVAL or (listener := _discover(self)) is None:
                raise
    return listener.accept(self)


def _getsockname_hook(self: socket.socket) -> Any:
    listener = _lookup(self) if _by_fd else None
    if listener is not None and listener.mode == RR:
        return listener.sockname
    name = _C.getsockname(self)
    if name == "" and _by_ino and (listener := _discover(self)) is not None:
        return listener.sockname if listener.mode == RR else _C.getsockname(self)
    return name


def _getpeername_hook(self: socket.socket) -> Any:
    if _by_fd and (listener := _lookup(self)) is not None and listener.mode == RR:
        raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN))
    return _C.getpeername(self)


def _getsockopt_hook(self: socket.socket, *args: Any) -> Any:
    if _by_fd and (listener := _lookup(self)) is not None and listener.mode == RR:
        return listener.getsockopt(args)
    return _C.getsockopt(self, *args)


def _setsockopt_hook(self: socket.socket, *args: Any) -> None:
    if _by_fd and (listener := _lookup(self)) is not None and listener.mode == RR:
        assert listener.shadow is not None
        _C.setsockopt(listener.shadow, *args)
        return
    _C.setsockopt(self, *args)


def _listen_hook(self: socket.socket, *backlog: int) -> None:
    listener = _lookup(self) if _by_fd else None
    if listener is None or listener.mode == OWN:
        _C.listen(self, *backlog)
    if listener is not None:
        listener.listen()  # shared: the primary listens, with the backlog it needs


def _keep_shared_nonblocking(sock: socket.socket) -> None:
    listener = _lookup(sock)
    if listener is not None and listener.mode == SHARED and listener.type == socket.SOCK_STREAM:
        os.set_blocking(_C.fileno(sock), False)


def _setblocking_hook(self: socket.socket, flag: bool) -> None:
    _C.setblocking(self, flag)
    if flag and _by_fd:
        _keep_shared_nonblocking(self)


def _settimeout_hook(self: socket.socket, value: float | None) -> None:
    _C.settimeout(self, value)
    if value is None and _by_fd:
        _keep_shared_nonblocking(self)


def _dup_hook(self: socket.socket) -> socket.socket:
    copy = _py_dup(self)
    if _by_fd and (listener := _lookup(self)) is not None:
        _register(copy.fileno(), listener)
        _keep_shared_nonblocking(copy)  # dup() set the copy's timeout, which may clear it
    return copy


def _real_close_hook(self: socket.socket, _ss: Any = _C) -> None:
    if _by_fd:
        fd = _C.fileno(self)
        listener = _by_fd.get(fd)
        if listener is not None:
            _forget(fd)
            _py_real_close(self, _ss)
            if not listener.fds:
                listener.finish()
            return
    _py_real_close(self, _ss)


def _bind_hook(self: socket.socket, address: Any, /) -> None:
    fd = _C.fileno(self)
    if _by_fd and _lookup(self) is not None:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))  # bound already
    options = _marked.pop(fd, None)
    if bind_filter is not None and not getattr(_local, "private", False):
        extra = bind_filter(self, address)  # pycluster run: every stream socket is shared
        if extra is not None:
            options = {**(options or {}), **extra}
    if options is None:
        _C.bind(self, address)
        return
    share(self, options.pop("address", address), **options)


def _connect_hook(self: socket.socket, address: Any, /) -> None:
    if _by_fd:
        _unshare_client(self)
    _C.connect(self, address)


def _connect_ex_hook(self: socket.socket, address: Any, /) -> int:
    if _by_fd:
        _unshare_client(self)
    return int(_C.connect_ex(self, address))


def _unshare_client(sock: socket.socket) -> None:
    """A shared socket that connects was a client choosing its source address after all."""
    listener = _lookup(sock)
    if listener is None or listener.listening or listener.shadow is None:
        return
    fd = _C.fileno(sock)
    os.dup2(listener.shadow.fileno(), fd, inheritable=False)
    _forget(fd)
    address = listener.sockname
    listener.finish()
    _C.settimeout(sock, sock.gettimeout())
    _C.bind(sock, address)


def install() -> None:
    """Hook ``socket.socket`` in this worker process (once)."""
    global _installed
    if _installed:
        return
    _installed = True
    cls: Any = socket.socket
    cls._accept = _accept_hook
    cls.getsockname = _getsockname_hook
    cls.getpeername = _getpeername_hook
    cls.getsockopt = _getsockopt_hook
    cls.setsockopt = _setsockopt_hook
    cls.listen = _listen_hook
    cls.setblocking = _setblocking_hook
    cls.settimeout = _settimeout_hook
    cls.dup = _dup_hook
    cls._real_close = _real_close_hook
    cls.bind = _bind_hook
    cls.connect = _connect_hook
    cls.connect_ex = _connect_ex_hook


@contextmanager
def sharing(sock: socket.socket, **options: Any) -> Iterator[None]:
    """The next ``bind()`` of ``sock`` (inside the block) shares the address instead."""
    install()
    fd = sock.fileno()
    _marked[fd] = options
    try:
        yield
    finally:
        _marked.pop(fd, None)


# -- asking the primary -----------------------------------------------------------------------
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
        _C.bind(sock, address)
        return
    dualstack = False
    if sock.family == socket.AF_INET6:
        dualstack = not _C.getsockopt(sock, socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
    reply = _query(
        runtime, int(sock.family), int(sock.type), address, backlog, fd, policy, dualstack
    )
    _adopt(runtime, sock, reply, address, fd, created)


def _query(
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
    install()
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
        )
    except ChannelClosedError:
        if not runtime.worker.exited_after_disconnect:
            raise
        reply = {"errno": errno.ECONNABORTED}
    if "errno" in reply:
        for extra in reply.get("_fds", []):
            os.close(extra)
        err = int(reply["errno"])
        if err != errno.ECONNABORTED or not runtime.worker.exited_after_disconnect:
            where = f"fd={fd}" if fd is not None else address
            raise OSError(err, str(reply.get("error") or os.strerror(err)), where)
    return reply


def _adopt(
    runtime: child.ChildRuntime,
    sock: socket.socket,
    reply: dict[str, Any],
    address: Any,
    fd: int | None,
    created: bool,
) -> None:
    """Put the descriptor the primary answered with behind ``sock``, and register it."""
    if "errno" in reply:
        # The worker is being disconnected: the server is born closed (a socket of
        # ours) or retired (the program's), so serving ends as a disconnect ends it.
        if created:
            sock.close()
        else:
            _go_quiet(sock)
        return
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
        _C.setsockopt(sock, socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _C.setsockopt(sock, socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        _C.bind(sock, (address[0] or "", rport))
        mode = OWN
    elif mode in (RR, SHARED) and fds:
        if mode == RR:
            # The program's own socket stays, unbound, to answer for its options.
            shadow = socket.socket(family, type_, sock.proto, fileno=os.dup(own_fd))
            os.set_inheritable(shadow.fileno(), False)
        os.dup2(fds[0], own_fd, inheritable=os.get_inheritable(own_fd))
        os.close(fds.pop(0))
        if mode == SHARED and real_type == socket.SOCK_STREAM:
            os.set_blocking(own_fd, False)  # flags shared by every worker: see _blocking_accept
        else:
            _C.settimeout(sock, sock.gettimeout())  # the program's mode, on the new descriptor
    else:
        raise OSError(errno.EPROTO, f"the primary answered with an unknown mode {mode!r}")
    for extra in fds:
        os.close(extra)
    fds.clear()
    if mode != RR:
        sockname = _C.getsockname(sock)
    listener = Listener(
        mode, sock, sockname, shadow, runtime, int(reply["handle"]), report, created
    )
    _register(own_fd, listener)
    _history[:] = [old for old in _history if old.fds or old.retired]
    _history.append(listener)
    listener.token = runtime.servers.add(lambda: listener.closer())
    if real_type != socket.SOCK_STREAM:
        listener.listen()  # a datagram socket serves once bound


def _go_quiet(sock: socket.socket) -> None:
    quiet = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    _C.bind(quiet, "")
    _C.listen(quiet, 1)
    os.dup2(quiet.fileno(), sock.fileno(), inheritable=False)
    quiet.close()
    _C.settimeout(sock, sock.gettimeout())


def replace_closer(listener: Listener | None, closer: Callable[[], None]) -> bool:
    """An integration (asyncio, socketserver) takes over ending a listener at disconnect.

    ``False`` if a disconnect already ended it: the integration must not serve.
    """
    if listener is None or listener.token is None or listener.retired or listener.closing:
        return False
    listener.closer = closer
    return True


# -- draining --------------------------------------------------------------------------------------
def _socket_inodes() -> set[str]:
    inodes: set[str] = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    return inodes


def connections_on(family: int, sockname: Any) -> int:
    """Open connections of this process whose local address is ``sockname``.

    Read from the kernel's tables, so it sees every connection however the program
    handles it (a C accept loop, a WebSocket upgrade, a protocol with ``__slots__``).
    """
    ours = _socket_inodes()
    if not ours:
        return 0
    count = 0
    if family == socket.AF_UNIX:
        try:
            with open("/proc/net/unix") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            return 0
        for line in lines:
            fields = line.split(None, 7)
            # Flags 00010000 is __SO_ACCEPTCONN: a listening socket, not a connection.
            if (
                len(fields) == 8
                and fields[6] in ours
                and fields[7] == sockname
                and not int(fields[3], 16) & 0x10000
            ):
                count += 1
        return count
    port = f":{int(sockname[1]):04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # State 0A is LISTEN; 07 (CLOSE) is a socket no longer connected.
            if (
                len(fields) > 9
                and fields[9] in ours
                and fields[1].endswith(port)
                and fields[3] not in ("0A", "07")
            ):
                count += 1
    return count


def wait_drained(listeners: list[Listener], timeout: float | None = None) -> bool:
    """Wait until none of ``listeners`` has an open connection; ``False`` on time-out."""
    wait = threading.Event()
    remaining = timeout
    while any(listener.open_connections() for listener in listeners):
        if remaining is not None:
            if remaining <= 0:
                return False
            remaining -= DRAIN_POLL
        wait.wait(DRAIN_POLL)
    return True


# -- create_server ------------------------------------------------------------------------------------
def _normalize(
    address: Any, family: int | None, type_: int | None
) -> tuple[int, int, Any, int | None]:
    if type_ is None:
        type_ = socket.SOCK_STREAM
    if family is None:
        if isinstance(address, (str, bytes, os.PathLike)):
            family = socket.AF_UNIX
        elif isinstance(address, tuple) and address and ":" in str(address[0] or ""):
            family = socket.AF_INET6
        else:
            family = socket.AF_INET
    if family == socket.AF_UNIX:
        path = os.fsdecode(address) if isinstance(address, (bytes, os.PathLike)) else address
        return family, type_, path, None
    if address is None:
        address = ("", 0)
    if not isinstance(address, tuple) or len(address) < 2:
        raise TypeError(f"address must be a (host, port) tuple, not {address!r}")
    host, port = address[0], address[1]
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in 0..65535, not {port!r}")
    return family, type_, host or "", port


def _standalone(
    address: Any,
    family: int,
    type_: int,
    backlog: int | None,
    reuse_port: bool,
    dualstack_ipv6: bool,
    fd: int | None,
) -> socket.socket:
    if fd is not None:
        sock = socket.socket(fileno=fd)
        if sock.type == socket.SOCK_STREAM:
            sock.listen(*(() if backlog is None else (backlog,)))
        return sock
    if family != socket.AF_UNIX and type_ == socket.SOCK_STREAM:
        return socket.create_server(
            address,
            family=family,
            backlog=backlog,
            reuse_port=reuse_port,
            dualstack_ipv6=dualstack_ipv6,
        )
    sock = socket.socket(family, type_)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and dualstack_ipv6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        if type_ == socket.SOCK_STREAM:
            sock.listen(*(() if backlog is None else (backlog,)))
    except OSError:
        sock.close()
        raise
    return sock


def _fresh_socket(family: int, type_: int, dualstack_ipv6: bool) -> socket.socket:
    """A socket set up as ``socket.create_server`` sets it up, before binding."""
    sock = socket.socket(family, type_)
    try:
        if family != socket.AF_UNIX and type_ == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dualstack_ipv6 else 1)
    except OSError:
        sock.close()
        raise
    return sock


def _own_listener(sock: socket.socket, runtime: child.ChildRuntime) -> socket.socket:
    """A socket this worker bound by itself: not shared, but a disconnect still closes it."""

    def close() -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept()
        except OSError:
            pass
        sock.close()

    runtime.servers.add(close)
    return sock


def create_server(
    address: Any,
    *,
    family: int | None = None,
    type: int | None = None,
    backlog: int | None = None,
    reuse_port: bool = False,
    dualstack_ipv6: bool = False,
    exclusive: bool = False,
    fd: int | None = None,
    policy: int | None = None,
) -> socket.socket:
    """A listening (or, for UDP, bound) socket shared with the other workers.

    A real ``socket.socket`` (see the module docstring). Errors of the primary's
    ``bind`` (``EADDRINUSE``, ``EACCES``) are raised here as ``OSError``. ``policy``
    asks for a scheduling policy for this server alone (a server whose accept loop
    runs in C cannot take round-robin hand-offs).
    """
    family, type_, addr, port = _normalize(address, family, type)
    runtime = child.runtime()
    host_addr: Any = addr if family == socket.AF_UNIX else (addr, port)
    if runtime is None or exclusive:
        with _binding_privately():
            own = _standalone(host_addr, family, type_, backlog, reuse_port, dualstack_ipv6, fd)
        return own if runtime is None else _own_listener(own, runtime)
    reply = _query(runtime, family, type_, host_addr, backlog, fd, policy, dualstack_ipv6)
    # For fd=N, the primary says what the descriptor is: the socket is made of that kind.
    family = int(reply.get("family", family))
    type_ = int(reply.get("type", type_))
    sock = _fresh_socket(family, type_, dualstack_ipv6)
    try:
        _adopt(runtime, sock, reply, host_addr, fd, created=True)
        if type_ == socket.SOCK_STREAM and sock.fileno() != -1:
            sock.listen(*(() if backlog is None else (backlog,)))
    except BaseException:
        for extra in reply.get("_fds", []):
            try:
                os.close(extra)
            except OSError:
                pass
        sock.close()
        raise
    return sock
