"""The primary's binding to an asyncio event loop.

The primary may be created before any loop runs (``fork()`` at module level, then
``run()``), inside a running loop (``await cluster.wait_closed()``), or in one loop
and then another. The reactor remembers readers, writers, timers and posted
callbacks, and installs them on whichever loop it is attached to, so nothing is lost
between loops. Every callback runs through :meth:`Reactor._run`, which hands an
exception to the primary instead of letting asyncio log and swallow it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any

Callback = Callable[..., object]


class Timer:
    """A cancellable delayed call that survives moving between loops."""

    __slots__ = ("deadline", "callback", "args", "handle", "cancelled")

    def __init__(self, deadline: float, callback: Callback, args: tuple[object, ...]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.args = args
        self.handle: asyncio.TimerHandle | None = None
        self.cancelled = False

    def cancel(self) -> None:
        """Stop the call from happening."""
        self.cancelled = True
        if self.handle is not None:
            self.handle.cancel()


class Reactor:
    """Readers, writers, timers and callbacks of the primary, on its current loop."""

    def __init__(
        self, on_error: Callable[[BaseException], None], on_tick: Callable[[], None]
    ) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        #: Whether any loop ever drove this reactor (it may be detached again since).
        self.driven = False
        self._thread: int | None = None
        self._readers: dict[int, Callable[[], None]] = {}
        self._writers: dict[int, Callable[[], None]] = {}
        self._timers: set[Timer] = set()
        self._pending: deque[tuple[Callback, tuple[object, ...]]] = deque()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lock = threading.Lock()
        self._on_error = on_error
        self._on_tick = on_tick
        self.inflight = 0

    # -- attaching --------------------------------------------------------------
    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Install everything on ``loop`` and run what was posted meanwhile."""
        if self.loop is loop:
            return
        self.detach()
        self.driven = True
        with self._lock:
            self.loop = loop
            self._thread = threading.get_ident()
            pending, self._pending = self._pending, deque()
        for fd, io_cb in self._readers.items():
            loop.add_reader(fd, self._run_io, io_cb)
        for fd, io_cb in self._writers.items():
            loop.add_writer(fd, self._run_io, io_cb)
        now = time.monotonic()
        for timer in self._timers:
            timer.handle = loop.call_later(max(0.0, timer.deadline - now), self._fire, timer)
        for cb, args in pending:
            loop.call_soon(self._run, cb, args)

    def detach(self) -> None:
        """Take everything off the current loop, keeping it for the next one."""
        loop = self.loop
        if loop is None:
            return
        for fd in self._readers:
            loop.remove_reader(fd)
        for fd in self._writers:
            loop.remove_writer(fd)
        for timer in self._timers:
            if timer.handle is not None:
                timer.handle.cancel()
                timer.handle = None
        with self._lock:
            self.loop = None
            self._thread = None

    @property
    def on_loop_thread(self) -> bool:
        """Whether the caller runs on the thread of the attached loop."""
        return self._thread == threading.get_ident()

    # -- scheduling ---------------------------------------------------------------
    def post(self, callback: Callback, *args: object) -> None:
        """Run ``callback(*args)`` soon on the loop; safe from any thread."""
        with self._lock:
            self.inflight += 1
            loop = self.loop
            if loop is None:
                self._pending.append((callback, args))
                return
        if self._thread == threading.get_ident():
            loop.call_soon(self._run, callback, args)
        else:
            loop.call_soon_threadsafe(self._run, callback, args)

    def call_later(self, delay: float, callback: Callback, *args: object) -> Timer:
        """Run ``callback(*args)`` after ``delay`` seconds."""
        timer = Timer(time.monotonic() + delay, callback, args)
        self._timers.add(timer)
        if self.loop is not None:
            timer.handle = self.loop.call_later(delay, self._fire, timer)
        return timer

    def _fire(self, timer: Timer) -> None:
        self._timers.discard(timer)
        if not timer.cancelled:
            self.inflight += 1
            self._run(timer.callback, timer.args)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a coroutine (a listener's) as a task; its exception goes to the primary."""
        if self.loop is None:
            self.post(self.spawn, coro)
            return
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._on_error(task.exception())  # type: ignore[arg-type]
        self._on_tick()

    @property
    def busy(self) -> bool:
        """Whether callbacks or listener tasks are still to run."""
        return self.inflight > 0 or bool(self._tasks)

    def _run(self, callback: Callback, args: tuple[object, ...]) -> None:
        try:
            callback(*args)
        except BaseException as exc:  # a listener's exception ends run(), as documented
            self._on_error(exc)
        finally:
            with self._lock:
                self.inflight = max(0, self.inflight - 1)
            self._on_tick()

    # -- descriptors ----------------------------------------------------------------
    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever ``fd`` is readable."""
        self._readers[fd] = callback
        if self.loop is not None:
            self.loop.add_reader(fd, self._run_io, callback)

    def remove_reader(self, fd: int) -> None:
        """Stop watching ``fd`` for reading."""
        if self._readers.pop(fd, None) is not None and self.loop is not None:
            self.loop.remove_reader(fd)

    def add_writer(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever ``fd`` is writable."""
        if fd in self._writers:
            return
        self._writers[fd] = callback
        if self.loop is not None:
            self.loop.add_writer(fd, self._run_io, callback)

    def remove_writer(self, fd: int) -> None:
        """Stop watching ``fd`` for writing."""
        if self._writers.pop(fd, None) is not None and self.loop is not None:
            self.loop.remove_writer(fd)

    def _run_io(self, callback: Callable[[], None]) -> None:
        # The hot path (every message, every accepted connection): no bookkeeping,
        # just the error routing every callback gets.
        try:
            callback()
        except BaseException as exc:
            self._on_error(exc)
        self._on_tick()


class Completion:
    """Something that finishes on the primary's loop: awaitable, or waited on by ``run``.

    ``await`` it inside a loop; outside one, the primary's own calls (``run()``,
    blocking ``reload()``) drive the loop until it is done.
    """

    def __init__(self) -> None:
        self.done = False
        self.error: BaseException | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._callbacks: list[Callable[[], None]] = []

    def finish(self, error: BaseException | None = None) -> None:
        """Mark finished and wake every waiter."""
        if self.done:
            return
        self.done, self.error = True, error
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        for cb in self._callbacks:
            cb()

    def add_done_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the loop) once finished."""
        if self.done:
            callback()
        else:
            self._callbacks.append(callback)

    def __await__(self) -> Generator[Any, None, None]:
        if not self.done:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            yield from fut
        if self.error is not None:
            raise self.error
