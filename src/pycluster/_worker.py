"""The Worker object, the same class in the primary and in a worker process."""

from __future__ import annotations

import os
import socket
import stat
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from pycluster._events import EventEmitter

if TYPE_CHECKING:
    import asyncio
    import socket


def _is_socket(handle: Any) -> bool:
    """A ``socket.socket``, or a stand-in for one (asyncio's ``TransportSocket``)."""
    if isinstance(handle, socket.socket):
        return True
    try:
        return stat.S_ISSOCK(os.fstat(handle.fileno()).st_mode)
    except (AttributeError, TypeError, ValueError, OSError):
        return False


class Address(NamedTuple):
    """Where a worker's server listens: ``address_type`` is 4, 6, -1, "udp4" or "udp6"."""

    address: str | None
    port: int | None
    address_type: int | str


SendCallback = Callable[[BaseException | None], None]
Opener = Callable[[], "tuple[Any, Any] | None"]


class Backend(Protocol):
    """What a Worker delegates to: the primary's view of it, or the worker's own runtime."""

    process: Any

    def send(
        self,
        message: Any,
        handle: socket.socket | None,
        keep_open: bool,
        callback: SendCallback | None,
    ) -> bool: ...
    def disconnect(self) -> None: ...
    def heartbeat(self) -> None: ...
    def ready(self) -> None: ...
    def kill(self, signal: int | str) -> None: ...
    def is_connected(self) -> bool: ...
    def is_dead(self) -> bool: ...


class Worker(EventEmitter):
    """A worker, as seen from the primary (``cluster.workers``) or from itself (``cluster.worker``).

    Users never construct it: ``cluster.fork()`` returns one in the primary, and the
    runtime makes ``cluster.worker`` in a worker process.
    """

    def __init__(self, id: int, backend: Backend, slot: int | None = None) -> None:
        super().__init__()
        self.id = id
        self.slot = slot
        self.state = "none"
        self.exited_after_disconnect: bool | None = None
        self._backend = backend
        # Messages that reached a worker before anyone listened for them.
        # Messages that reached a worker before anyone listened, still undecoded: an
        # "advanced" message may name a class the program has not defined yet.
        self._held: deque[Opener] = deque()
        self._iterators: list[_MessageIterator] = []
        self._deliver_lock = threading.RLock()
        self._disconnected = threading.Event()

    @property
    def process(self) -> Any:
        """The worker's process: a ``WorkerProcess`` in the primary, this process in a worker."""
        return self._backend.process

    def __repr__(self) -> str:
        pid = getattr(self.process, "pid", None)
        return f"<Worker id={self.id} pid={pid} state={self.state}>"

    def send(
        self,
        message: Any,
        handle: socket.socket | None = None,
        *,
        keep_open: bool = False,
        callback: SendCallback | None = None,
    ) -> bool:
        """Send a message (and optionally a socket) over the IPC channel.

        Returns ``False`` if the channel is closed (``callback`` gets the error); raises
        ``TypeError`` at once if the serialization cannot encode ``message`` or
        ``handle`` is not a socket.
        """
        if handle is not None and not _is_socket(handle):
            raise TypeError(
                f"a handle sent with a message must be a socket, not {type(handle).__name__}"
            )
        return self._backend.send(message, handle, keep_open, callback)

    def disconnect(self) -> Worker:
        """Close this worker's servers, let their connections finish, then close the channel."""
        self.exited_after_disconnect = True
        self._backend.disconnect()
        return self

    def kill(self, signal: int | str = "SIGTERM") -> None:
        """Close the channel and end the worker's process with ``signal``."""
        self.exited_after_disconnect = True
        self._backend.kill(signal)

    destroy = kill

    def heartbeat(self) -> None:
        """In a worker: tell the primary the serving loop is alive (see the ``timeout`` setting).

        pycluster's servers beat by themselves; a worker running other code calls this
        from its main loop. It costs one store to shared memory.
        """
        self._backend.heartbeat()

    def ready(self) -> None:
        """In a worker: ready to take over from a predecessor (ends its wait in ``reload()``)."""
        self._backend.ready()

    def is_connected(self) -> bool:
        """Whether the IPC channel to the primary is open."""
        return self._backend.is_connected()

    def is_dead(self) -> bool:
        """Whether the worker's process has ended."""
        return self._backend.is_dead()

    # -- worker side: receiving ------------------------------------------------------
    def messages(self) -> AsyncIterator[tuple[Any, Any]]:
        """``async for message, handle in cluster.worker.messages()``, ending at disconnect."""
        it = _MessageIterator(self)
        with self._deliver_lock:
            held, self._held = self._held, deque()
            for opener in held:
                item = opener()
                if item is not None:
                    it.push(item)
            if self._disconnected.is_set():
                it.finish()
            else:
                self._iterators.append(it)
        return it

    def wait_disconnected(self, timeout: float | None = None) -> bool:
        """Block until the channel to the primary has closed; ``False`` on timeout.

        A worker program that only answers messages calls this to stay alive, as a
        Node worker stays alive while it listens for messages.
        """
        return self._disconnected.wait(timeout)

    def _add_event_handler(self, event: str, k: Callable[..., Any], v: Callable[..., Any]) -> None:
        super()._add_event_handler(event, k, v)
        if event == "message":
            # Always under the lock, even when nothing seems held: the channel thread
            # may be holding a message at this moment, and it must reach this
            # listener before any later message does.
            with self._deliver_lock:
                held, self._held = self._held, deque()
                for opener in held:
                    item = opener()
                    if item is not None:
                        self.emit("message", *item)

    def _deliver(
        self,
        opener: Callable[[bytes | bytearray, Any, list[int]], tuple[Any, Any] | None],
        payload: bytes | bytearray,
        codec: Any,
        fds: list[int],
    ) -> None:
        """Hand a received message to the listeners and iterators, or hold it for them.

        ``opener(payload, codec, fds)`` decodes the message (``None`` if it cannot be
        decoded); it runs only once someone is there to receive the message. While
        earlier messages are held, a new one is held behind them, so that the first
        listener gets them all in order.
        """
        with self._deliver_lock:
            if self._held or (not self._iterators and not self._events.get("message")):
                self._held.append(lambda: opener(payload, codec, fds))
                return
            item = opener(payload, codec, fds)
            if item is None:
                return
            for it in self._iterators:
                it.push(item)
            self.emit("message", *item)

    def _mark_disconnected(self) -> None:
        with self._deliver_lock:
            self._disconnected.set()
            iterators, self._iterators = self._iterators, []
        for it in iterators:
            it.finish()


class _MessageIterator:
    """A loop-safe async iterator over a worker's messages, fed from the channel thread."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._items: deque[tuple[Any, Any]] = deque()
        self._done = False
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None

    def __aiter__(self) -> _MessageIterator:
        return self

    def push(self, item: tuple[Any, Any]) -> None:
        with self._lock:
            self._items.append(item)
            self._wake_locked()

    def finish(self) -> None:
        with self._lock:
            self._done = True
            self._wake_locked()

    def _wake_locked(self) -> None:
        waiter, loop = self._waiter, self._loop
        if waiter is not None and loop is not None:
            self._waiter = None
            loop.call_soon_threadsafe(_set_if_pending, waiter)

    async def __anext__(self) -> tuple[Any, Any]:
        while True:
            with self._lock:
                if self._items:
                    return self._items.popleft()
                if self._done:
                    raise StopAsyncIteration
                import asyncio  # here, so a worker that never iterates never imports it

                self._loop = asyncio.get_running_loop()
                self._waiter = self._loop.create_future()
                waiter = self._waiter
            await waiter

    async def aclose(self) -> None:
        """Stop receiving; messages already queued for this iterator are dropped."""
        with self._worker._deliver_lock:
            if self in self._worker._iterators:
                self._worker._iterators.remove(self)
        self.finish()


def _set_if_pending(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
