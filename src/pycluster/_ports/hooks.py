"""The hooks on ``socket.socket`` in a worker process, for the descriptors of listeners.

Each hook is the C method for every other socket, after one dictionary look-up.
"""

from __future__ import annotations

import errno
import operator
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pycluster._ports import epoll
from pycluster._ports.listener import (
    OWN,
    RR,
    SHARED,
    C,
    blocking,
    by_fd,
    by_ino,
    c_accept,
    discover,
    forget,
    lookup,
    register,
    registry_lock,
    retired_name,
    retired_names,
    wants_blocking,
)
from pycluster._ports.query import share

_py_dup = socket.socket.dup
_py_init = socket.socket.__init__
_py_real_close = socket.socket._real_close  # type: ignore[attr-defined]
#: Set by ``pycluster run``: whether to share a socket the program binds, and how.
BindFilter = Callable[[socket.socket, Any], "dict[str, Any] | None"]
_bind_filter: BindFilter | None = None
_marked: dict[int, dict[str, Any]] = {}
_installed = False
_local = threading.local()


@contextmanager
def binding_privately() -> Iterator[None]:
    """pycluster binds a socket of its own here (exclusive, SO_REUSEPORT): not shared."""
    _local.private = True
    try:
        yield
    finally:
        _local.private = False


def _accept_hook(self: socket.socket) -> tuple[int, Any]:
    listener = lookup(self) if by_fd else None
    if listener is None:
        try:
            return c_accept(self)
        except OSError as exc:
            if exc.errno != errno.EINVAL or (listener := discover(self)) is None:
                raise
    return listener.accept(self)


def _getsockname_hook(self: socket.socket) -> Any:
    listener = lookup(self) if by_fd else None
    if listener is not None and (listener.mode == RR or listener.family == socket.AF_UNIX):
        return listener.sockname
    if retired_names and (name := retired_name(C.fileno(self))) is not None:
        return name
    name = C.getsockname(self)
    if name == "" and by_ino and (listener := discover(self)) is not None:
        return listener.sockname
    return name


def _getpeername_hook(self: socket.socket) -> Any:
    if by_fd and (listener := lookup(self)) is not None and listener.mode == RR:
        raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN))
    return C.getpeername(self)


def _getsockopt_hook(self: socket.socket, *args: Any) -> Any:
    if by_fd and (listener := lookup(self)) is not None and listener.shadow is not None:
        return listener.getsockopt(args)
    return C.getsockopt(self, *args)


def _setsockopt_hook(self: socket.socket, *args: Any) -> None:
    # A shared socket's options are every worker's: the program's own socket keeps
    # what it sets, and the connections it accepts get what they would inherit.
    if by_fd and (listener := lookup(self)) is not None and listener.shadow is not None:
        listener.setsockopt(args)
        return
    C.setsockopt(self, *args)


def _shutdown_hook(self: socket.socket, how: int, /) -> None:
    if by_fd and (listener := lookup(self)) is not None and listener.mode in (RR, SHARED):
        if how == socket.SHUT_WR:
            return  # a listening socket has nothing to write: nothing happens
        # A shared socket is every worker's: only this worker's descriptors end, and
        # they then behave as a shut-down listener does.
        listener.retire(shut=True)
        return
    C.shutdown(self, how)


def _wrap_ssl_recv() -> None:
    """``ssl`` wraps a listening socket after checking that it has nothing to read.

    Only an SSL socket still without its TLS object makes that check, so the hook is
    on ``ssl.SSLSocket.recv`` and the plain ``recv`` of every connection stays C.
    """
    import ssl

    original = ssl.SSLSocket.recv

    def recv(self: ssl.SSLSocket, buflen: int = 1024, flags: int = 0) -> bytes:
        if self._sslobj is None and by_fd:  # type: ignore[attr-defined]
            listener = lookup(self)
            if listener is not None and listener.mode == RR:
                raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN))
        return original(self, buflen, flags)

    ssl.SSLSocket.recv = recv  # type: ignore[method-assign]


def _init_hook(
    self: socket.socket, family: Any = -1, type: Any = -1, proto: Any = -1, fileno: Any = None
) -> None:
    if fileno is not None and family in (-1, None) and by_ino:
        # socket.socket(fileno=fd) reads the kind from the descriptor: a listener's
        # descriptor is of the kind the program's socket is.
        try:
            listener = by_ino.get(os.fstat(fileno).st_ino)
        except (OSError, TypeError):
            listener = None
        if listener is not None:
            family, type, proto = listener.family, listener.type, listener.proto
    _py_init(self, family, type, proto, fileno)


def _listen_hook(self: socket.socket, *backlog: int) -> None:
    listener = lookup(self) if by_fd else None
    if listener is None or listener.mode == OWN:
        C.listen(self, *backlog)
    if listener is not None:
        listener.listen()  # shared: the primary listens, with the backlog it needs


def _shared_stream(sock: socket.socket) -> bool:
    listener = lookup(sock)
    return listener is not None and listener.mode == SHARED and listener.type == socket.SOCK_STREAM


def _settimeout_hook(self: socket.socket, value: float | None) -> None:
    # A shared descriptor's flags are every worker's: clearing O_NONBLOCK, even for a
    # moment, could block another worker's non-blocking accept(). Blocking mode is
    # recorded instead, and a blocking accept() waits in pycluster.
    if by_fd and _shared_stream(self):
        C.settimeout(self, 0.0 if value is None else value)  # raises as settimeout would
        fd = C.fileno(self)
        if value is None:
            blocking[fd] = os.fstat(fd).st_ino
        else:
            blocking.pop(fd, None)
        return
    if blocking:
        blocking.pop(C.fileno(self), None)  # a retired one: its own (quiet) socket now
    C.settimeout(self, value)


def _setblocking_hook(self: socket.socket, flag: bool) -> None:
    if by_fd and _shared_stream(self):
        _settimeout_hook(self, None if operator.index(flag) else 0.0)
        return
    if blocking:
        blocking.pop(C.fileno(self), None)
    C.setblocking(self, flag)


def _gettimeout_hook(self: socket.socket) -> float | None:
    if blocking and wants_blocking(self):
        return None
    return C.gettimeout(self)


def _getblocking_hook(self: socket.socket) -> bool:
    if blocking and wants_blocking(self):
        return True
    return C.getblocking(self)


def _dup_hook(self: socket.socket) -> socket.socket:
    if not (by_fd and (listener := lookup(self)) is not None):
        return _py_dup(self)
    # Registered before its object exists, so that setting the copy's timeout never
    # reaches a shared descriptor's flags.
    fd = os.dup(C.fileno(self))
    register(fd, listener)
    copy = socket.socket(self.family, self.type, self.proto, fileno=fd)
    copy.settimeout(self.gettimeout())
    return copy


def _real_close_hook(self: socket.socket, _ss: Any = C) -> None:
    if blocking:
        blocking.pop(C.fileno(self), None)
    if retired_names:
        retired_names.pop(C.fileno(self), None)
    if by_fd:
        fd = C.fileno(self)
        listener = by_fd.get(fd)
        if listener is not None:
            listener.settle()  # what the program took is acknowledged before the close
            # Under the registry's lock: a retirement never swaps a number closed here.
            with registry_lock:
                forget(fd)
                # As with a plain socket, a copy made behind Python's back (os.dup(),
                # C code) keeps the listener; the last descriptor ends it.
                copies = [] if listener.fds else listener.copies(besides=fd)
                if not listener.fds and not copies and listener.mode == SHARED:
                    # The shared file outlives this close (the primary, the other
                    # workers hold it): drop what its release would have dropped.
                    epoll.drop(fd, listener.ino)
                _py_real_close(self, _ss)
                for copy in copies:
                    register(copy, listener)
            if not listener.fds:
                listener.finish()
            return
    _py_real_close(self, _ss)


def _bind_hook(self: socket.socket, address: Any, /) -> None:
    fd = C.fileno(self)
    if by_fd and lookup(self) is not None:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))  # bound already
    options = _marked.pop(fd, None)
    if _bind_filter is not None and not getattr(_local, "private", False):
        extra = _bind_filter(self, address)  # pycluster run: every stream socket is shared
        if extra is not None:
            options = {**(options or {}), **extra}
    if options is None:
        C.bind(self, address)
        return
    share(self, options.pop("address", address), **options)


def _connect_hook(self: socket.socket, address: Any, /) -> None:
    if by_fd:
        _unshare_client(self)
    C.connect(self, address)


def _connect_ex_hook(self: socket.socket, address: Any, /) -> int:
    if by_fd:
        _unshare_client(self)
    return int(C.connect_ex(self, address))


def _unshare_client(sock: socket.socket) -> None:
    """A shared socket that connects was a client choosing its source address after all."""
    listener = lookup(sock)
    if listener is None or listener.listening or listener.shadow is None:
        return
    fd = C.fileno(sock)
    timeout = sock.gettimeout()  # the program's, whatever the shared descriptor's flags
    with registry_lock:
        os.dup2(listener.shadow.fileno(), fd, inheritable=os.get_inheritable(fd))
        forget(fd)
        blocking.pop(fd, None)
    address = listener.requested
    listener.finish()
    C.settimeout(sock, timeout)
    C.bind(sock, address)


def set_bind_filter(chooser: BindFilter) -> None:
    """``pycluster run``: share the stream sockets ``chooser`` says how to share."""
    global _bind_filter
    _bind_filter = chooser
    install()


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
    cls.gettimeout = _gettimeout_hook
    cls.getblocking = _getblocking_hook
    cls.timeout = property(_gettimeout_hook, doc="The socket's timeout (see gettimeout).")
    cls.dup = _dup_hook
    cls._real_close = _real_close_hook
    cls.bind = _bind_hook
    cls.connect = _connect_hook
    cls.connect_ex = _connect_ex_hook
    cls.shutdown = _shutdown_hook
    cls.__init__ = _init_hook
    _wrap_ssl_recv()


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
