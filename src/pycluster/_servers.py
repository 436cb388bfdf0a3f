"""The primary's listening sockets, shared with workers by round-robin or as-is.

A worker's ``create_server`` asks the primary (``queryServer``) for a listener at
an address. The primary binds it once per key ``(address, port, family, type, fd, index)``
(``index``: the k-th port-0 server of a worker, as Node's, so that one worker's two
port-0 servers get two ports while the k-th of every worker share one) and answers
with a descriptor:

* round-robin: one end of a ``SOCK_SEQPACKET`` pair dedicated to that worker and
  server (the *hand-off socket*). The primary accepts connections in batches and
  sends each one's descriptor down the next free worker's hand-off socket; the
  worker writes back one byte when it has taken it. Connections never queue behind
  user messages on the main channel, and a worker's listener is simply that socket.
* shared: the listening socket itself; each worker accepts on it.
* reuse-port: nothing is shared; the worker binds its own ``SO_REUSEPORT`` socket
  on the port the primary reserved (so port 0 still means one port for all).

The primary keeps its own copy of a handed-off connection until the worker says it
took it. If the worker's hand-off socket closes first (its server closed, it died),
the connection goes to another worker instead of being lost.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Callable
from typing import Any

from pycluster import _batchsched
from pycluster._ipc.framing import Codec, Kind, close_fds
from pycluster._ipc.messages import Act, Message, encode_internal
from pycluster._reactor import Reactor, Timer
from pycluster._scheduling.round_robin import DEFAULT_WINDOW, RoundRobinHandle
from pycluster._scheduling.shared import SharedHandle
from pycluster._turns import AcceptTurns
from pycluster._worker import Worker

log = logging.getLogger("pycluster")

SCHED_NONE, SCHED_RR, SCHED_REUSEPORT = 1, 2, 3
ACCEPT_BATCH = 128
#: Acknowledgements read from one worker per wake-up of the primary's loop.
ACK_BATCH = 64
#: The longest answer a worker writes: one byte per hand-off it may hold, and one more.
ANSWER_SIZE = 256
#: How long a port with no live worker keeps connections waiting for a replacement.
ORPHAN_GRACE = 1.0
_LINGER_RESET = struct.pack("ii", 1, 0)
#: The first byte of a hand-off: another one follows for the same worker, or not.
_MORE, _LAST = [b"M"], [b"C"]
_TOOK, _DECLINED = ord("A"), ord("D")
_fd_bytes = struct.Struct("i").pack
Key = tuple[Any, Any, int, int, Any, Any]


def _closed(sock: socket.socket) -> bool:
    """Whether the other end of a hand-off socket is gone (its end read, not yet seen)."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


#: Node's listen backlog, whatever the program asks for.
MIN_BACKLOG = 511


def somaxconn() -> int:
    """The kernel's cap on a listen backlog (``net.core.somaxconn``)."""
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return int(f.read())
    except (OSError, ValueError):
        return socket.SOMAXCONN


def effective_backlog(requested: int | None) -> int:
    """The backlog the primary listens with: at least Node's 511, at most ``somaxconn``.

    The primary accepts for every worker, so a program's own small backlog (the
    stdlib's ``request_queue_size`` is 5) would drop a burst of connections that
    its workers could serve.
    """
    return min(max(requested or 0, MIN_BACKLOG), somaxconn())


Identity = tuple[int, int]  # (st_dev, st_ino) of a socket: the same for every dup of it


def identity(fd: int) -> Identity:
    """What tells one open socket from another, whatever descriptor refers to it."""
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)


def _bound(name: Any) -> bool:
    if isinstance(name, tuple):
        return len(name) >= 2 and bool(name[1])
    return bool(name)


def given_socket(fd: int, internal: Callable[[Identity], bool]) -> socket.socket:
    """A copy of the primary's descriptor ``fd`` for ``fd=N``, if it may be served.

    Only a socket the primary was given to serve qualifies: inherited at start
    (systemd's ``LISTEN_FDS``) or made by the program, an inet or Unix socket that
    is listening (stream) or bound (datagram). Every other descriptor, and every
    socket pycluster opened itself (channels, hand-off sockets, the ports it serves,
    the control socket), is refused with ``EBADF``: a worker must never obtain the
    primary's own plumbing, nor another program's connection.
    """

    def refuse(why: str) -> OSError:
        return OSError(errno.EBADF, f"descriptor {fd} is not a socket the primary serves: {why}")

    try:
        st = os.fstat(fd)
    except OSError:
        raise refuse("not open in the primary") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise refuse("not a socket")
    if internal((st.st_dev, st.st_ino)):
        raise refuse("pycluster's own")
    dup = os.dup(fd)
    try:
        sock = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        raise refuse("not a usable socket") from None
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
            raise refuse("not an inet or Unix socket")
        if sock.type == socket.SOCK_STREAM:
            if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                raise refuse("a stream socket that is not listening")
            # Its backlog is its giver's (systemd's Backlog=): a worker's small
            # request_queue_size must not shrink it, so it is left alone.
        elif sock.type == socket.SOCK_DGRAM:
            if not _bound(sock.getsockname()):
                raise refuse("a datagram socket that is not bound")
        else:
            raise refuse("neither a stream nor a datagram socket")
    except BaseException:
        sock.close()
        raise
    return sock


def shortest_path(path: Any) -> Any:
    """The shorter of an absolute Unix socket path and the same path from our directory.

    A worker resolves a relative name against its own directory; that absolute
    path may not fit ``sun_path`` (108 bytes) while the path relative to the
    primary's directory does. Node's primary binds the shorter one too.
    """
    if not isinstance(path, str) or not path.startswith("/"):
        return path  # abstract names and anything unusual are bound as given
    try:
        relative = os.path.relpath(path)
    except (OSError, ValueError):
        return path
    return relative if len(os.fsencode(relative)) < len(os.fsencode(path)) else path


def bind_socket(msg: Message, *, reuse_port: bool = False) -> socket.socket:
    """Create and bind (and for streams, listen on) the socket a query describes."""
    family, type_ = int(msg["family"]), int(msg["type"])
    requested = msg.get("backlog")
    backlog = effective_backlog(None if requested is None else int(requested))
    if family == socket.AF_UNIX:
        sock = socket.socket(socket.AF_UNIX, type_)
        try:
            sock.bind(shortest_path(msg["address"]))
            if type_ == socket.SOCK_STREAM:
                sock.listen(*(() if backlog is None else (backlog,)))
        except OSError:
            sock.close()
            raise
        return sock
    address = (msg.get("address") or "", int(msg.get("port") or 0))
    if type_ == socket.SOCK_STREAM and not reuse_port:
        return socket.create_server(
            address,
            family=family,
            backlog=backlog,
            dualstack_ipv6=bool(msg.get("dualstack")),
        )
    sock = socket.socket(family, type_)
    try:
        if family == socket.AF_INET6:
            # As socket.create_server does for TCP, and for UDP too: an IPv6 socket
            # leaves IPv4 to another socket on the same port unless asked for both.
            dual = bool(msg.get("dualstack"))
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual else 1)
        if reuse_port and address[1]:
            # SO_REUSEPORT would silently share the port with any other program of
            # this user (another cluster): a plain bind must succeed first.
            with socket.socket(family, type_) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    dual = bool(msg.get("dualstack"))
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual else 1)
                probe.bind(address)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def reset_close(fd: int) -> None:
    """Close an accepted connection at once; a TCP client sees a reset, not a wait."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.close(fd)
        return
    with contextlib.suppress(OSError):
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


class _Served:
    """What every kind of handle shares: identity, key, address, members.

    *Refusing*: while no live worker serves the port for longer than
    ``ORPHAN_GRACE`` (every worker died, replacements pending), the primary keeps
    the listening socket, so the port number stays the same for the replacement
    (port 0 included), but accepts and closes every connection at once instead of
    letting clients wait for a restart that may be many seconds away. Closing or
    shutting down the listener instead would give an auto-assigned port back to the
    kernel.
    """

    mode = ""
    refusing = False

    def __init__(self, table: ServerTable, handle_id: int, key: Key, sock: socket.socket) -> None:
        self.table = table
        self.id = handle_id
        self.key = key
        self.sock = sock
        self.sockname: Any = sock.getsockname()
        #: A Unix socket file this primary created, removed on close as Node does.
        self.owned_path: tuple[str, int] | None = None
        #: Runs out ORPHAN_GRACE after the last worker left, if none came back.
        self.grace: Timer | None = None

    #: Whether any worker ever listened here (a port only bound is not kept waiting).
    served = False

    def serving(self) -> bool:
        """Whether a worker serves the port (or has bound it and is about to listen)."""
        return bool(self.handle.members)  # type: ignore[attr-defined]

    def start_refusing(self) -> None:
        """No worker came back in time: close what waits and whatever comes next."""
        self.refusing = True

    def stop_refusing(self) -> None:
        """A worker serves the port again."""
        self.refusing = False

    def _refuse_backlog(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                fd, _addr = self.sock._accept()  # type: ignore[attr-defined]
            except OSError:
                return
            reset_close(fd)

    def reply_fields(self) -> dict[str, Any]:
        sockname = self.sockname
        if isinstance(sockname, tuple):
            host, port = sockname[0], sockname[1]
        else:
            host, port = (os.fsdecode(sockname) if sockname else None), None
        # The real kind of socket: for fd=N the worker could only guess it.
        fields = {
            "handle": self.id,
            "mode": self.mode,
            "host": host,
            "port": port,
            "family": int(self.sock.family),
            "type": int(self.sock.type),
        }
        if self.sock.family == socket.AF_UNIX:
            # The name the kernel shows for the socket and its connections (perhaps a
            # path relative to the primary's directory): what draining looks for.
            bound = self.sock.getsockname()
            fields["bound"] = os.fsdecode(bound) if isinstance(bound, (str, bytes)) else None
        return fields

    def close(self) -> None:
        if self.grace is not None:
            self.grace.cancel()
            self.grace = None
        if self.refusing:
            self.stop_refusing()
        self.sock.close()
        if self.owned_path is not None:
            path, inode = self.owned_path
            self.owned_path = None
            try:
                # Only our own file: another server may have taken the path since.
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
            except OSError:
                pass


class SharedServer(_Served):
    """A listening socket every worker accepts on (SCHED_NONE, and UDP always)."""

    mode = "shared"

    def __init__(self, table: ServerTable, handle_id: int, key: Key, sock: socket.socket) -> None:
        super().__init__(table, handle_id, key, sock)
        self.handle: SharedHandle[Worker] = SharedHandle()
        #: The page the workers share bursts of connections with (stream sockets).
        self.turns: AcceptTurns | None = None
        self._turns_fd = -1
        self._slots: dict[Worker, int] = {}
        if self.mode == "shared" and sock.type == socket.SOCK_STREAM:
            self.turns, self._turns_fd = AcceptTurns.create()

    def add(self, worker: Worker, seq: int) -> None:
        if not self.handle.add(worker):
            self.table.reply_error(
                worker, seq, errno.EADDRINUSE, "this worker already listens here"
            )
            return
        fields, fds = self.reply_fields(), [self.sock.fileno()]
        if self.turns is not None:
            slot = self._slots[worker] = self.turns.join()
            fields["turn_slot"] = slot
            fds.append(self._turns_fd)
        self.table.reply(worker, seq, fields, fds)

    def remove(self, worker: Worker) -> None:
        slot = self._slots.pop(worker, None)
        if slot is not None and self.turns is not None:
            self.turns.leave(slot)
        if worker in self.handle.members and self.handle.remove(worker):
            self.table.unused(self)

    def close(self) -> None:
        super().close()
        if self.turns is not None:
            self.turns.close()
            self.turns = None
            os.close(self._turns_fd)

    def start_refusing(self) -> None:
        if self.sock.type != socket.SOCK_STREAM or self.mode != "shared" or self.refusing:
            return  # datagrams are not held; a reserved port has no listener
        super().start_refusing()
        self.sock.setblocking(False)  # shared flag, but no worker holds it now
        self.table.reactor.add_reader(self.sock.fileno(), self._refuse_backlog)

    def stop_refusing(self) -> None:
        if self.refusing:
            self.table.reactor.remove_reader(self.sock.fileno())
        super().stop_refusing()


class ReusePortServer(SharedServer):
    """A reserved port: workers bind their own SO_REUSEPORT sockets on it."""

    mode = "reuseport"

    def add(self, worker: Worker, seq: int) -> None:
        if not self.handle.add(worker):
            self.table.reply_error(
                worker, seq, errno.EADDRINUSE, "this worker already listens here"
            )
            return
        self.table.reply(worker, seq, self.reply_fields(), [])


class RoundRobinServer(_Served):
    """The primary accepts; connections go to workers over their hand-off sockets."""

    mode = "rr"

    def __init__(self, table: ServerTable, handle_id: int, key: Key, sock: socket.socket) -> None:
        super().__init__(table, handle_id, key, sock)
        sock.setblocking(False)
        self.handle: RoundRobinHandle[Worker, int] = RoundRobinHandle(
            self._busy, window=table.window()
        )
        self.handoffs: dict[Worker, socket.socket] = {}
        #: Workers that bound the port and have not listened yet (no hand-offs so far).
        self.pending: set[Worker] = set()
        self.reactor = table.reactor
        self._timer: Timer | None = None
        self.reactor.add_reader(sock.fileno(), self._accept)
        table.handing_off()

    @staticmethod
    def _busy(worker: Worker) -> bool:
        status = worker._backend.status  # type: ignore[attr-defined]
        return status is not None and bool(status.busy)

    def add(self, worker: Worker, seq: int) -> None:
        """A worker binds: its hand-off socket now; connections once it listens."""
        if worker in self.handoffs:
            if worker in self.handle.members or not _closed(self.handoffs[worker]):
                self.table.reply_error(
                    worker, seq, errno.EADDRINUSE, "this worker already listens here"
                )
                return
            # The worker closed its server and listens again before the loop read the
            # end of its old hand-off socket (it closed that socket before asking).
            self._retire_handoff(worker)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            ours.setblocking(False)
            self.handoffs[worker] = ours
            self.pending.add(worker)
            self.reactor.add_reader(ours.fileno(), lambda: self._answer(worker))
            self.table.reply(worker, seq, self.reply_fields(), [theirs.fileno()])
        finally:
            theirs.close()

    def serving(self) -> bool:
        return bool(self.handle.members or self.pending)

    def listening(self, worker: Worker) -> None:
        """The worker's program listens: connections go to it from now on."""
        if worker in self.pending:
            self.pending.discard(worker)
            self.served = True
            self._send(self.handle.add(worker))

    def _accept(self) -> None:
        if self.refusing:
            self._refuse_backlog()
            return
        # Drain the backlog in one wake-up: far fewer loop iterations under load.
        fds = []
        accept = self.sock._accept  # type: ignore[attr-defined]
        for _ in range(ACCEPT_BATCH):
            try:
                fd, _addr = accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("accept failed on %s: %s", self.sockname, exc)
                break
            fds.append(fd)
        self._send(self.handle.push_all(fds))

    def _send(self, handoffs: list[tuple[Worker, int]]) -> None:
        # A hand-off followed by another to the same worker says so: a worker's event
        # loop then acknowledges both at once (one wake-up of this loop, not two).
        left: dict[Worker, int] = {}
        for worker, _ in handoffs:
            left[worker] = left.get(worker, 0) + 1
        i = 0
        while i < len(handoffs):
            worker, fd = handoffs[i]
            i += 1
            left[worker] -= 1
            sock = self.handoffs.get(worker)
            try:
                if sock is None:
                    raise ConnectionResetError
                sock.sendmsg(
                    _MORE if left[worker] else _LAST,
                    [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _fd_bytes(fd))],
                )
            except OSError:
                again = self._worker_gone(worker)
                for other, _ in again:
                    left[other] = left.get(other, 0) + 1
                handoffs.extend(again)
        deadline = self.handle.deadline
        if deadline is not None and (self._timer is None or self._timer.deadline > deadline):
            # The queue holds for a worker whose turn it is: look again when the hold
            # ends, unless an answer from it comes first.
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.reactor.call_later(
                max(0.0, deadline - time.monotonic()), self._hold_ended
            )

    def _hold_ended(self) -> None:
        self._timer = None
        self._send(self.handle.redistribute())

    def _answer(self, worker: Worker) -> None:
        sock = self.handoffs.get(worker)
        if sock is None:
            return
        # One byte per hand-off the worker answered, oldest first (several may come
        # in one message): read every answer waiting, then hand out what the freed
        # window allows at once.
        handoffs: list[tuple[Worker, int]] = []
        for _ in range(ACK_BATCH):
            try:
                data = sock.recv(ANSWER_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data = b""
            if not data:
                self._send(handoffs)
                self._send(self._worker_gone(worker))
                return
            handoffs.extend(self._answered(worker, data))
        self._send(handoffs)

    def _answered(self, worker: Worker, data: bytes) -> list[tuple[Worker, int]]:
        """Apply a worker's answers, oldest hand-off first; what may go out now."""
        if data.count(_TOOK) == len(data):  # the usual case: it took them all
            return self._settle(worker, len(data))
        handoffs: list[tuple[Worker, int]] = []
        for answer in data:
            if answer == _DECLINED:
                # The worker could not take its oldest hand-off (out of descriptors):
                # the connection goes back to its place in the queue.
                handoffs.extend(self.handle.returned(worker))
            elif answer == _TOOK:
                handoffs.extend(self._settle(worker, 1))
        return handoffs

    def _settle(self, worker: Worker, count: int) -> list[tuple[Worker, int]]:
        """``worker`` took its ``count`` oldest hand-offs: close our copies; what may
        go out now.
        """
        conns, more = self.handle.accepted_many(worker, count)
        for conn in conns:
            os.close(conn)
        if conns:
            self.table.counted(worker, len(conns))
        return more

    def _retire_handoff(self, worker: Worker) -> None:
        sock = self.handoffs[worker]
        while True:  # its last answers count; a connection it never took goes elsewhere
            try:
                data = sock.recv(ANSWER_SIZE)
            except OSError:
                break
            if not data:
                break
            self._send(self._answered(worker, data))
        self._send(self._worker_gone(worker))

    def _worker_gone(self, worker: Worker) -> list[tuple[Worker, int]]:
        self.pending.discard(worker)
        sock = self.handoffs.pop(worker, None)
        if sock is not None:
            self.reactor.remove_reader(sock.fileno())
            sock.close()
        handoffs = self.handle.refused(worker)
        self._maybe_discard()
        if not self.handoffs:
            self.table.drained(self)
        return handoffs

    def remove(self, worker: Worker) -> None:
        """Route nothing new to ``worker``; its hand-off socket stays until it answers."""
        self.pending.discard(worker)
        self._send(self.handle.remove(worker))
        if worker in self.handoffs and not worker.is_connected():
            self._send(self._worker_gone(worker))
        self._maybe_discard()

    def _maybe_discard(self) -> None:
        if not self.serving() and self.table.owns(self):
            # The last worker left: stop listening now (new connections are refused),
            # while workers still disconnecting keep their hand-off sockets until
            # they close them, so a connection in flight is never cut off.
            self.table.unused(self)

    def close(self) -> None:
        self.reactor.remove_reader(self.sock.fileno())
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        close_fds(self.handle.drain())
        super().close()
        if not self.handoffs:
            return
        # Connections a disconnecting worker refuses now have nowhere to go.
        self.handle = _Closing(self.handle)

    def close_handoffs(self) -> None:
        """Close the hand-off sockets too (the primary is shutting everything down)."""
        for worker in list(self.handoffs):
            sock = self.handoffs.pop(worker)
            self.reactor.remove_reader(sock.fileno())
            sock.close()
            self.handle.refused(worker)  # back to the queue, which is closed below
        close_fds(self.handle.drain())

    def start_refusing(self) -> None:
        super().start_refusing()
        for fd in self.handle.drain():
            reset_close(fd)


class _Closing(RoundRobinHandle[Worker, int]):
    """A round-robin handle whose port is closed: refused connections are closed."""

    def __init__(self, old: RoundRobinHandle[Worker, int]) -> None:
        super().__init__(window=old.window)
        self._inflight = old._inflight

    def refused(self, worker: Worker) -> list[tuple[Worker, int]]:
        close_fds([entry[1] for entry in self._inflight.pop(worker, ())])
        return []


Handle = SharedServer | RoundRobinServer


class ServerTable:
    """Every server the primary shares, by key and by id."""

    def __init__(
        self,
        reactor: Reactor,
        policy: Callable[[], int],
        may_restart: Callable[[], bool],
        window: Callable[[], int] = lambda: DEFAULT_WINDOW,
        internal: Callable[[Identity], bool] = lambda _: False,
        batch_scheduling: Callable[[], bool] = lambda: False,
    ) -> None:
        self.reactor = reactor
        #: Whether handing off connections puts this thread under SCHED_BATCH.
        self._batch_scheduling = batch_scheduling
        #: Hand-offs a worker may hold before taking one (the ``handoff_window`` setting).
        self.window = window
        #: Whether a socket is one the primary opened for itself (channels, control).
        self._internal = internal
        #: The cluster's scheduling policy (frozen by the first server).
        self._policy = policy
        #: Whether a worker that leaves now may be replaced (its ports then stay open).
        self._may_restart = may_restart
        self._by_key: dict[Key, Handle] = {}
        self._by_id: dict[int, Handle] = {}
        self._next_id = 1
        self.handed: dict[int, int] = {}  # worker id -> connections it took
        self._draining: set[RoundRobinServer] = set()

    def query(self, worker: Worker, msg: Message, fds: list[int]) -> None:
        """Answer a worker's ``queryServer``: a descriptor to listen with, or an errno."""
        close_fds(fds)
        seq = int(msg.get("seq", 0))
        if not worker.is_connected() or worker.exited_after_disconnect:
            self.reply_error(worker, seq, errno.ECONNABORTED, "worker is disconnecting")
            return
        try:
            key: Key = (
                msg.get("address"),
                msg.get("port"),
                int(msg["family"]),
                int(msg["type"]),
                msg.get("fd"),
                msg.get("index"),
            )
            if key[4] is not None:
                # A descriptor is one server whatever the worker guessed it to be.
                key = (None, None, 0, 0, int(key[4]), None)
            handle = self._by_key.get(key)
            if handle is None:
                handle = self._create(key, msg)
            else:
                self._revive(handle)
        except OSError as exc:
            self.reply_error(worker, seq, exc.errno or errno.EINVAL, exc.strerror or str(exc))
            return
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            self.reply_error(worker, seq, errno.EINVAL, f"bad server query: {exc}")
            return
        handle.add(worker, seq)

    def _create(self, key: Key, msg: Message) -> Handle:
        policy = self._policy()
        if msg.get("policy") in (SCHED_NONE, SCHED_RR, SCHED_REUSEPORT):
            # A server that cannot take hand-offs (uvloop's C accept) asks to be shared.
            policy = int(msg["policy"])
        type_ = int(msg["type"])
        handle: Handle
        handle_id = self._next_id
        given = None
        if msg.get("fd") is not None:
            given = given_socket(int(msg["fd"]), self.is_internal)
            type_ = given.type  # what the descriptor is, not what the worker guessed
        if policy == SCHED_REUSEPORT and type_ == socket.SOCK_STREAM and given is None:
            handle = ReusePortServer(self, handle_id, key, bind_socket(msg, reuse_port=True))
        elif policy == SCHED_RR and type_ == socket.SOCK_STREAM:
            handle = RoundRobinServer(self, handle_id, key, given or bind_socket(msg))
        else:
            handle = SharedServer(self, handle_id, key, given or bind_socket(msg))
        address = str(msg.get("address") or "")
        # A path this primary bound (not a given descriptor, not an abstract name).
        if given is None and handle.sock.family == socket.AF_UNIX and address[:1] not in ("", "\0"):
            path = os.path.abspath(address)
            # Bound perhaps by a shorter relative path: the worker's answer names the
            # path it asked for, which is right from any directory.
            handle.sockname = path
            with contextlib.suppress(OSError):
                handle.owned_path = (path, os.stat(path).st_ino)
        self._next_id += 1
        self._by_key[key] = handle
        self._by_id[handle.id] = handle
        return handle

    def reply(self, worker: Worker, seq: int, fields: dict[str, Any], fds: list[int]) -> None:
        """Answer a request of ``worker`` (descriptors are duplicated by the channel)."""
        channel = worker._backend.channel  # type: ignore[attr-defined]
        if channel is not None:
            payload = encode_internal(Act.REPLY, seq=seq, **fields)
            channel.send(Kind.INTERNAL, Codec.JSON, payload, fds or None)

    def reply_error(self, worker: Worker, seq: int, err: int, text: str) -> None:
        """Answer a request with an errno the worker raises as ``OSError``."""
        self.reply(worker, seq, {"errno": err, "error": text}, [])

    def counted(self, worker: Worker, count: int) -> None:
        """``worker`` took ``count`` more connections."""
        self.handed[worker.id] = self.handed.get(worker.id, 0) + count

    def memberships(self, worker: Worker) -> int:
        """How many ports ``worker`` serves now."""
        return sum(1 for h in self._by_id.values() if worker in h.handle.members)

    def queued(self) -> int:
        """Connections accepted by the primary and waiting for a free worker."""
        return sum(h.handle.queued for h in self._by_id.values() if isinstance(h, RoundRobinServer))

    def listening(self, worker: Worker, msg: Message) -> None:
        """A worker's program listens on one of its servers."""
        handle = self._by_id.get(msg.get("handle", -1))
        if handle is None:
            return
        handle.served = True
        if isinstance(handle, RoundRobinServer):
            handle.listening(worker)

    def worker_closed(self, worker: Worker, msg: Message) -> None:
        """A worker closed one of its servers."""
        handle = self._by_id.get(msg.get("handle", -1))
        if handle is not None:
            handle.remove(worker)

    def remove_worker(self, worker: Worker) -> None:
        """Stop routing to ``worker`` on every server."""
        for handle in [*self._by_id.values(), *self._draining]:
            handle.remove(worker)

    def is_internal(self, ident: Identity) -> bool:
        """Whether ``ident`` is a socket pycluster opened: never handed out by ``fd=N``."""
        if self._internal(ident):
            return True
        for handle in [*self._by_id.values(), *self._draining]:
            socks = [handle.sock]
            if isinstance(handle, RoundRobinServer):
                socks += handle.handoffs.values()
            for sock in socks:
                with contextlib.suppress(OSError):
                    if sock.fileno() != -1 and identity(sock.fileno()) == ident:
                        return True
        return False

    def handing_off(self) -> None:
        """A round-robin port is served: SCHED_BATCH for this thread, if the setting
        says so (see :mod:`pycluster._batchsched`)."""
        if self._batch_scheduling():
            _batchsched.enter()

    def owns(self, handle: Handle) -> bool:
        """Whether ``handle`` is still listening."""
        return self._by_id.get(handle.id) is handle

    def unused(self, handle: Handle) -> None:
        """The last worker left ``handle``: stop listening, unless a restart is on its way.

        With a restart pending, the port stays open and connections wait (in the
        queue or the kernel's backlog) for the replacement, for ``ORPHAN_GRACE`` at
        most: then they are refused until a worker listens again (see ``_Served``).
        """
        if self._may_restart() and handle.served:
            # Whether a restart really comes is decided once the worker's exit is
            # known (see prune()); meanwhile clients wait a second at most.
            if handle.grace is None and not handle.refusing:
                handle.grace = self.reactor.call_later(ORPHAN_GRACE, self._orphaned, handle)
            return
        self.discard(handle)

    def _orphaned(self, handle: Handle) -> None:
        handle.grace = None
        if self.owns(handle) and not handle.serving():
            log.warning(
                "no worker serves %s: refusing connections until one listens again",
                handle.sockname,
            )
            handle.start_refusing()

    def _revive(self, handle: Handle) -> None:
        if handle.grace is not None:
            handle.grace.cancel()
            handle.grace = None
        if handle.refusing:
            log.info("a worker serves %s again: accepting connections", handle.sockname)
            handle.stop_refusing()

    def prune(self) -> None:
        """Stop listening on every port no worker serves (no restart is pending any more)."""
        for handle in list(self._by_id.values()):
            if not handle.serving():
                self.discard(handle)

    def discard(self, handle: Handle) -> None:
        """The last worker left ``handle``: stop listening."""
        if self._by_id.pop(handle.id, None) is not None:
            self._by_key.pop(handle.key, None)
            handle.close()
            if isinstance(handle, RoundRobinServer) and handle.handoffs:
                self._draining.add(handle)

    def drained(self, handle: RoundRobinServer) -> None:
        """A closed round-robin server has no hand-off socket left."""
        self._draining.discard(handle)

    def close_all(self) -> None:
        """Close every server and hand-off (``cluster.disconnect()`` once all workers left)."""
        for handle in list(self._by_id.values()):
            self.discard(handle)
        for handle in list(self._draining):
            handle.close_handoffs()
        self._draining.clear()
