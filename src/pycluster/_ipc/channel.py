"""Both ends of the IPC channel: a loop-driven one for the primary, a threaded one
for workers.

The primary serves many workers from one event loop, so its end never blocks: it
reads whatever is ready and queues what the kernel will not take yet. A worker may run
a blocking program on its main thread, so its end has a reader thread of its own and
writes with blocking calls under a lock.

Both ends read with ``recvmsg_into`` into one reused buffer, always with room for
descriptors: any frame may carry some, and a plain ``recv`` would make the kernel drop
them. The hot path is a read that holds exactly one whole user frame in the channel's
codec without descriptors (a ping-pong's every read): its head word (see framing.py)
and length are checked with one ``unpack`` and the payload goes straight to
``on_user``, without the decoder, a ``Frame`` or a list. Everything else (frames split
over reads, several in one read, descriptors, internal messages, a length over the
limit) goes through the :class:`~pycluster._ipc.framing.Decoder`, and user frames it
returns reach ``on_user`` too, so a listener sees one order whichever path a read took.
Sending a user frame without descriptors (``send_user``) is one ``pack``, one
concatenation and one ``send``.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import logging

from pycluster._ipc.fds import (
    ANCILLARY_SIZE,
    CTRUNC,
    RECV_FLAGS,
    ancillary_for,
    fds_from_ancillary,
)
from pycluster._ipc.framing import (
    DEFAULT_MAX_PAYLOAD,
    HEADER_SIZE,
    WORDS,
    Codec,
    Decoder,
    Frame,
    Kind,
    ProtocolError,
    check_size,
    close_fds,
    encode_header,
    head_word,
)


def _log() -> logging.Logger:
    # Imported when first needed: a worker's start-up does not pay for logging.
    import logging

    return logging.getLogger("pycluster")


READ_SIZE = 256 * 1024
#: Wake-ups without reading ahead after a read-ahead found nothing.
_GUESS_PAUSE = 16
#: Most answered deliveries that go back to the loop without yielding after yields
#: that did not bring the reply (the worker runs on another CPU): 1 after the first
#: such yield, doubling with each one in a row.
_YIELD_PAUSE = 64
#: A yield that lasted longer than this gave the CPU to something other than the
#: worker that was answered (nanoseconds) ...
_SLOW_YIELD_NS = 250_000
#: ... and then this many wake-ups go without reading ahead.
_SLOW_YIELD_PAUSE = 256
#: Yields in one readiness callback before going back to the loop: a worker answered
#: from the same CPU keeps the exchange out of the loop, and other workers and timers
#: wait at most this many of its round trips.
_YIELDS_PER_WAKEUP = 16
#: How long a delivery that answered a worker on another CPU polls for the reply
#: before going back to the loop (nanoseconds): a reply usually comes within a few
#: tens of microseconds, and waking from the loop's poll costs more than that (on
#: this project's 2-CPU VM, small round trips split over two CPUs ran at half the rate
#: of a blocking read without it, see bench/ipc_wakeups.py).
_SPIN_NS = 50_000
#: Most answered deliveries that go back to the loop without polling after polls that
#: ended without the reply (a worker that answers slowly, or not at all): 1 after the
#: first, doubling with each one in a row.
_SPIN_PAUSE = 64
_sched_yield: Callable[[], None] | None = getattr(os, "sched_yield", None)
_monotonic_ns = time.monotonic_ns
#: Send buffer asked for on both ends of a channel.
SEND_BUFFER = 1 << 20
SMALL = 64 * 1024
#: A user message at least this large whose head arrives without all of it is read
#: straight into a buffer of its own size (see _LargeMessage).
LARGE = SMALL
_USER = Kind.USER
_pack_words = WORDS.pack
_unpack_words = WORDS.unpack_from
#: Reads that draining an exited worker's channel may take: everything it wrote, but not
#: forever if a grandchild that inherited the channel keeps writing.
_EXHAUST_READS = 1 << 14
FrameHandler = Callable[[Frame], None]
#: Receives the payload of a user frame in the channel's codec without descriptors
#: (a fresh ``bytearray`` on the hot path: one copy out of the read buffer).
UserHandler = Callable[[bytes | bytearray], None]
CloseHandler = Callable[[BaseException | None], None]
SendCallback = Callable[[BaseException | None], None]


class _LargeMessage:
    """A large user message read straight into a buffer of its size.

    Through the decoder, a large payload is copied twice more (into its buffer, then
    out as ``bytes``). The rest is read with room for descriptors, as every read is,
    and none may come with it: a frame's descriptors arrive with its first bytes.
    """

    __slots__ = ("payload", "got")

    def __init__(self, head: bytearray, nbytes: int, length: int) -> None:
        # ``head``'s first ``nbytes`` are what was read so far, the header included.
        self.payload = bytearray(length)
        self.got = nbytes - HEADER_SIZE
        with memoryview(self.payload) as view, memoryview(head) as first:
            view[: self.got] = first[HEADER_SIZE:nbytes]

    def read(self, sock: socket.socket) -> bool:
        """Read on until the payload is whole: ``True``; ``False`` at end of stream.

        A non-blocking socket with nothing more raises ``BlockingIOError`` (call again
        when it is readable); descriptors inside the message raise ``ProtocolError``.
        """
        with memoryview(self.payload) as view:
            while self.got < len(view):
                n, ancdata, _flags, _addr = sock.recvmsg_into(
                    [view[self.got :]], ANCILLARY_SIZE, RECV_FLAGS
                )
                if ancdata:
                    close_fds(fds_from_ancillary(ancdata))
                    raise ProtocolError("descriptors arrived in the middle of a frame")
                if not n:
                    return False
                self.got += n
        return True


class ChannelClosedError(ConnectionError):
    """The IPC channel is closed; nothing more can be sent on it."""


class Reactor(Protocol):
    """What the primary's channel needs from the primary's event-loop binding."""

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None: ...
    def remove_reader(self, fd: int) -> None: ...
    def add_writer(self, fd: int, callback: Callable[[], None]) -> None: ...
    def remove_writer(self, fd: int) -> None: ...
    def post(self, callback: Callable[..., object], *args: object) -> None: ...


def _no_user(payload: bytes | bytearray) -> None:
    raise AssertionError("no user handler: the fast path is off")  # never reached


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
        on_user: UserHandler | None = None,
        codec: Codec = Codec.JSON,
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
        self._partial = False  # whether the decoder holds part of a frame
        # A large user message being read over several wake-ups, if any.
        self._large: _LargeMessage | None = None
        self._buf = bytearray(READ_SIZE)
        self._bufs = [memoryview(self._buf)]
        self._codec = codec
        self._word = head_word(_USER, codec)
        # Frames that on_user takes: user frames in this codec, without descriptors
        # (-1 matches no head word: every frame then goes to on_frame).
        self._on_user = on_user
        self._deliver_user: UserHandler = on_user or _no_user
        self._user_word = self._word if on_user is not None else -1
        self._out: deque[_Pending] = deque()
        self._lock = threading.Lock()
        self._closed = False
        self._writing = False
        self._guess_pause = 0
        # User messages sent on this channel: tells _readable whether a listener
        # answered the worker while its messages were being delivered.
        self._user_sends = 0
        self._yield_pause = 0
        self._yield_backoff = 0
        self._spin_pause = 0
        self._spin_backoff = 0
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
        if kind is _USER:
            self._user_sends += 1
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
            self._queue_locked(_Pending(parts, sent, owned, callback))
        return True

    def send_user(self, payload: bytes) -> bool:
        """``send(USER, codec, payload)`` without descriptors or callback: the hot path.

        One buffer, one ``send``: the header comes from the precomputed head word.
        """
        size = len(payload)
        if size >= SMALL or size > self._max_payload or self._closed:
            return self.send(_USER, self._codec, payload)
        data = _pack_words(self._word, size) + payload
        sent = 0
        self._user_sends += 1
        with self._lock:
            if not self._out:
                try:
                    sent = self._sock.send(data)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError as exc:
                    self._reactor.post(self._fail, exc)
                    return True
                if sent == len(data):
                    return True
            self._queue_locked(_Pending([data], sent, [], None))
        return True

    def _queue_locked(self, item: _Pending) -> None:
        # What the socket did not take at once waits, and goes out in order.
        self._out.append(item)
        if len(self._out) == 1:
            self._flush_locked()

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
        yielded = False  # whether the CPU was yielded before that guess
        sock = self._sock
        bufs = self._bufs
        buf = self._buf
        reads = _EXHAUST_READS if exhaust else 64
        user_sends = self._user_sends
        yields = _YIELDS_PER_WAKEUP
        spin_until = 0  # polling for a reply from another CPU until then (monotonic ns)
        if self._large is not None and not self._read_large():
            return  # more of it later (or the channel ended)
        while reads:  # (a range object would cost more than the one or two reads it counts)
            reads -= 1
            if self._closed:
                return
            try:
                nbytes, ancdata, flags, _addr = sock.recvmsg_into(bufs, ANCILLARY_SIZE, RECV_FLAGS)
            except (BlockingIOError, InterruptedError):
                if spin_until:
                    if _monotonic_ns() < spin_until:
                        # Yield between polls: should the worker share our CPU after
                        # all, it gets to run and reply. A poll is not a read of the
                        # budget above (the time bounds it).
                        _sched_yield()  # type: ignore[misc]
                        reads += 1
                        continue
                    # No reply in time: poll less often, longer each time in a row.
                    self._spin_backoff = min(2 * self._spin_backoff or 1, _SPIN_PAUSE)
                    self._spin_pause = self._spin_backoff
                    return
                if yielded:
                    # The worker answers from another CPU (or was slow this time):
                    # back to the loop without yielding for a while, longer each
                    # time in a row.
                    self._yield_backoff = min(2 * self._yield_backoff or 1, _YIELD_PAUSE)
                    self._yield_pause = self._yield_backoff
                elif guessed:
                    # The worker answers from another CPU: stop guessing for a while
                    # rather than pay for a failed read on every message.
                    self._guess_pause = _GUESS_PAUSE
                return
            except OSError as exc:
                self._fail(exc if exc.errno != errno.ECONNRESET else None)
                return
            if spin_until:
                self._spin_backoff = 0  # the poll brought the reply
                spin_until = 0
            if yielded:
                self._yield_backoff = 0  # the yield brought the reply
                yielded = False
            # The common case, taken without the decoder: the chunk is exactly one
            # whole user frame in our codec, without descriptors (the head word
            # says so: magic, version, kind, codec, no flags, no descriptors).
            if nbytes >= HEADER_SIZE and not ancdata and not self._partial:
                word, length = _unpack_words(buf, 0)
                if (
                    word == self._user_word
                    and nbytes == HEADER_SIZE + length
                    and length <= self._max_payload
                    and not flags & CTRUNC
                ):
                    self._deliver_user(buf[HEADER_SIZE:nbytes])
                    delivered = True
                elif (
                    word == self._user_word
                    and LARGE <= length <= self._max_payload
                    and nbytes < HEADER_SIZE + length
                    and not flags & CTRUNC
                ):
                    # The head of a large message: the rest goes straight into a
                    # buffer of its size, over as many wake-ups as it takes.
                    self._large = _LargeMessage(buf, nbytes, length)
                    if not self._read_large():
                        return
                    delivered = True
                else:
                    delivered = self._read_general(nbytes, ancdata, flags)
            else:
                if not nbytes:
                    close_fds(fds_from_ancillary(ancdata))
                    self._fail(None)
                    return
                delivered = self._read_general(nbytes, ancdata, flags)
            guessed = False
            if nbytes < READ_SIZE and not exhaust:
                if not delivered:
                    return  # drained; the loop calls again when more comes
                if self._guess_pause:
                    self._guess_pause -= 1
                    return
                # After delivering frames, read once more before going back to the
                # loop: a listener that answered its worker has often got the reply
                # already (on one CPU, the worker runs as soon as it is written to),
                # and taking it now saves a loop iteration and a poll. The bound
                # above keeps the loop fair to other workers and timers.
                if self._user_sends != user_sends and _sched_yield is not None:
                    # A listener answered this worker. If the worker shares our CPU
                    # it needs the CPU to reply: yielding lets it run now, so the
                    # read below finds the reply instead of this loop polling,
                    # sleeping and being woken for it (on one CPU that cost about
                    # 15 % of a small round trip).
                    if not yields:
                        return  # other workers and timers are due their turn
                    if self._yield_pause:
                        # The worker answers from another CPU lately: a yield does
                        # not bring its reply, but polling for a moment usually does,
                        # for less than a wake-up from the loop's poll would cost.
                        self._yield_pause -= 1
                        if self._spin_pause:
                            self._spin_pause -= 1
                            return  # polls missed lately: the reply wakes the loop
                        yields -= 1
                        spin_until = _monotonic_ns() + _SPIN_NS
                        user_sends = self._user_sends
                        continue
                    yields -= 1
                    started = _monotonic_ns()
                    _sched_yield()
                    if _monotonic_ns() - started > _SLOW_YIELD_NS:
                        # Some other program ran meanwhile: do not hand it our
                        # turn on every message.
                        self._guess_pause = _SLOW_YIELD_PAUSE
                        return
                    yielded = True
                    user_sends = self._user_sends
                guessed = True

    def _read_large(self) -> bool:
        """Read on into the large message in progress; ``True`` once it is delivered.

        ``False`` when the socket has nothing more for now (the loop calls again) or
        the channel ended.
        """
        large = self._large
        assert large is not None
        try:
            whole = large.read(self._sock)
        except (BlockingIOError, InterruptedError):
            return False
        except ProtocolError as exc:
            self._large = None
            self._protocol_error(exc)
            return False
        except OSError as exc:
            self._large = None
            self._fail(exc if exc.errno != errno.ECONNRESET else None)
            return False
        self._large = None
        if not whole:
            self._fail(None)
            return False
        self._deliver_user(large.payload)
        return True

    def _read_general(self, nbytes: int, ancdata: list[tuple[int, int, bytes]], flags: int) -> bool:
        """Feed a chunk to the decoder and deliver its frames; whether there were any."""
        fds = fds_from_ancillary(ancdata) if ancdata else []
        try:
            if flags & CTRUNC:
                close_fds(fds)
                raise ProtocolError("descriptors were truncated: more than a frame may carry")
            frames = self._decoder.feed(self._bufs[0][:nbytes], fds)
        except ProtocolError as exc:
            self._protocol_error(exc)
            return False
        self._partial = self._decoder.pending
        on_user = self._on_user
        for i, frame in enumerate(frames):
            if self._closed:
                for rest in frames[i:]:
                    close_fds(rest.fds)
                return True
            if (
                on_user is not None
                and frame.kind is _USER
                and frame.codec is self._codec
                and not frame.fds
            ):
                on_user(frame.payload)
            else:
                self._on_frame(frame)
        return bool(frames)

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
        self._large = None
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
        on_user: UserHandler | None = None,
        codec: Codec = Codec.JSON,
    ) -> None:
        sock.setblocking(True)
        _grow_send_buffer(sock)
        self._sock = sock
        self._on_frame = on_frame
        self._on_close = on_close
        self._max_payload = max_payload
        self._decoder = Decoder(max_payload)
        self._codec = codec
        self._word = head_word(_USER, codec)
        self._on_user = on_user
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

    def send_user(self, payload: bytes) -> None:
        """``send(USER, codec, payload)`` without descriptors: the hot path."""
        size = len(payload)
        if size >= SMALL or size > self._max_payload:
            self.send(_USER, self._codec, payload)
            return
        data = _pack_words(self._word, size) + payload
        with self._wlock:
            if self._closed:
                raise ChannelClosedError("the IPC channel is closed")
            self._sock.sendall(data)

    def _read_loop(self) -> None:
        error: BaseException | None = None
        sock = self._sock
        buf = bytearray(READ_SIZE)
        bufs = [memoryview(buf)]
        decoder = self._decoder
        on_frame = self._on_frame
        on_user = self._on_user
        deliver_user = on_user or _no_user
        codec = self._codec
        # -1 matches no head word: without on_user, every frame goes to on_frame.
        user_word = self._word if on_user is not None else -1
        limit = self._max_payload
        partial = False  # whether the decoder holds part of a frame
        try:
            while True:
                nbytes, ancdata, flags, _addr = sock.recvmsg_into(bufs, ANCILLARY_SIZE, RECV_FLAGS)
                # The common case, without the decoder: the chunk is exactly one whole
                # user frame in our codec, without descriptors.
                if nbytes >= HEADER_SIZE and not ancdata and not partial:
                    word, length = _unpack_words(buf, 0)
                    if word == user_word and length <= limit and not flags & CTRUNC:
                        if nbytes == HEADER_SIZE + length:
                            deliver_user(buf[HEADER_SIZE:nbytes])
                            continue
                        if nbytes < HEADER_SIZE + length and length >= LARGE:
                            # The head of a large message: the rest is read straight
                            # into a buffer of its size, not copied through the decoder.
                            large = _LargeMessage(buf, nbytes, length)
                            if not large.read(sock):
                                break  # the primary ended in the middle of it
                            deliver_user(large.payload)
                            continue
                fds = fds_from_ancillary(ancdata) if ancdata else []
                if flags & CTRUNC:
                    close_fds(fds)
                    raise ProtocolError("descriptors were truncated: more than a frame may carry")
                if not nbytes:
                    close_fds(fds)
                    break
                frames = decoder.feed(bufs[0][:nbytes], fds)
                partial = decoder.pending
                for frame in frames:
                    if (
                        on_user is not None
                        and frame.kind is _USER
                        and frame.codec is codec
                        and not frame.fds
                    ):
                        on_user(frame.payload)
                    else:
                        on_frame(frame)
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
