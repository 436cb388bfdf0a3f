"""The primary: forks workers, tracks their lifecycle, dispatches their messages.

Everything here runs on the primary's event loop thread (see ``_reactor``). The
lifecycle of a worker, as the primary sees it::

    fork -> online -> listening -> disconnect (channel closed) / exit (process reaped)

``disconnect`` and ``exit`` may come in either order; the worker leaves
``cluster.workers`` once both have happened, before the later event is emitted.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from pycluster import _settings
from pycluster._events import EventEmitter
from pycluster._ipc import serialization
from pycluster._ipc.channel import ChannelClosedError, LoopChannel
from pycluster._ipc.fds import close_sent
from pycluster._ipc.framing import Codec, Frame, Kind, ProtocolError, close_fds
from pycluster._ipc.messages import Act, Message, decode_internal, encode_internal
from pycluster._process import WorkerProcess, spawn
from pycluster._reactor import Completion, Reactor
from pycluster._scheduling.round_robin import DEFAULT_WINDOW
from pycluster._signals import signal_number
from pycluster._status import StatusPage
from pycluster._worker import Address, Worker

if TYPE_CHECKING:
    from pycluster._servers import ServerTable
    from pycluster._supervisor import Supervisor

log = logging.getLogger("pycluster")

SCHED_NONE = 1
SCHED_RR = 2
POLICY_NAMES = {"rr": SCHED_RR, "none": SCHED_NONE}
# An enum member looked up on its class costs about 0.1 us in Python 3.11 (per message).
_USER = Kind.USER


class PrimaryBackend(serialization.LazyCodec):
    """The primary's side of one worker: its process and its end of the channel."""

    def __init__(self, primary: Primary, codec: Codec) -> None:
        self.primary = primary
        self.codec = codec
        super().__init__()
        self.process: WorkerProcess | None = None
        self.channel: LoopChannel | None = None
        self.worker: Worker | None = None
        self.status: StatusPage | None = None
        self.disconnect_emitted = False
        #: The channel socket's identity, for fd=N refusals.
        self.identity: tuple[int, int] | None = None

    def send(
        self,
        message: Any,
        handle: socket.socket | None,
        keep_open: bool,
        callback: Callable[[BaseException | None], None] | None,
    ) -> bool:
        payload = self.encode_message(message)
        channel = self.channel
        if handle is None and callback is None and channel is not None:
            return channel.send_user(payload)  # False once the channel is closed
        if channel is None or channel.closed:
            if callback is not None:
                self.primary.reactor.post(callback, ChannelClosedError("the IPC channel is closed"))
            return False
        fds = [handle.fileno()] if handle is not None else None
        sent = channel.send(_USER, self.codec, payload, fds, callback)
        if sent and handle is not None and not keep_open:
            close_sent(handle)
        return sent

    def make_codec(self) -> tuple[serialization.MessageEncode, serialization.MessageDecode]:
        """The worker's codec, built once for all workers that use it."""
        return self.primary.message_codec(self.codec)

    def send_internal(self, act: Act, **fields: Any) -> bool:
        channel = self.channel
        if channel is None:
            return False
        return channel.send(Kind.INTERNAL, Codec.JSON, encode_internal(act, **fields))

    def disconnect(self) -> None:
        worker = self.worker
        assert worker is not None
        self.primary.on_worker_disconnect_requested(worker)
        self.send_internal(Act.DISCONNECT)

    def kill(self, sig: int | str) -> None:
        signum = signal_number(sig)
        worker = self.worker
        assert worker is not None
        self.primary.on_worker_disconnect_requested(worker)
        # Signal first: a worker whose channel closes ends itself with status 0, and
        # that must never win the race against the signal the caller asked for.
        if self.process is not None:
            self.process.send_signal(signum)
        if self.channel is not None and not self.channel.closed:
            self.channel.close()
            self.primary.reactor.post(self.primary.on_channel_closed, worker, None)

    def is_connected(self) -> bool:
        return self.channel is not None and not self.channel.closed

    def heartbeat(self) -> None:
        raise RuntimeError(
            "heartbeat() is called by a worker on cluster.worker, not in the primary"
        )

    def ready(self) -> None:
        raise RuntimeError("ready() is called by a worker on cluster.worker, not in the primary")

    def is_dead(self) -> bool:
        return self.process is not None and self.process.returncode is not None


class Primary:
    """State and behaviour of the cluster in the primary process."""

    def __init__(self, emitter: EventEmitter, policy_source: Callable[[], int | None]) -> None:
        self.emitter = emitter
        self.reactor = Reactor(self._on_listener_error, self._tick)
        atexit.register(self._warn_if_abandoned)
        emitter._coroutine_runner = self.reactor.spawn
        self._policy_source = policy_source
        self.policy: int | None = None
        self._settings: dict[str, Any] = {}
        self.settings_view: MappingProxyType[str, Any] = MappingProxyType(self._settings)
        self.workers: dict[int, Worker] = {}
        self._next_id = 1
        self.allow = serialization.AllowList()
        self._codecs: dict[Codec, tuple[serialization.MessageEncode, serialization.MessageDecode]]
        self._codecs = {}
        self._errors: list[BaseException] = []
        self._wakeup: asyncio.Future[None] | None = None
        self._until: Completion | None = None
        self._servers: ServerTable | None = None
        #: Sockets pycluster opened (channels, control socket): (st_dev, st_ino).
        self._own: set[tuple[int, int]] = set()
        self.starting = 0  # replacements scheduled but not forked yet
        self._shutting_down: Completion | None = None
        from pycluster._supervisor import Supervisor

        self.supervisor: Supervisor | None = Supervisor(self)

    # -- settings -------------------------------------------------------------------
    def freeze_policy(self) -> int:
        """Fix the scheduling policy (first ``fork()`` or ``setup_primary()``)."""
        if self.policy is None:
            self.policy = self._policy_source() or SCHED_RR
        return self.policy

    def setup(self, values: dict[str, Any]) -> None:
        """``setup_primary()``: merge validated settings, emit ``'setup'`` later."""
        checked = _settings.validate(values)
        self.freeze_policy()
        if not self._settings:
            self._settings.update(_settings.defaults())
        self._settings.update(checked)
        snapshot = MappingProxyType(dict(self._settings))
        self._attach_if_running()
        self.reactor.post(self.emitter.emit, "setup", snapshot)
        if self.supervisor is not None:
            self.supervisor.on_setup()

    @property
    def servers(self) -> ServerTable:
        """The listening sockets this primary shares with its workers."""
        if self._servers is None:
            from pycluster._servers import ServerTable

            self._servers = ServerTable(
                self.reactor,
                self.freeze_policy,
                self._may_restart,
                lambda: int(self._settings.get("handoff_window", DEFAULT_WINDOW)),
                self._own.__contains__,
                lambda: bool(self._settings.get("handoff_batch_scheduling", True)),
            )
        return self._servers

    def message_codec(
        self, codec: Codec
    ) -> tuple[serialization.MessageEncode, serialization.MessageDecode]:
        """The encoding and decoding functions of ``codec``, built once for all workers."""
        pair = self._codecs.get(codec)
        if pair is None:
            pair = self._codecs[codec] = serialization.message_codec(codec, self.allow)
        return pair

    def own_socket(self, sock: socket.socket | int) -> None:
        """Mark a socket as pycluster's own: a worker's ``fd=N`` never obtains it."""
        fd = sock if isinstance(sock, int) else sock.fileno()
        st = os.fstat(fd)
        self._own.add((st.st_dev, st.st_ino))

    def _may_restart(self) -> bool:
        return self.supervisor is not None and self.supervisor.may_restart()

    # -- forking ----------------------------------------------------------------------
    def fork(self, env: dict[str, Any] | None = None, *, slot: int | None = None) -> Worker:
        """Start a worker process running the configured program."""
        if not self._settings:
            self.setup({})
        self._attach_if_running()
        s = self._settings
        worker_id = self._next_id
        self._next_id += 1
        if slot is None:
            used: set[int | None] = {w.slot for w in self.workers.values()}
            if self.supervisor is not None:
                used |= self.supervisor.reserved_slots()
            slot = next(i for i in range(len(used) + 1) if i not in used)
        codec = serialization.codec_named(s["serialization"])
        backend = PrimaryBackend(self, codec)
        worker = Worker(worker_id, backend, slot)
        worker._coroutine_runner = self.reactor.spawn
        backend.worker = worker
        self.workers[worker_id] = worker

        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        st = os.fstat(parent_sock.fileno())
        backend.identity = (st.st_dev, st.st_ino)
        self._own.add(backend.identity)  # never handed out by a worker's fd=N
        child_env = dict(os.environ)
        if env:
            child_env.update({str(k): str(v) for k, v in env.items() if v is not None})
        child_env.update(
            PYCLUSTER_UNIQUE_ID=str(worker_id),
            PYCLUSTER_CHANNEL_FD=str(child_sock.fileno()),
            PYCLUSTER_SERIALIZATION=s["serialization"],
            PYCLUSTER_WORKER_SLOT=str(slot),
            PYCLUSTER_MAX_MESSAGE_SIZE=str(s["max_message_size"]),
        )
        status = StatusPage.create()
        backend.status = status
        child_env["PYCLUSTER_STATUS_FD"] = str(status.fd)
        if self.supervisor is not None:
            self.supervisor.prepare_env(worker, child_env)
        argv = [s["executable"], *s["exec_argv"], *_settings.split_exec(s["exec"]), *s["args"]]
        if s["stdio"] is not None:
            stdio = s["stdio"]
        elif s["silent"]:
            stdio = ("inherit", "pipe", "pipe")
        else:
            stdio = ("inherit", "inherit", "inherit")
        extra_fds = self.supervisor.pass_fds(worker) if self.supervisor is not None else ()
        proc, error = spawn(
            argv,
            env=child_env,
            cwd=s["cwd"],
            pass_fds=(child_sock.fileno(), status.fd, *extra_fds),
            stdio=stdio,
            uid=s["uid"],
            gid=s["gid"],
            reactor=self.reactor,
            on_exit=lambda code, sig: self.on_exit(worker, code, sig),
        )
        child_sock.close()
        backend.process = proc
        self.reactor.post(self.emitter.emit, "fork", worker)
        if error is not None:
            parent_sock.close()
            self.reactor.post(self._spawn_failed, worker, error)
            return worker
        backend.channel = LoopChannel(
            parent_sock,
            self.reactor,
            functools.partial(self._on_frame, worker),  # one Python frame less per message
            lambda exc: self.on_channel_closed(worker, exc),
            max_payload=int(s["max_message_size"]),
            name=f"worker {worker_id} (pid {proc.pid})",
            on_user=functools.partial(self._on_user_payload, worker, backend),
            codec=codec,
        )
        if self.supervisor is not None:
            self.supervisor.on_fork(worker)
        return worker

    def _spawn_failed(self, worker: Worker, error: BaseException) -> None:
        log.error("worker %d could not start: %s", worker.id, error)
        if worker.listeners("error"):
            worker.emit("error", error)
        self.on_channel_closed(worker, None)
        code = worker.process.returncode
        self.on_exit(worker, code, None)

    # -- messages from workers ------------------------------------------------------------
    def _on_frame(self, worker: Worker, frame: Frame) -> None:
        if frame.kind is _USER:
            self._on_user_message(worker, frame)
            return
        try:
            act, msg = decode_internal(frame.payload)
            handler = self._dispatch.get(act)
            if handler is None:
                raise ProtocolError(f"a worker may not send {act.value!r}")
        except ProtocolError as exc:
            close_fds(frame.fds)
            self._protocol_error(worker, exc)
            return
        fds = frame.fds
        if fds and act is not Act.QUERY_SERVER:
            close_fds(fds)  # no other request carries descriptors: never leak them
            fds = []
        handler(self, worker, msg, fds)

    def _protocol_error(self, worker: Worker, exc: ProtocolError) -> None:
        log.error("worker %d: IPC protocol error, closing its channel: %s", worker.id, exc)
        backend: PrimaryBackend = worker._backend  # type: ignore[assignment]
        if backend.channel is not None and not backend.channel.closed:
            backend.channel.close()
            self.on_channel_closed(worker, exc)

    def _on_user_payload(
        self, worker: Worker, backend: PrimaryBackend, payload: bytes | bytearray
    ) -> None:
        """A user message without a handle, in the worker's codec: the hot path."""
        try:
            message = backend.decode_message(payload)
        except serialization.DecodeError as exc:
            log.error("worker %d: dropped a message: %s", worker.id, exc)
            if worker.listeners("error"):
                worker.emit("error", exc)
            return
        emitter = self.emitter
        if emitter._events.get("message"):  # (most programs listen on the worker only)
            emitter.emit("message", worker, message, None)
        worker.emit("message", message, None)

    def _on_user_message(self, worker: Worker, frame: Frame) -> None:
        try:
            message = serialization.decode(frame.payload, frame.codec, self.allow)
        except serialization.DecodeError as exc:
            close_fds(frame.fds)
            log.error("worker %d: dropped a message: %s", worker.id, exc)
            if worker.listeners("error"):
                worker.emit("error", exc)
            return
        try:
            handle = _socket_from_fds(frame.fds) if frame.fds else None
        except OSError as exc:
            log.error(
                "worker %d: dropped a message whose handle is not a socket: %s", worker.id, exc
            )
            if worker.listeners("error"):
                worker.emit("error", exc)
            return
        self.emitter.emit("message", worker, message, handle)
        worker.emit("message", message, handle)

    def _on_online(self, worker: Worker, msg: Message, fds: list[int]) -> None:
        worker.state = "online"
        worker.emit("online")
        self.emitter.emit("online", worker)

    def _on_listening(self, worker: Worker, msg: Message, fds: list[int]) -> None:
        address = Address(msg.get("address"), msg.get("port"), msg.get("addressType", 4))
        if self._servers is not None and msg.get("handle") is not None:
            self._servers.listening(worker, msg)
        worker.state = "listening"
        worker.emit("listening", address)
        self.emitter.emit("listening", worker, address)

    def _on_exited_after_disconnect(self, worker: Worker, msg: Message, fds: list[int]) -> None:
        worker.exited_after_disconnect = True
        self.on_worker_disconnect_requested(worker)

    def _on_query_server(self, worker: Worker, msg: Message, fds: list[int]) -> None:
        self.servers.query(worker, msg, fds)

    def _on_close(self, worker: Worker, msg: Message, fds: list[int]) -> None:
        self.servers.worker_closed(worker, msg)

    def _on_ready(self, worker: Worker, msg: Message, fds: list[int]) -> None:
        worker._ready = True  # type: ignore[attr-defined]
        worker.emit("ready")

    _dispatch: dict[Act, Callable[[Primary, Worker, Message, list[int]], None]] = {
        Act.ONLINE: _on_online,
        Act.LISTENING: _on_listening,
        Act.EXITED_AFTER_DISCONNECT: _on_exited_after_disconnect,
        Act.QUERY_SERVER: _on_query_server,
        Act.CLOSE: _on_close,
        Act.READY: _on_ready,
    }

    # -- lifecycle ------------------------------------------------------------------------
    def on_worker_disconnect_requested(self, worker: Worker) -> None:
        """No new connection goes to a worker once its disconnect was asked for."""
        if self._servers is not None:
            self._servers.remove_worker(worker)

    def on_channel_closed(self, worker: Worker, exc: BaseException | None) -> None:
        """The channel to ``worker`` ended: emit ``'disconnect'`` once."""
        backend: PrimaryBackend = worker._backend  # type: ignore[assignment]
        if backend.disconnect_emitted:
            return
        backend.disconnect_emitted = True
        if self._servers is not None:
            self._servers.remove_worker(worker)
        if worker.is_dead():
            self._remove(worker)
        else:
            worker.state = "disconnected"
        worker.exited_after_disconnect = bool(worker.exited_after_disconnect)
        worker._mark_disconnected()
        worker.emit("disconnect")
        self.emitter.emit("disconnect", worker)

    def on_exit(self, worker: Worker, code: int | None, sig: str | None) -> None:
        """The worker's process was reaped: deliver what it wrote, then emit ``'exit'``."""
        backend: PrimaryBackend = worker._backend  # type: ignore[assignment]
        channel = backend.channel
        if channel is not None and not channel.closed:
            channel.drain()  # messages written just before exiting come before 'exit'
            if not channel.closed:
                channel.close()  # a grandchild kept the channel open; the worker is gone
                self.on_channel_closed(worker, None)
        if not worker.is_connected():
            self._remove(worker)
        worker.exited_after_disconnect = bool(worker.exited_after_disconnect)
        worker.state = "dead"
        if self.supervisor is not None:
            self.supervisor.on_exit(worker, code, sig)
            if self._servers is not None and not self.supervisor.pending_slots:
                self._servers.prune()  # ports kept open in case of a restart that won't come
        worker.emit("exit", code, sig)
        self.emitter.emit("exit", worker, code, sig)

    def _remove(self, worker: Worker) -> None:
        self.workers.pop(worker.id, None)
        backend: PrimaryBackend = worker._backend  # type: ignore[assignment]
        if backend.identity is not None:
            self._own.discard(backend.identity)
        if backend.status is not None:
            backend.status.close()
            backend.status = None

    # -- cluster-wide operations -----------------------------------------------------------
    def disconnect(self, callback: Callable[[], Any] | None) -> Completion:
        """``cluster.disconnect()``: disconnect every worker, then close the primary's handles."""
        self._attach_if_running()
        if self.supervisor is not None:
            # Disconnecting every worker ends the cluster: a replacement scheduled for a
            # worker that died before would start serving again afterwards.
            self.supervisor.cancel_restarts()
        done = Completion()
        waiting = [w for w in self.workers.values() if w.is_connected()]
        remaining = len(waiting)

        def finished() -> None:
            if self._servers is not None:
                self._servers.close_all()
            done.finish()
            if callback is not None:
                result = callback()
                if asyncio.iscoroutine(result):
                    self.reactor.spawn(result)

        def one_done() -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0:
                # Posted, so the last worker's 'disconnect' reaches the cluster's
                # listeners too before the callback runs.
                self.reactor.post(finished)

        for worker in waiting:
            worker.once("disconnect", one_done)
            worker.disconnect()
        if not waiting:
            self.reactor.post(finished)
        return done

    # -- driving the loop -----------------------------------------------------------------
    def _attach_if_running(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self.reactor.loop is not loop:
            self.reactor.attach(loop)

    def _warn_if_abandoned(self) -> None:
        """At exit: say so if the program forked, never drove the loop, and leaves workers.

        Node's primary stays up while it has workers; here ``run()`` (or ``await
        cluster.wait_closed()``) keeps it up, and a program ported without it would
        otherwise just end, its workers with it, silently.
        """
        if self.reactor.driven:
            return
        alive = 0
        for worker in self.workers.values():
            pid = worker.process.pid if worker.process is not None else None
            if pid is None:
                continue
            try:
                alive += os.waitpid(pid, os.WNOHANG) == (0, 0)
            except ChildProcessError:
                pass
        if alive:
            sys.stderr.write(
                f"pycluster: the primary's program ended with {alive} worker(s) running and "
                "no cluster.run() (or 'await cluster.wait_closed()'): they stop with it. "
                "Call cluster.run() after forking to keep serving.\n"
            )

    def _on_listener_error(self, exc: BaseException) -> None:
        self._errors.append(exc)
        self._tick()

    def _tick(self) -> None:
        # Called after every callback: wake the waiter only when it may be done,
        # so a busy cluster does not pay a loop iteration per message for it.
        waiter = self._wakeup
        if waiter is None or waiter.done():
            return
        until = self._until
        if self._errors or (until.done if until is not None else not self.workers):
            waiter.set_result(None)

    @property
    def idle(self) -> bool:
        """No worker alive, none being started, nothing left to deliver."""
        return not self.workers and not self.starting and not self.reactor.busy

    async def wait_idle(self, until: Completion | None = None) -> None:
        """Run listeners until the cluster is idle (or ``until`` is done); re-raise their errors."""
        loop = asyncio.get_running_loop()
        self.reactor.attach(loop)
        self._until = until  # _tick() wakes us when this is done, not when idle
        try:
            while True:
                if self._errors:
                    raise self._errors.pop(0)
                if until.done if until is not None else self.idle:
                    return
                self._wakeup = loop.create_future()
                await self._wakeup
                # Let callbacks the wake-up made runnable run before deciding we are idle.
                await asyncio.sleep(0)
        finally:
            self._until = None

    def run(self, until: Completion | None = None) -> None:
        """Drive a private loop until idle, shutting down gracefully on SIGINT/SIGTERM."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                "cluster.run() cannot be called from a running event loop; "
                "use 'await cluster.wait_closed()'"
            )
        loop = asyncio.new_event_loop()
        installed: list[int] = []
        try:
            if until is None:
                for signum, handler in self._signal_handlers().items():
                    try:
                        loop.add_signal_handler(signum, self.reactor.post, handler, signum)
                        installed.append(signum)
                    except (ValueError, RuntimeError):
                        pass  # not the main thread: signals stay with their owner
            loop.run_until_complete(self.wait_idle(until))
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
            self.reactor.detach()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _signal_handlers(self) -> dict[int, Callable[[int], None]]:
        handlers: dict[int, Callable[[int], None]] = {
            signal.SIGINT: self._graceful_signal,
            signal.SIGTERM: self._graceful_signal,
        }
        if self.supervisor is not None:
            handlers.update(self.supervisor.signal_handlers())
        return handlers

    def _graceful_signal(self, signum: int) -> None:
        log.info("primary got %s: shutting down gracefully", signal.Signals(signum).name)
        self.shutdown(None, immediate_on_repeat=True)

    def shutdown(self, timeout: float | None, *, immediate_on_repeat: bool = False) -> Completion:
        """Disconnect every worker; kill what is left after the timeout."""
        if self.supervisor is not None:
            self.supervisor.stop()
        current = self._shutting_down
        if current is not None:
            if immediate_on_repeat:
                self.kill_all(signal.SIGKILL)
            return current
        if timeout is None:
            timeout = float(self._settings.get("shutdown_timeout", 30.0))
        done = self.disconnect(None)
        self._shutting_down = done
        survivors = list(self.workers.values())

        def deadline() -> None:
            for worker in survivors:
                if not worker.is_dead():
                    log.warning(
                        "worker %d did not disconnect in %.1f s: killing it", worker.id, timeout
                    )
                    worker.process.send_signal(signal.SIGKILL)

        timer = self.reactor.call_later(timeout, deadline)
        all_exited = Completion()

        def check_exit(*_: Any) -> None:
            # Runs from the post below and from 'exit' events: an exit delivered
            # before the post ran would finish twice (and remove the listener twice).
            if not all_exited.done and all(w.is_dead() for w in survivors):
                timer.cancel()
                if self.supervisor is not None:
                    self.supervisor.stopping = False  # a cluster forked anew is supervised
                self.emitter.remove_listener("exit", check_exit)
                self._shutting_down = None
                all_exited.finish()

        self.emitter.on("exit", check_exit)
        self.reactor.post(check_exit)
        return all_exited

    def kill_all(self, signum: int) -> None:
        """Send ``signum`` to every live worker at once."""
        for worker in list(self.workers.values()):
            worker.process.send_signal(signum)


def _socket_from_fds(fds: list[int]) -> socket.socket | None:
    if not fds:
        return None
    close_fds(fds[1:])
    try:
        return socket.socket(fileno=fds[0])
    except OSError:
        close_fds(fds[:1])
        raise


def parse_policy(value: str, source: str) -> int:
    """Map ``rr``/``none`` to a policy constant; anything else is a ``ValueError``."""
    try:
        return POLICY_NAMES[value.strip().lower()]
    except KeyError:
        raise ValueError(f"{source} must be 'rr' or 'none', not {value!r}") from None


def run_blocking(primary: Primary, completion: Completion) -> None:
    """Finish ``completion`` by driving the primary's loop when no loop runs here."""
    primary.run(until=completion)


def awaitable_or_block(primary: Primary, completion: Completion) -> Awaitable[None] | None:
    """Return ``completion`` inside a running loop; outside one, block until it is done."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        if not completion.done:
            run_blocking(primary, completion)
        if completion.error is not None:
            raise completion.error from None
        return None
    return completion
