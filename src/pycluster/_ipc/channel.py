"""Both ends of the IPC channel: a loop-driven one for the primary, a threaded one
for workers.

The primary serves many workers from one event loop, so its end never blocks: it
reads whatever is ready and queues what the kernel will not take yet. A worker may run
a blocking program on its main thread, so its end has a reader thread of its own and
writes with blocking calls under a lock.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import logging

from pycluster._ipc.fds import ChunkReader, ancillary_for
from pycluster._ipc.framing import (
    DEFAULT_MAX_PAYLOAD,
    Codec,
    Decoder,
    Frame,
    Kind,
    ProtocolError,
    check_size,
    close_fds,
    encode_header,
)


def _log() -> logging.Logger:
    # Imported when first needed: a worker's start-up does not pay for logging.
    import logging

    return logging.getLogger("pycluster")


READ_SIZE = 256 * 1024
#: Wake-ups without reading ahead after a read-ahead found nothing.
_GUESS_PAUSE = 16
#: Send buffer asked for on both ends of a channel.
SEND_BUFFER = 1 << 20
SMALL = 64 * 1024
#: Reads that draining an exited worker's channel may take: everything it wrote, but not
#: forever if a grandchild that inherited the channel keeps writing.
_EXHAUST_READS = 1 << 14
FrameHandler = Callable[[Frame], None]
CloseHandler = Callable[[BaseException | None], None]
SendCallback = Callable[[BaseException | None], None]


class ChannelClosedError(ConnectionError):
    """The IPC channel is closed; nothing more can be sent on it."""


class Reactor(Protocol):
    """What the primary's channel needs from the primary's event-loop binding."""

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None: ...
    def remove_reader(self, fd: int) -> None: ...
    def add_writer(self, fd: int, callback: Callable[[], None]) -> None: ...
    def remove_writer(self, fd: int) -> None: ...
    def post(self, callback: Callable[..., object], *args: object) -> None: ...


def _dup_all(fds: list[int]) -> list[int]:
    """Own private copies of descriptors, so the caller may close its objects at once."""
    out: list[int] = []
    try:
        for fd in fds:
            out.append(os.dup(fd))
    except OSError:
        close_fds(out)
        raise
    return out


def _grow_send_buffer(sock: socket.socket) -> None:
    """Let the kernel take a large message in one write (fewer wake-ups of both ends).

    A Unix stream socket's send buffer (about 200 KiB by default) bounds what one
    write passes; a 1 MiB message then costs each end several wake-ups. This only
    raises the ceiling (the kernel caps it at ``net.core.wmem_max``); nothing is
    allocated until data is in flight.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    except OSError:
        pass


class _Pending:
    """A frame, or what is left of it, waiting for the socket to take it.

    Kept as views of the header and the payload, never joined or re-sliced into new
    bytes: for a large message each copy would cost an allocation the size of it.
    """

    __slots__ = ("views", "fds", "callback")

    def __init__(
        self, parts: list[bytes], sent: int, fds: list[int], callback: SendCallback | None
    ) -> None:
        self.views: list[memoryview] = []
        self.fds = fds
        self.callback = callback
        for part in parts:
            if sent >= len(part):
                sent -= len(part)
            else:
                self.views.append(memoryview(part)[sent:])
                sent = 0

    def consume(self, sent: int) -> bool:
        """Drop ``sent`` bytes from the front; ``True`` once nothing is left."""
        views = self.views
        while views and sent >= len(views[0]):
            sent -= len(views.pop(0))
        if sent:
            views[0] = views[0][sent:]
        return not views


class LoopChannel:
    """The primary's end: non-blocking, driven by the primary's event loop."""

    def __init__(
        self,
        sock: socket.socket,
        reactor: Reactor,
        on_frame: FrameHandler,
        on_close: CloseHandler,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        name: str = "peer",
    ) -> None:
        sock.setblocking(False)
        _grow_send_buffer(sock)
        self._name = name
        self._sock = sock
        self._fd = sock.fileno()
        self._reactor = reactor
        self._on_frame = on_frame
        self._on_close = on_close
        self._max_payload = max_payload
        self._decoder = Decoder(max_payload)
        self._reader = ChunkReader(READ_SIZE)
        self._out: deque[_Pending] = deque()
        self._lock = threading.Lock()
        self._closed = False
        self._writing = False
        self._guess_pause = 0
        reactor.add_reader(self._fd, self._readable)

    @property
    def closed(self) -> bool:
        """Whether the channel has been closed (by either side)."""
        return self._closed

    def send(
        self,
        kind: Kind,
        codec: Codec,
        payload: bytes,
        fds: list[int] | None = None,
        callback: SendCallback | None = None,
    ) -> bool:
        """Queue a frame; ``False`` if the channel is closed. Descriptors are duplicated.

        A payload over the channel's limit raises ``ValueError`` and sends nothing.
        """
        if len(payload) > self._max_payload:
            check_size(len(payload), self._max_payload)
        if self._closed:
            if callback is not None:
                self._reactor.post(callback, ChannelClosedError("the IPC channel is closed"))
            return False
        owned = _dup_all(fds) if fds else []
        header = encode_header(kind, codec, len(payload), len(owned))
        # A small frame goes out as one buffer; a large one without joining the two.
        parts = [header + payload] if len(payload) < SMALL else [header, payload]
        sent = 0
        with self._lock:
            if not self._out and not owned and callback is None:
                # The common case: nothing queued, so write straight away.
                try:
                    if len(parts) == 1:
                        sent = self._sock.send(parts[0])
                    else:
                        sent = self._sock.sendmsg(parts)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError as exc:
                    self._reactor.post(self._fail, exc)
                    return True
                if sent == len(header) + len(payload):
                    return True
            self._out.append(_Pending(parts, sent, owned, callback))
            if len(self._out) == 1:
                self._flush_locked()
        return True

    def _flush_locked(self) -> None:
        while self._out and not self._closed:
            item = self._out[0]
            try:
                sent = self._sock.sendmsg(item.views, ancillary_for(item.fds))
            except (BlockingIOError, InterruptedError):
                self._wait_writable()
                return
            except OSError as exc:
                self._reactor.post(self._fail, exc)
                return
            if item.fds:
                close_fds(item.fds)  # the kernel holds its own references now
                item.fds = []
            if not item.consume(sent):
                self._wait_writable()
                return
            self._out.popleft()
            if item.callback is not None:
                self._reactor.post(item.callback, None)
        if self._writing:
            self._reactor.remove_writer(self._fd)
            self._writing = False

    def _wait_writable(self) -> None:
        if not self._writing:
            self._writing = True
            self._reactor.add_writer(self._fd, self._writable)

    def _writable(self) -> None:
        with self._lock:
            self._flush_locked()

    def _readable(self, exhaust: bool = False) -> None:
        # Bounded so one chatty worker cannot starve the others on the loop; unless
        # ``exhaust``: then read until the socket is empty (a read stops at each
        # frame that carries descriptors, so a short read does not mean empty).
        guessed = False  # whether this read only guesses that a reply came back
        for _ in range(_EXHAUST_READS if exhaust else 64):
            if self._closed:
                return
            try:
                data, fds = self._reader.read(self._sock)
            except (BlockingIOError, InterruptedError):
                if guessed:
                    # The worker answers from another CPU: stop guessing for a while
                    # rather than pay for a failed read on every message.
                    self._guess_pause = _GUESS_PAUSE
                return
            except ProtocolError as exc:
                self._protocol_error(exc)
                return
            except OSError as exc:
                self._fail(exc if exc.errno != errno.ECONNRESET else None)
                return
            if not data:
                close_fds(fds)
                self._fail(None)
                return
            short = len(data) < READ_SIZE
            try:
                frames = self._decoder.feed(data, fds)
            except ProtocolError as exc:
                self._protocol_error(exc)
                return
            for i, frame in enumerate(frames):
                if self._closed:
                    for rest in frames[i:]:
                        close_fds(rest.fds)
                    return
                self._on_frame(frame)
            guessed = False
            if short and not exhaust:
                if not frames:
                    return  # drained; the loop calls again when more comes
                if self._guess_pause:
                    self._guess_pause -= 1
                    return
                # After delivering frames, read once more before going back to the
                # loop: a listener that answered its worker has often got the reply
                # already (on one CPU, the worker runs as soon as it is written to),
                # and taking it now saves a loop iteration and a poll. The bound
                # above keeps the loop fair to other workers and timers.
                guessed = True

    def drain(self) -> None:
        """Read and deliver whatever the peer already wrote (used when it has exited)."""
        self._readable(exhaust=True)

    def _protocol_error(self, exc: ProtocolError) -> None:
        _log().error("IPC protocol error from %s, closing its channel: %s", self._name, exc)
        self._fail(exc)

    def _fail(self, exc: BaseException | None) -> None:
        if self._closed:
            return
        self.close()
        self._on_close(exc)

    def close(self) -> None:
        """Close this end now; queued frames are dropped and their callbacks told so."""
        if self._closed:
            return
        self._closed = True
        self._reactor.remove_reader(self._fd)
        self._reactor.remove_writer(self._fd)
        self._decoder.close()
        with self._lock:
            pending, self._out = self._out, deque()
        for item in pending:
            close_fds(item.fds)
            if item.callback is not None:
                self._reactor.post(item.callback, ChannelClosedError("the IPC channel closed"))
        self._sock.close()


class ThreadChannel:
    """A worker's end: blocking writes under a lock, a daemon thread that reads.

    The reader thread calls ``on_frame`` for each frame and ``on_close`` once, when
    the channel ends for any reason. It is a daemon so that the channel never keeps a
    worker alive after its program ends.
    """

    def __init__(
        self,
        sock: socket.socket,
        on_frame: FrameHandler,
        on_close: CloseHandler,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        sock.setblocking(True)
        _grow_send_buffer(sock)
        self._sock = sock
        self._on_frame = on_frame
        self._on_close = on_close
        self._max_payload = max_payload
        self._decoder = Decoder(max_payload)
        self._reader = ChunkReader(READ_SIZE)
        self._wlock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(
            target=self._read_loop, name="pycluster-channel", daemon=True
        )

    def start(self) -> None:
        """Start the reader thread."""
        self._thread.start()

    @property
    def closed(self) -> bool:
        """Whether the channel has been closed."""
        return self._closed

    @property
    def thread(self) -> threading.Thread:
        """The reader thread, on which internal messages and message listeners run."""
        return self._thread

    def send(self, kind: Kind, codec: Codec, payload: bytes, fds: list[int] | None = None) -> None:
        """Write one frame, blocking until the kernel has all of it.

        A payload over the channel's limit raises ``ValueError`` and sends nothing.
        """
        if len(payload) > self._max_payload:
            check_size(len(payload), self._max_payload)
        fds = fds or []
        header = encode_header(kind, codec, len(payload), len(fds))
        with self._wlock:
            if self._closed:
                raise ChannelClosedError("the IPC channel is closed")
            if not fds and len(payload) < SMALL:
                self._sock.sendall(header + payload)  # one cheap copy, one plain send
                return
            sent = self._sock.sendmsg([header, payload], ancillary_for(fds))
            if sent < len(header):
                # The descriptors went with the first call; the rest is plain bytes.
                self._sock.sendall(header[sent:])
                sent = len(header)
            if sent < len(header) + len(payload):
                self._sock.sendall(memoryview(payload)[sent - len(header) :])

    def _read_loop(self) -> None:
        error: BaseException | None = None
        try:
            while True:
                data, fds = self._reader.read(self._sock)
                if not data:
                    close_fds(fds)
                    break
                for frame in self._decoder.feed(data, fds):
                    self._on_frame(frame)
        except ProtocolError as exc:
            _log().error("IPC protocol error from the primary, closing the channel: %s", exc)
            error = exc
        except OSError as exc:
            if not self._closed and exc.errno not in (errno.ECONNRESET, errno.EBADF):
                error = exc
        finally:
            with self._wlock:
                self._closed = True
                self._decoder.close()
                try:
                    self._sock.close()
                except OSError:
                    pass
            self._on_close(error)

    def close(self) -> None:
        """Shut the channel down; the reader thread sees the end and reports it."""
        with self._wlock:
            if self._closed:
                return
            self._closed = True
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
