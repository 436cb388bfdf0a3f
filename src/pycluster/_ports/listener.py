"""One listener of a worker: its descriptors, its accept, how it ends, and their registry.

The registry maps each descriptor a program holds for a cluster listener (its own
socket's, and any ``dup()``) to its :class:`Listener`, checked against the
descriptor's inode on every use, so a descriptor number reused after a close behind
Python's back is never mistaken for one.
"""

from __future__ import annotations

import _socket
import errno
import os
import select
import socket
import struct
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from pycluster import _child as child
from pycluster._ipc.fds import fds_from_ancillary
from pycluster._ipc.messages import Act
from pycluster._ports import epoll
from pycluster._ports.drain import connections_on
from pycluster._ports.fdtable import descriptors
from pycluster._scheduling.bursts import BURST_SPAN, QUIET_SPELL
from pycluster._turns import AcceptTurns

RR, SHARED, OWN = "rr", "shared", "own"
SCHED_NONE = 1
#: Seconds an ``accept()`` woken by a retirement waits for the quiet socket to arrive.
RETIRE_WAIT = 1.0
#: Options that Linux copies from a listening TCP socket to the sockets it accepts.
INHERITED_OPTIONS = (
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE),
    (socket.IPPROTO_TCP, socket.TCP_NODELAY),
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
)
#: Connections a worker takes from a shared socket per wake-up of its event loop while
#: a burst is being shared out (the first ``BURST_SPAN`` seconds after a quiet spell),
SHARED_BURST = 2
#: ... and under a steady stream, where every worker is running anyway: each wake-up
#: that stops short costs the loop an iteration and a poll, and at two per wake-up
#: that was 6-8 us of a worker's CPU per ``Connection: close`` request (10 % of it).
STEADY_BURST = 8
#: Seconds between two accepts that make them two wake-ups, not one burst (a loop that
#: takes one connection per wake-up at a high rate may be told "nothing more" once in
#: a while, which costs it one idle iteration; too short a gap lets a descheduled
#: worker take a whole burst).
BURST_GAP = 0.005
#: The shortest sleep: the kernel rounds it up to its timer slack (about 50 µs).
YIELD_SLEEP = 1e-9
#: How often draining checks whether connections are still open.
DRAIN_POLL = 0.05

_RECV_FLAGS = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
_ANCILLARY = socket.CMSG_SPACE(4 * 4)
_ACK = b"A"
_DECLINE = b"D"
#: The first byte of a hand-off the primary follows with another one for this worker.
_MORE = b"M"
C = _socket.socket
c_accept: Callable[[socket.socket], tuple[int, Any]] = C._accept  # type: ignore[attr-defined]
_STREAM_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)
_ZERO_PEER: dict[int, Any] = {
    socket.AF_INET: ("0.0.0.0", 0),
    socket.AF_INET6: ("::", 0, 0, 0),
    socket.AF_UNIX: "",
}


#: Every listener this worker has had, for draining at disconnect.
HISTORY: list[Listener] = []


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
        #: The address the program bound (a client rebinds to it, see _unshare_client).
        self.requested: Any = sockname
        #: The address as the kernel's tables show it (what draining looks for).
        self.kernel_name: Any = sockname
        #: Round robin: a socket of the program's own kind, holding its options.
        self.shadow = shadow
        self.runtime = runtime
        self.handle_id = handle_id
        #: What to tell the primary (``listening``) when the program starts listening.
        self.report = report
        #: ``create_server`` made the socket: a disconnect closes it (else retires it).
        self.created = created
        self.proto = int(sock.proto)
        self.owner: weakref.ref[socket.socket] = weakref.ref(sock)
        #: Options a connection accepted on the program's socket would have inherited.
        self.inherited: dict[tuple[int, int], int] = {}
        if shadow is not None:
            self._read_inherited(shadow)
        self.ino = os.fstat(sock.fileno()).st_ino
        self.fds: set[int] = set()
        self.listening = False
        self.retired = False
        self.closing = False
        self.swapped = threading.Event()
        self._wake: tuple[int, int] | None = None
        #: Shared policy: the page the workers of this socket share out bursts with.
        self.turns: AcceptTurns | None = None
        self._burst = 0
        self._burst_at = 0.0
        self._run_start = 0.0
        # Hand-offs taken and not acknowledged yet (see _take), and the lock that
        # keeps them in step with what is written to the primary.
        self._owed = 0
        self._ack_lock = threading.Lock()
        self.token: int | None = None
        self.closer: Callable[[], None] = self.close_for_disconnect
        #: Gives back what the query took (a port-0 index) once the listener ends.
        self.release: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"<Listener {self.mode} {self.sockname!r} fds={sorted(self.fds)}>"

    # -- accept --------------------------------------------------------------------------
    def accept(self, sock: socket.socket, want_peer: bool = True) -> tuple[int, Any]:
        """``socket._accept()`` for a descriptor of this listener.

        Without ``want_peer`` the address is None where finding it costs a system call
        (a hand-off): an event loop's transport asks for it itself.
        """
        if not self.listening and self.type == socket.SOCK_STREAM:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        if self.closing:
            # Being closed for a disconnect: take no more (one taken now could be
            # dropped with the server's transport machinery; under round robin, what
            # waits in the hand-off socket goes to another worker once it closes).
            if sock.gettimeout() == 0.0:
                raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        if self.mode == RR:
            return self._take(sock, want_peer)
        if self.mode == SHARED and sock.gettimeout() is None:
            return self._blocking_accept(sock)
        if self.mode == SHARED and sock.gettimeout() == 0.0:
            return self._fair_accept(sock)
        fd, addr = c_accept(sock)
        self._count(fd)
        return fd, addr

    def _fair_accept(self, sock: socket.socket) -> tuple[int, Any]:
        # An event loop accepts until EAGAIN (asyncio up to `backlog` at a time), so one
        # worker would drain the shared queue and the others get nothing. As libuv does
        # in a cluster worker, take a few and then say "nothing more" for this wake-up:
        # the descriptor stays readable, and every worker gets its turn.
        now = time.monotonic()
        if now - self._burst_at > BURST_GAP:
            self._burst = 0  # a new wake-up
        if self._burst >= (SHARED_BURST if now - self._run_start < BURST_SPAN else STEADY_BURST):
            self._burst = 0
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        turns = self.turns
        if turns is not None:
            # Early in a burst, step aside while ahead of a sibling worker and
            # connections still wait: the one behind takes them (see pycluster._turns).
            turns.wait_turn(lambda: _readable(sock))
        elif self._burst and now - self._run_start < BURST_SPAN:
            # A burst after a quiet spell (clients opening their connections at once):
            # before a second connection in one wake-up, step off the CPU for a moment
            # (libuv's nanosleep in a cluster worker), so that a worker woken for the
            # same connections but waiting for a CPU gets its share. Not under a steady
            # stream, where the other workers are running anyway and the sleeps cost
            # 40 % of the throughput. (Only without a turns page, which shares a burst
            # out more evenly: 50 connections at once split 18-27/32-23 over five runs
            # this way, 8-17/42-33 with no sleep.)
            time.sleep(YIELD_SLEEP)
        try:
            fd, addr = c_accept(sock)
        except BlockingIOError:
            self._burst = 0
            raise
        if turns is not None:
            turns.took()
        if now - self._burst_at > QUIET_SPELL:
            self._run_start = now
        self._burst += 1
        # From the end of this accept: the sleep above is not a gap between wake-ups.
        self._burst_at = time.monotonic()
        self._count(fd)
        return fd, addr

    def _take(self, sock: socket.socket, want_peer: bool = True) -> tuple[int, Any]:
        while True:
            # The object's own recvmsg: its timeout and blocking mode apply as to accept().
            try:
                msg, ancillary, flags, _addr = C.recvmsg(sock, 1, _ANCILLARY, _RECV_FLAGS)
            except (BlockingIOError, InterruptedError, TimeoutError):
                self.settle()  # nothing more in this wake-up: acknowledge what was taken
                raise
            except OSError:
                if self.retired or self.closing:
                    return self._ended(sock)  # the descriptor was swapped meanwhile
                raise
            fds = fds_from_ancillary(ancillary)
            if not msg and not fds:
                return self._ended(sock)
            for extra in fds[1:]:
                os.close(extra)
            if not fds:
                if flags & socket.MSG_CTRUNC:
                    # This process is out of descriptors: the kernel dropped the
                    # connection's. The primary still has it and gives it to another
                    # worker; the program sees what accept() would say.
                    self.decline(sock)
                    raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
                continue
            fd = fds[0]
            if msg == _MORE and sock.gettimeout() == 0.0:
                # Another hand-off is on its way, and an event loop accepts until the
                # socket would block: one acknowledgement will cover both (one wake-up
                # of the primary instead of one per connection). A blocking loop may
                # serve this connection before it accepts again, so it acknowledges
                # at once.
                with self._ack_lock:
                    self._owed += 1
            elif not self.acknowledge(sock, fd):
                # Not acknowledged (a disconnect shut the hand-off, or the primary is
                # gone): the primary gives this connection to another worker.
                os.close(fd)
                continue
            self._count(fd)
            return fd, peer(fd, self.family) if want_peer else None

    def decline(self, sock: socket.socket) -> None:
        """Tell the primary this worker could not take its oldest hand-off."""
        with self._ack_lock:
            answer, self._owed = _ACK * self._owed + _DECLINE, 0
            try:
                os.write(sock.fileno(), answer)
            except OSError:
                pass  # the hand-off socket is gone: the primary re-routes what it held

    def acknowledge(self, sock: socket.socket, fd: int) -> bool:
        """Tell the primary this worker took connection ``fd`` (and any still owed)."""
        with self._ack_lock:
            answer, self._owed = _ACK * (self._owed + 1), 0
            try:
                os.write(sock.fileno(), answer)
            except OSError:
                return False
        return True

    def settle(self) -> None:
        """Acknowledge the hand-offs taken and still owed (before the socket may end).

        Called when an accept finds nothing more, and before anything that ends or
        shuts the hand-off socket: the primary must never take a connection that the
        program already has for one it may give to another worker.
        """
        if not self._owed:
            return
        # The registry's lock first (a descriptor number must not change hands while
        # it is written to), as everywhere that holds both.
        with registry_lock, self._ack_lock:
            if not self._owed:
                return
            fd = next((fd for fd in self.fds if self._still_ours(fd)), None)
            if fd is not None:
                try:
                    os.write(fd, _ACK * self._owed)
                except OSError:
                    pass  # the primary is gone
            self._owed = 0

    def _ended(self, sock: socket.socket) -> tuple[int, Any]:
        """The hand-off socket reached its end: retired, closed, or the primary stopped."""
        if self.retired:
            self.swapped.wait(RETIRE_WAIT)
            if sock.fileno() == -1 or lookup(sock) is not None:
                raise OSError(errno.EBADF, os.strerror(errno.EBADF))
            return c_accept(sock)  # the quiet socket: blocks, or EAGAIN
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
                fd, addr = c_accept(sock)
            except (BlockingIOError, InterruptedError):
                pass
            else:
                if self.turns is not None:
                    self.turns.took()  # counted, so that event-loop siblings see it
                self._count(fd)
                return fd, addr
            wake = self._wake_pipe()
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
            poller.register(wake[0], select.POLLIN)
            ready = [fd for fd, _ in poller.poll()]
            if wake[0] in ready or self.retired or self.closing:
                self.swapped.wait(RETIRE_WAIT)
                if sock.fileno() == -1 or lookup(sock) is not None:
                    raise OSError(errno.EBADF, os.strerror(errno.EBADF))
                return c_accept(sock)

    def _wake_pipe(self) -> tuple[int, int]:
        if self._wake is None:
            self._wake = os.pipe2(os.O_CLOEXEC)
        return self._wake

    def _count(self, fd: int | None = None) -> None:
        status = self.runtime.status
        if status is not None:
            status.count_connection()
        if fd is not None and self.inherited:
            self._inherit(fd)

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
                    Act.LISTENING,
                    address=address,
                    port=port,
                    addressType=kind,
                    handle=self.handle_id,
                )
            except OSError:
                pass  # the channel is closing: the worker is going away

    def _read_inherited(self, shadow: socket.socket) -> None:
        """Options the program set before binding that accepted sockets inherit."""
        if self.family not in (socket.AF_INET, socket.AF_INET6):
            return
        fresh = socket.socket(self.family, self.type)
        try:
            for option in INHERITED_OPTIONS:
                try:
                    value = C.getsockopt(shadow, *option)
                    if value != C.getsockopt(fresh, *option):
                        self.inherited[option] = value
                except OSError:
                    continue
        finally:
            fresh.close()

    def setsockopt(self, args: tuple[Any, ...]) -> None:
        """``setsockopt`` on the program's socket: its own kind keeps it; connections
        handed over from now on get it as they would have inherited it."""
        assert self.shadow is not None
        C.setsockopt(self.shadow, *args)
        option = (args[0], args[1])
        if option in INHERITED_OPTIONS and isinstance(args[2], int):
            self.inherited[option] = args[2]

    def _inherit(self, fd: int) -> None:
        temp = C(self.family, socket.SOCK_STREAM, 0, fd)
        try:
            for (level, name), value in self.inherited.items():
                try:
                    temp.setsockopt(level, name, value)
                except OSError:
                    pass
        finally:
            temp.detach()

    def getsockopt(self, args: tuple[Any, ...]) -> Any:
        """An option of the program's socket (its own kind, its own options)."""
        level, name = args[0], args[1]
        if level == socket.SOL_SOCKET and name == socket.SO_ACCEPTCONN:
            value = int(self.listening)
            return value if len(args) == 2 else struct.pack("i", value)[: args[2]]
        assert self.shadow is not None
        return C.getsockopt(self.shadow, *args)

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
        if self.fds:
            self.retire()  # copies made behind Python's back (os.dup) go quiet too
        else:
            self.finish()

    def stop_taking(self) -> None:
        """Take no more connections (a disconnect began; the close follows)."""
        self.closing = True

    def _close_in_background(self) -> None:
        self.closing = True
        if self.token is not None:
            self.runtime.servers.close_one(self.token)

    def _still_ours(self, fd: int) -> bool:
        """Whether descriptor ``fd`` is still this listener's (not closed and reused)."""
        try:
            return os.fstat(fd).st_ino == self.ino
        except OSError:
            return False

    def _wake_blocked(self) -> None:
        """Wake threads blocked in ``accept()`` on this listener."""
        self.settle()
        with registry_lock:
            fd = next((fd for fd in self.fds if self._still_ours(fd)), None)
            if self.mode in (RR, OWN) and fd is not None:
                on_fd(fd, lambda s: s.shutdown(socket.SHUT_RDWR))
                return
        if self.mode in (RR, OWN):
            return
        wake = self._wake
        if wake is not None:
            try:
                os.write(wake[1], b"x")
            except OSError:
                pass  # closed by finish() meanwhile: nobody waits any more

    def retire(self, shut: bool = False) -> None:
        """Give the program's descriptors a quiet socket that never gets a connection.

        ``shut``: the program shut its listening socket down; the quiet socket is shut
        down too, so it behaves as a shut-down listener does (``accept()`` fails with
        ``EINVAL``), while the shared socket itself stays up for the other workers.
        """
        if self.retired:
            return
        self.retired = True
        self._wake_blocked()
        quiet = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        C.bind(quiet, "")  # an unnamed abstract address: nobody can connect to it
        C.listen(quiet, 1)
        if shut:
            C.shutdown(quiet, socket.SHUT_RDWR)
        owner = self.owner()
        wants_blocking = owner is None or owner.gettimeout() is None
        C.setblocking(quiet, wants_blocking)
        quiet_ino = os.fstat(quiet.fileno()).st_ino
        with registry_lock:
            for fd in self.copies():
                register(fd, self)  # an os.dup() copy is a descriptor of it too
            for fd in list(self.fds):
                if self._still_ours(fd):
                    # The program's event loop watches the quiet socket from now on,
                    # not the shared one that stays readable for the other workers.
                    watched = epoll.drop(fd, self.ino)
                    os.dup2(quiet.fileno(), fd, inheritable=os.get_inheritable(fd))
                    epoll.restore(fd, watched)
                    if fd in blocking:
                        blocking[fd] = quiet_ino
                    retired_names[fd] = (quiet_ino, self.sockname)
                forget(fd)
        quiet.close()
        self.finish()
        self.swapped.set()

    def copies(self, *, besides: int | None = None) -> list[int]:
        """Descriptors of this process for this listener that the registry does not know
        (``os.dup()``, C code), other than ``besides``."""
        same = descriptors(f"socket:[{self.ino}]".__eq__)
        return [fd for fd in same if fd not in self.fds and fd != besides]

    def finish(self) -> None:
        """No descriptor of this listener is left: release what it held."""
        self._owed = 0  # settled before the last descriptor went (see settle)
        for fd in list(self.fds):
            forget(fd)
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
        release, self.release = self.release, None
        if release is not None:
            release()
        self.swapped.set()

    # -- draining ------------------------------------------------------------------------------
    def open_connections(self) -> int:
        """Connections of this process on this listener's address that are still open."""
        if self.type != socket.SOCK_STREAM:
            return 0  # a datagram socket has no connections
        return connections_on(self.family, self.kernel_name)

    def wait_drained(self, timeout: float | None = None) -> bool:
        """Wait until no connection on this listener's address is open."""
        return wait_drained([self], timeout)


# -- the registry of listening descriptors -----------------------------------------------------
by_fd: dict[int, Listener] = {}
by_ino: dict[int, Listener] = {}
#: Shared stream descriptors whose program asked for blocking mode, with the inode they
#: had then. The descriptor's flags are every worker's, so the socket object stays
#: non-blocking underneath; ``gettimeout()``/``getblocking()`` answer what was asked.
blocking: dict[int, int] = {}
#: Held while a listener's descriptor numbers change hands (close, retire, unshare).
registry_lock = threading.RLock()
#: Retired descriptors: the inode of the quiet socket each now holds, and the address
#: the program's socket had. ``getsockname()`` still answers that address, as a socket
#: that merely stopped getting connections would (cheroot's ``stop()`` connects to it
#: to wake its own accept, and would otherwise get the quiet socket's Unix name).
retired_names: dict[int, tuple[int, Any]] = {}


def retired_name(fd: int) -> Any:
    """The address a retired descriptor's socket had, or None if ``fd`` is not one."""
    entry = retired_names.get(fd)
    if entry is None:
        return None
    try:
        if os.fstat(fd).st_ino == entry[0]:
            return entry[1]
    except OSError:
        pass
    del retired_names[fd]  # closed behind Python's back, the number reused
    return None


def _readable(sock: socket.socket) -> bool:
    """Whether connections wait on a listening socket (without taking one)."""
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return False


def register(fd: int, listener: Listener) -> None:
    with registry_lock:
        listener.fds.add(fd)
        by_fd[fd] = listener
        by_ino[listener.ino] = listener


def forget(fd: int) -> Listener | None:
    with registry_lock:
        listener = by_fd.pop(fd, None)
        if listener is not None:
            listener.fds.discard(fd)
            if not listener.fds and by_ino.get(listener.ino) is listener:
                del by_ino[listener.ino]
        return listener


def wants_blocking(sock: socket.socket) -> bool:
    """Whether ``sock`` is a shared descriptor its program put in blocking mode."""
    fd = C.fileno(sock)
    ino = blocking.get(fd)
    if ino is None:
        return False
    try:
        if os.fstat(fd).st_ino == ino:
            return True
    except OSError:
        pass
    blocking.pop(fd, None)  # closed behind Python's back, the number reused
    return False


def lookup(sock: socket.socket) -> Listener | None:
    """The listener behind ``sock``'s descriptor, if it is one (checked, not assumed)."""
    fd = C.fileno(sock)
    listener = by_fd.get(fd)
    if listener is None:
        return None
    try:
        same = os.fstat(fd).st_ino == listener.ino
    except OSError:
        same = False
    if not same:  # the descriptor was closed behind Python's back and reused
        forget(fd)
        return None
    return listener


def discover(sock: socket.socket) -> Listener | None:
    """A copy of a listener's descriptor made outside Python's socket object (fromfd)."""
    if not by_ino:
        return None
    fd = C.fileno(sock)
    try:
        listener = by_ino.get(os.fstat(fd).st_ino)
    except OSError:
        return None
    if listener is not None:
        register(fd, listener)
    return listener


def listener_of(sock: Any) -> Listener | None:
    """The cluster listener behind ``sock``, if any (for pycluster's integrations)."""
    if not isinstance(sock, socket.socket) or sock.fileno() == -1:
        return None
    return lookup(sock) or discover(sock)


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


def accepts_through_pycluster(sock: Any) -> bool:
    """Whether connections on ``sock`` must be taken with pycluster's ``accept()``.

    So for a round-robin hand-off socket (only that ``accept()`` reads it) and a
    shared stream socket (only that ``accept()`` leaves other workers their share); an
    event loop that accepts in C (uvloop) must not serve such a socket itself.
    """
    listener = listener_of(sock)
    return (
        listener is not None
        and listener.mode in (RR, SHARED)
        and listener.type == socket.SOCK_STREAM
    )


def on_fd(fd: int, action: Callable[[socket.socket], object]) -> None:
    """Run ``action`` on a throw-away socket object for ``fd`` (the descriptor stays)."""
    temp = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, 0, fileno=fd)
    try:
        action(temp)
    except OSError:
        pass
    finally:
        temp.detach()


def peer(fd: int, family: int) -> Any:
    temp = C(family, socket.SOCK_STREAM, 0, fd)
    try:
        return temp.getpeername()
    except OSError:
        return _ZERO_PEER.get(family)  # the client is already gone: as accept() would say
    finally:
        temp.detach()


def history() -> list[Listener]:
    """Every listener this worker has had (closed and retired ones included)."""
    return list(HISTORY)


def replace_closer(listener: Listener | None, closer: Callable[[], None]) -> bool:
    """An integration (asyncio, socketserver) takes over ending a listener at disconnect.

    ``False`` if a disconnect already ended it: the integration must not serve.
    """
    if listener is None or listener.token is None or listener.retired or listener.closing:
        return False
    listener.closer = closer
    # The integration's serving loop takes no more connections from the moment
    # disconnect() is called, before its own close runs.
    listener.runtime.servers.set_stopper(listener.token, listener.stop_taking)
    return True


def wait_retired(listeners: list[Listener], timeout: float) -> bool:
    """Wait until a disconnect has ended each of ``listeners`` that it retires itself.

    A retirement moves the program's epoll registrations of its descriptor (drop, swap,
    register again): the program's own ``epoll_ctl`` on that descriptor meanwhile fails
    with ``ENOENT``, which a loop that stops listening takes for its own bug (Twisted's
    ``stopListening`` raises, so a shutdown trigger that would wait for the requests
    in progress never waits). So whoever stops the program at a disconnect waits for
    this. Listeners an integration closes (asyncio, socketserver) are not waited for:
    their closing may wait for the program. ``False`` on time-out.
    """
    deadline = time.monotonic() + timeout
    for listener in listeners:
        if listener.closer != listener.close_for_disconnect:
            continue
        if not listener.swapped.wait(max(0.0, deadline - time.monotonic())):
            return False
    return True


def wait_drained(listeners: list[Listener], timeout: float | None = None) -> bool:
    """Wait until none of ``listeners`` has an open connection; ``False`` on time-out."""
    wait = threading.Event()
    deadline = None if timeout is None else time.monotonic() + timeout
    while any(listener.open_connections() for listener in listeners):
        if deadline is not None and time.monotonic() >= deadline:
            return False
        wait.wait(DRAIN_POLL)
    return True
