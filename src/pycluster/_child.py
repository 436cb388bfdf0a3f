"""The runtime of a worker process: its channel to the primary, its servers, disconnect.

It boots as early as possible (from ``pycluster_boot.pth`` at interpreter start, or
at ``import pycluster``), says ``online``, and runs a daemon thread that reads the
channel. That thread answers the primary's internal messages and runs the worker's
``'message'`` listeners, so it works under a blocking program as well as under
asyncio; asyncio programs may use ``cluster.worker.messages()`` instead.
"""

from __future__ import annotations

import os
import signal as _signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pycluster._ipc import serialization
from pycluster._ipc.channel import ChannelClosedError, ThreadChannel
from pycluster._ipc.fds import close_sent
from pycluster._ipc.framing import DEFAULT_MAX_PAYLOAD, Codec, Frame, Kind, ProtocolError, close_fds
from pycluster._ipc.messages import Act, Message, Requests, decode_internal, encode_internal
from pycluster._signals import signal_number
from pycluster._worker import Worker

if TYPE_CHECKING:
    import logging

    from pycluster._status import StatusPage


def _log() -> logging.Logger:
    # logging is imported when first needed: a worker comes online sooner without it.
    import logging

    return logging.getLogger("pycluster")


Closer = Callable[[], None]
# Enum members looked up on their class cost about 0.1 us each in Python 3.11.
_USER = Kind.USER
_INTERNAL = Kind.INTERNAL
_NO_FDS: list[int] = []  # never changed: shared by every message without a handle

ENV_ID = "PYCLUSTER_UNIQUE_ID"
ENV_CHANNEL = "PYCLUSTER_CHANNEL_FD"
ENV_SERIALIZATION = "PYCLUSTER_SERIALIZATION"
ENV_SLOT = "PYCLUSTER_WORKER_SLOT"
ENV_STATUS = "PYCLUSTER_STATUS_FD"
ENV_MAX_MESSAGE = "PYCLUSTER_MAX_MESSAGE_SIZE"


class ThisProcess:
    """``cluster.worker.process`` inside a worker: this process."""

    def __init__(self) -> None:
        self.pid = os.getpid()

    def __repr__(self) -> str:
        return f"<this process pid={self.pid}>"

    def kill(self, sig: int | str = "SIGTERM") -> None:
        """Send a signal to this process."""
        os.kill(self.pid, signal_number(sig))

    send_signal = kill


class ServerRegistry:
    """What ``worker.disconnect()`` must close: every server created through pycluster."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closers: dict[int, Closer] = {}
        self._stoppers: dict[int, Closer] = {}
        self._next = 0

    def add(self, closer: Closer) -> int:
        """Register how to close a server (blocking until it is closed); returns a token."""
        with self._lock:
            self._next += 1
            self._closers[self._next] = closer
            return self._next

    def discard(self, token: int) -> None:
        """The server closed by itself."""
        with self._lock:
            self._closers.pop(token, None)
            self._stoppers.pop(token, None)

    def set_stopper(self, token: int, stopper: Closer) -> None:
        """How a server stops taking connections at once, before it is closed."""
        with self._lock:
            if token in self._closers:
                self._stoppers[token] = stopper

    def stop_taking(self) -> None:
        """Every server stops taking connections now (the closing follows in the background)."""
        with self._lock:
            stoppers = list(self._stoppers.values())
        for stop in stoppers:
            stop()

    def close_one(self, token: int) -> None:
        """Close one server the way a disconnect would, in the background."""
        with self._lock:
            closer = self._closers.pop(token, None)
        if closer is not None:
            threading.Thread(target=closer, name="pycluster-close", daemon=True).start()

    def replace(self, token: int, closer: Closer) -> bool:
        """An integration (socketserver, asyncio) takes over closing a listener.

        ``False`` if a disconnect already closed it: the integration must not serve.
        """
        with self._lock:
            if token in self._closers:
                self._closers[token] = closer
                return True
            return False

    def close_all(self) -> None:
        """Close every registered server and wait until each is closed."""
        with self._lock:
            closers, self._closers = list(self._closers.values()), {}
            self._stoppers.clear()
        threads = [threading.Thread(target=c, daemon=True) for c in closers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


class ChildRuntime(serialization.LazyCodec):
    """The worker-side backend of ``cluster.worker``."""

    def __init__(
        self,
        worker_id: int,
        sock: socket.socket,
        codec: Codec,
        slot: int | None,
        max_message_size: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        self.codec = codec
        self.process = ThisProcess()
        self.requests = Requests()
        self.worker = Worker(worker_id, self, slot)
        self.channel = ThreadChannel(
            sock, self._on_frame, self._on_close, max_message_size, self._on_user, codec
        )
        super().__init__()
        self._disconnecting = False
        self._lock = threading.Lock()
        self._servers: ServerRegistry | None = None
        self.status: StatusPage | None = None

    @property
    def servers(self) -> ServerRegistry:
        """The pycluster servers this worker has open."""
        if self._servers is None:
            self._servers = ServerRegistry()
        return self._servers

    def start(self) -> None:
        """Tell the primary we are online and start reading the channel.

        A primary already gone (it ended before this worker booted) is what a channel
        closing later is: the worker ends at once, quietly, instead of running the
        program as an orphan (as a Node worker exits when its channel closes).
        """
        try:
            self.send_internal(Act.ONLINE)
        except OSError:
            _exit_now(0)
        self.channel.start()

    def make_codec(self) -> tuple[serialization.MessageEncode, serialization.MessageDecode]:
        """This worker's codec (what the primary sends is trusted: no allow-list)."""
        return serialization.message_codec(self.codec, None)

    # -- sending -----------------------------------------------------------------------
    def send(
        self,
        message: Any,
        handle: socket.socket | None,
        keep_open: bool,
        callback: Callable[[BaseException | None], None] | None,
    ) -> bool:
        payload = self.encode_message(message)
        if handle is None and callback is None:
            try:
                self.channel.send_user(payload)
            except OSError:  # ChannelClosedError included
                return False
            return True
        fds = [handle.fileno()] if handle is not None else None
        try:
            self.channel.send(_USER, self.codec, payload, fds)
        except (ChannelClosedError, OSError) as exc:
            if callback is not None:
                callback(
                    exc if isinstance(exc, ChannelClosedError) else ChannelClosedError(str(exc))
                )
            return False
        if handle is not None and not keep_open:
            close_sent(handle)
        if callback is not None:
            callback(None)
        return True

    def send_internal(self, act: Act, **fields: Any) -> None:
        """Send an internal message; raises ``ChannelClosedError`` if the channel is gone."""
        self.channel.send(Kind.INTERNAL, Codec.JSON, encode_internal(act, **fields))

    def request(self, act: Act, fds: list[int] | None = None, **fields: Any) -> Message:
        """Send an internal request and block until the primary replies."""
        if threading.current_thread() is self.channel.thread:
            raise RuntimeError(
                "this call waits for the primary and cannot run on the channel thread "
                "(inside a 'message' listener); call it from another thread"
            )
        seq, fut = self.requests.new()
        try:
            self.channel.send(
                Kind.INTERNAL, Codec.JSON, encode_internal(act, seq=seq, **fields), fds
            )
        except OSError as exc:
            self.requests.fail_all(exc)
            raise ChannelClosedError("the IPC channel to the primary is closed") from exc
        return fut.result()

    # -- receiving -----------------------------------------------------------------------
    def _on_frame(self, frame: Frame) -> None:
        if frame.kind is _INTERNAL:
            act, msg = decode_internal(frame.payload)
            if act is Act.REPLY:
                msg["_fds"] = frame.fds
                self.requests.resolve(msg)
            elif act is Act.DISCONNECT:
                close_fds(frame.fds)
                self.disconnect(primary_initiated=True)
            else:
                close_fds(frame.fds)
                raise ProtocolError(f"the primary may not send {act.value!r}")
            return
        try:
            self.worker._deliver(self._open, frame.payload, frame.codec, frame.fds)
        except Exception:
            # A failing listener is the program's bug: report it as an uncaught
            # exception in a thread would be, and keep the channel alive.
            sys.excepthook(*sys.exc_info())

    def _on_user(self, payload: bytes | bytearray) -> None:
        """A user message without a handle, in this worker's codec: the hot path.

        With listeners and nothing held or iterating, the message is decoded and
        emitted right here, under the delivery lock as :meth:`Worker._deliver` does;
        anything else takes that general path.
        """
        worker = self.worker
        try:
            with worker._deliver_lock:
                if worker._held or worker._iterators or not worker._events.get("message"):
                    worker._deliver(self._open, payload, self.codec, _NO_FDS)
                    return
                try:
                    message = self.decode_message(payload)
                except serialization.DecodeError as exc:
                    _log().error("dropped a message from the primary: %s", exc)
                    return
                worker.emit("message", message, None)
        except Exception:
            sys.excepthook(*sys.exc_info())

    def _open(
        self, payload: bytes | bytearray, codec: Codec, fds: list[int]
    ) -> tuple[Any, socket.socket | None] | None:
        """Decode a user message into (message, handle); ``None`` (logged) if it cannot be."""
        try:
            if codec is self.codec:
                message = self.decode_message(payload)
            else:
                message = serialization.decode(payload, codec, None)
        except serialization.DecodeError as exc:
            close_fds(fds)
            _log().error("dropped a message from the primary: %s", exc)
            return None
        if not fds:
            return message, None
        close_fds(fds[1:])
        return message, socket.socket(fileno=fds[0])

    def _on_close(self, error: BaseException | None) -> None:
        self.requests.fail_all(ChannelClosedError("the IPC channel to the primary closed"))
        if not self.worker.exited_after_disconnect:
            # The primary went away (or broke the protocol) without asking us to
            # disconnect: end now rather than run on as an orphan.
            _exit_now(0)
        self.worker.state = "disconnected"
        try:
            self.worker.emit("disconnect")
        except Exception:
            sys.excepthook(*sys.exc_info())
        finally:
            # Wake wait_disconnected() only now: a program that returns from it may
            # end at once, and its 'disconnect' listeners must have run by then.
            self.worker._mark_disconnected()

    # -- disconnect and kill -----------------------------------------------------------------
    def disconnect(self, primary_initiated: bool = False) -> None:
        """Close every server, wait for them, then close the channel (in the background)."""
        self.worker.exited_after_disconnect = True
        with self._lock:
            if self._disconnecting:
                return
            self._disconnecting = True
        if self._servers is not None:
            # Before this returns: a connection that comes after disconnect() is not
            # this worker's, even if closing the servers takes a moment.
            self._servers.stop_taking()
        threading.Thread(
            target=self._disconnect,
            args=(primary_initiated,),
            name="pycluster-disconnect",
            daemon=True,
        ).start()

    def _disconnect(self, primary_initiated: bool) -> None:
        if self._servers is not None:
            self._servers.close_all()
        if not primary_initiated:
            try:
                self.send_internal(Act.EXITED_AFTER_DISCONNECT)
            except OSError:
                pass
        self.channel.close()

    def kill(self, sig: int | str) -> None:
        signum = signal_number(sig)
        try:
            self.send_internal(Act.EXITED_AFTER_DISCONNECT)
        except OSError:
            pass
        self.channel.close()
        if threading.current_thread() is threading.main_thread():
            try:
                _signal.signal(signum, _signal.SIG_DFL)
            except (OSError, ValueError):
                pass  # SIGKILL and SIGSTOP cannot be caught: nothing to reset
        elif _signal.getsignal(signum) not in (_signal.SIG_DFL, None):
            _exit_now(128 + signum)  # a Python handler would turn the signal into an exception
        _flush_stdio()
        os.kill(os.getpid(), signum)
        _exit_now(128 + signum)  # the signal was blocked or ignored

    def is_connected(self) -> bool:
        return not self.channel.closed

    def heartbeat(self) -> None:
        if self.status is not None:
            self.status.beat()

    def ready(self) -> None:
        try:
            self.send_internal(Act.READY)
        except OSError:
            pass

    def is_dead(self) -> bool:
        return False


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass


def _exit_now(code: int) -> None:
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    _flush_stdio()
    os._exit(code)


_runtime: ChildRuntime | None = None
_boot_lock = threading.Lock()


def runtime() -> ChildRuntime | None:
    """This worker's runtime, or ``None`` in a process that is not a worker."""
    return _runtime


def boot() -> ChildRuntime | None:
    """Start the worker runtime if this process was forked by a pycluster primary."""
    global _runtime
    with _boot_lock:
        if _runtime is not None:
            return _runtime
        raw_id = os.environ.pop(ENV_ID, None)
        raw_fd = os.environ.pop(ENV_CHANNEL, None)
        raw_codec = os.environ.pop(ENV_SERIALIZATION, "json")
        raw_status = os.environ.pop(ENV_STATUS, None)
        raw_limit = os.environ.pop(ENV_MAX_MESSAGE, "")
        if os.environ.pop("PYCLUSTER_FAULTHANDLER", None):
            import faulthandler

            faulthandler.enable()  # a hung worker's SIGABRT prints where it was stuck
        if raw_id is None:
            return None
        if raw_fd is None:
            raise RuntimeError(
                f"{ENV_ID} is set but {ENV_CHANNEL} is not: not started by cluster.fork()"
            )
        fd = int(raw_fd)
        try:
            os.set_inheritable(fd, False)
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise RuntimeError(f"the IPC channel descriptor {fd} is not usable: {exc}") from exc
        slot_text = os.environ.get(ENV_SLOT)
        slot = int(slot_text) if slot_text and slot_text.isdigit() else None
        limit = int(raw_limit) if raw_limit.isdigit() else DEFAULT_MAX_PAYLOAD
        rt = ChildRuntime(int(raw_id), sock, serialization.codec_named(raw_codec), slot, limit)
        if raw_status is not None:
            from pycluster._status import StatusPage

            rt.status = StatusPage.open_fd(int(raw_status))
        _runtime = rt
    rt.start()
    return rt
