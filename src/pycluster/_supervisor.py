"""Keeping workers alive, beyond Node: restarts, hang detection, recycling, reload, scale.

Every behaviour here is off unless its setting asks for it, so plain Node semantics
hold by default. The supervisor reacts to the primary's lifecycle hooks
(``on_fork``, ``on_exit``) and runs one periodic check while a setting needs it
(heartbeats, connection counts and memory, read from each worker's shared status
page, so the check costs no message).

A *planned* exit (``disconnect()``, ``kill()``, scale-down, shutdown, reload) is
one with ``exited_after_disconnect`` set, and never triggers a restart; nor does the
exit of a worker that was already leaving (its channel ended, its exit not reaped
yet) when a retirement or a scaling decided for it. A worker
killed for hanging is a failure and is always replaced; recycled and reloaded
workers are replaced *before* their predecessor stops taking connections.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from pycluster._backoff import RestartRules, SlotHistory
from pycluster._reactor import Completion, Timer

if TYPE_CHECKING:
    from pycluster._events import EventEmitter
    from pycluster._reactor import Reactor
    from pycluster._servers import ServerTable
    from pycluster._worker import Worker

log = logging.getLogger("pycluster")

#: Seconds between SIGABRT (faulthandler prints the stack) and SIGKILL for a hung worker.
ABORT_GRACE = 2.0
MONITOR_INTERVAL = 0.25
MEMORY_INTERVAL = 1.0
_PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_memory(pid: int | None) -> int | None:
    """Resident set size of ``pid`` in bytes, from /proc (None if it is gone)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


class Host(Protocol):
    """What the supervisor needs of the primary it serves (the primary imports us)."""

    emitter: EventEmitter
    reactor: Reactor
    workers: dict[int, Worker]
    starting: int
    _settings: dict[str, Any]
    _servers: ServerTable | None

    def fork(self, env: dict[str, Any] | None = None, *, slot: int | None = None) -> Worker: ...
    def kill_all(self, signum: int) -> None: ...
    def _tick(self) -> None: ...
    def _attach_if_running(self) -> None: ...


class Supervisor:
    """Restart policy and worker-pool management of one primary."""

    def __init__(self, primary: Host) -> None:
        self.p = primary
        self.history: dict[int, SlotHistory] = {}
        self.started: dict[int, float] = {}
        self.retiring: dict[int, Completion] = {}
        #: Workers already on their way out (channel ended, exit not reaped yet) that a
        #: retirement or a scaling decided for: their exit replaces nothing.
        self.dropped: set[int] = set()
        self.limits: dict[int, int] = {}
        self.hung: set[int] = set()
        # Slots whose crashed worker is being replaced; while any is, ports stay open.
        self.pending_slots: dict[int, int] = {}  # slot -> generation of its restart
        self._generation = 0
        self._restart_timers: dict[int, Timer] = {}  # slot -> replacement not forked yet
        self._replacing: dict[int, Worker] = {}  # replacement not ready yet -> predecessor
        self._cancels: dict[int, Callable[[], None]] = {}  # replacement id -> cancel it
        self._deadlines: set[Timer] = set()  # start_timeout of replacements
        self._reloads: set[Completion] = set()
        self.stopping = False
        self._monitor: Timer | None = None
        self._last_memory_check = 0.0

    @property
    def settings(self) -> dict[str, Any]:
        """The primary's current settings."""
        return self.p._settings

    def rules(self) -> RestartRules:
        """Restart rules from the current settings."""
        s = self.settings
        return RestartRules(
            delay=float(s["restart_delay"]),
            backoff=float(s["restart_backoff"]),
            delay_max=float(s["restart_delay_max"]),
            stable_after=float(s["stable_after"]),
            max_restarts=int(s["max_restarts"]),
            window=float(s["restart_window"]),
        )

    # -- hooks from the primary ------------------------------------------------------------
    def on_setup(self) -> None:
        """Settings changed: start or stop the periodic check."""
        self._arm()

    def prepare_env(self, worker: Worker, env: dict[str, str]) -> None:
        """Environment for a new worker: faulthandler on when hangs are detected."""
        if self.settings.get("timeout") is not None:
            env["PYCLUSTER_FAULTHANDLER"] = "1"

    def pass_fds(self, worker: Worker) -> tuple[int, ...]:
        """Extra descriptors a new worker inherits (none yet)."""
        return ()

    def on_fork(self, worker: Worker) -> None:
        """A worker was started."""
        self.started[worker.id] = time.monotonic()
        self.history.setdefault(worker.slot or 0, SlotHistory())
        max_requests = self.settings.get("max_requests")
        if max_requests is not None:
            jitter = int(self.settings.get("max_requests_jitter") or 0)
            self.limits[worker.id] = max_requests + random.randint(0, jitter)

        def online() -> None:
            status = getattr(worker._backend, "status", None)
            if status is not None:
                status.beat()  # the hang clock starts when the worker is up

        worker.on("online", online)
        self._arm()

    def on_exit(self, worker: Worker, code: int | None, sig: str | None) -> None:
        """A worker's process ended: maybe schedule its replacement."""
        started = self.started.pop(worker.id, time.monotonic())
        self.limits.pop(worker.id, None)
        hung = worker.id in self.hung
        self.hung.discard(worker.id)
        predecessor = self._replacing.pop(worker.id, None)
        if predecessor is not None and not predecessor.is_dead() and predecessor.is_connected():
            # A replacement that never became ready: its predecessor still serves the
            # slot, so restarting it would run two workers in one slot.
            return
        dropped = worker.id in self.dropped
        self.dropped.discard(worker.id)
        if self.stopping or worker.id in self.retiring or dropped:
            return
        if not hung:
            if worker.exited_after_disconnect:
                return
            policy = self.settings.get("restart", "never")
            failed = code != 0 or sig is not None
            if policy == "never" or (policy == "on-failure" and not failed):
                return
        slot = worker.slot or 0
        decision = self.history.setdefault(slot, SlotHistory()).decide(
            self.rules(), time.monotonic() - started
        )
        if not decision.restart:
            log.error("worker slot %d: giving up restarting: %s", slot, decision.reason)
            self._settled(slot)
            self.p.reactor.post(self.p.emitter.emit, "give_up", worker, decision.reason)
            return
        log.warning(
            "worker %d (pid %s) exited (%s): restarting slot %d in %.2f s",
            worker.id,
            worker.process.pid,
            sig or f"code {code}",
            slot,
            decision.delay,
        )
        self.p.starting += 1
        self._generation += 1
        self.pending_slots[slot] = self._generation
        self._restart_timers[slot] = self.p.reactor.call_later(
            decision.delay, self._restart, worker
        )

    def _restart(self, old: Worker) -> None:
        self.p.starting -= 1
        slot = old.slot or 0
        self._restart_timers.pop(slot, None)
        generation = self.pending_slots.get(slot, 0)
        if self.stopping:
            self._settled(slot, generation)
            self.p._tick()
            return
        new = self.p.fork(slot=old.slot)
        # The slot is settled once its new worker listens, exits without a further
        # restart, or has been up a while without serving a port.
        new.once("listening", lambda *_: self._settled(slot, generation))
        new.once("exit", lambda *_: self._settled(slot, generation))
        stable = float(self.settings["stable_after"])
        self.p.reactor.call_later(stable, self._settled, slot, generation)
        self.p.reactor.post(self.p.emitter.emit, "restart", old, new)

    def _cancel_restart(self, slot: int) -> None:
        timer = self._restart_timers.pop(slot)
        timer.cancel()
        self.p.starting -= 1
        self._settled(slot)
        log.info("worker slot %d: pending restart cancelled", slot)

    def reserved_slots(self) -> set[int]:
        """Slots whose replacement is scheduled but not forked yet (fork() skips them)."""
        return set(self._restart_timers)

    def count(self) -> int:
        """Workers serving or about to: alive and not retiring, plus pending restarts."""
        return len(self._alive()) + len(self._restart_timers)

    def cancel_restarts(self) -> None:
        """Cancel the restarts scheduled so far (``cluster.disconnect()`` ends the cluster)."""
        for slot in list(self._restart_timers):
            self._cancel_restart(slot)

    def stop(self) -> None:
        """Shutdown began: cancel pending restarts and reloads; start nothing new."""
        self.stopping = True
        self.cancel_restarts()
        for done in list(self._reloads):
            done.finish(RuntimeError("reload cancelled: the cluster is shutting down"))
        for deadline in self._deadlines:
            deadline.cancel()  # the shutdown's own timeout applies now
        self._deadlines.clear()
        self.p._tick()

    def _refused(self, what: str) -> Completion:
        done = Completion()
        done.finish(RuntimeError(f"cannot {what}: the cluster is shutting down"))
        return done

    def may_restart(self) -> bool:
        """Whether a worker that leaves now might be replaced (so keep its ports open)."""
        if self.stopping:
            return False
        # A worker killed for hanging is always replaced, whatever `restart` says: its
        # ports stay for the replacement (port 0 included), as after a crash.
        return (
            bool(self.pending_slots)
            or bool(self.hung)
            or self.settings.get("restart", "never") != "never"
        )

    def _settled(self, slot: int, generation: int | None = None) -> None:
        current = self.pending_slots.get(slot)
        if current is not None and (generation is None or generation == current):
            del self.pending_slots[slot]
            if not self.pending_slots and self.p._servers is not None:
                self.p._servers.prune()

    # -- graceful replacement -----------------------------------------------------------------
    def replace(self, old: Worker) -> Completion:
        """Start a replacement in ``old``'s slot; once it is ready, retire ``old``."""
        existing = self.retiring.get(old.id)
        if existing is not None:
            return existing
        if self.stopping:
            return self._refused(f"replace worker {old.id}")
        done = Completion()
        if old.is_dead() or not old.is_connected():
            done.finish()  # gone already: nothing left to replace
            return done
        self.retiring[old.id] = done
        # Ready means serving every port the old worker serves now (not every port it
        # ever listened on: it may have closed some).
        need = self._serving(old)
        new = self.p.fork(slot=old.slot)
        self._replacing[new.id] = old
        self.p.reactor.post(self.p.emitter.emit, "restart", old, new)
        limit = self.settings.get("start_timeout")
        ended: str | None = None  # why the replacement is being ended before it was ready

        def stop_waiting() -> None:
            if deadline is not None:
                deadline.cancel()
                self._deadlines.discard(deadline)
            self._cancels.pop(new.id, None)
            for event, cb in handlers:
                if cb in new.listeners(event):  # perhaps removed already (a second end)
                    new.remove_listener(event, cb)

        # A program that says when it is ready (cluster.worker.ready()) is waited
        # for until it says so, even if it never listens; one that neither listens
        # nor says so is ready once online, since there is nothing else to wait for.
        says_ready = bool(getattr(old, "_ready", False))

        def ready(*_: Any) -> None:
            if new.is_dead() or done.done or ended is not None:
                return
            if getattr(new, "_ready", False):
                is_ready = True
            elif new.state not in ("online", "listening"):
                is_ready = False
            elif need:
                is_ready = self._serving(new) >= need
            else:
                is_ready = not says_ready
            if is_ready:
                stop_waiting()
                self._replacing.pop(new.id, None)
                self._retire(old, done)

        def give_up(error: RuntimeError) -> None:
            stop_waiting()
            self.retiring.pop(old.id, None)
            done.finish(error)

        def failed(code: int | None, sig: str | None) -> None:
            if done.done:
                return
            if ended == "timeout":
                give_up(
                    RuntimeError(
                        f"the replacement for worker {old.id} was not ready within {limit:g} s "
                        "(start_timeout)"
                    )
                )
                return
            if ended == "cancelled":
                return  # finished when the predecessor, retired too, has exited
            log.error(
                "replacement for worker %d exited before it was ready (%s)%s",
                old.id,
                sig or f"code {code}",
                "; keeping the old one" if not old.is_dead() else "",
            )
            give_up(RuntimeError(f"the replacement for worker {old.id} failed to start"))

        def too_slow() -> None:
            nonlocal ended
            if done.done or new.is_dead():
                return
            log.error(
                "replacement worker %d (pid %s) was not ready within %g s (start_timeout): "
                "killing it; keeping worker %d",
                new.id,
                new.process.pid,
                limit,
                old.id,
            )
            ended = "timeout"  # the reload fails once the replacement is gone
            new.process.send_signal(signal.SIGKILL)

        def cancel() -> None:
            # Scaling down: this slot goes away, so retire the replacement and the
            # worker it was to replace.
            nonlocal ended
            ended = "cancelled"
            stop_waiting()
            self._retire(new)
            self._retire(old, done)

        handlers: list[tuple[str, Callable[..., None]]] = [
            ("online", ready),
            ("listening", ready),
            ("ready", ready),
        ]
        for event, cb in handlers:
            new.on(event, cb)
        new.once("exit", failed)
        self._cancels[new.id] = cancel
        deadline = None
        if limit is not None:
            deadline = self.p.reactor.call_later(float(limit), too_slow)
            self._deadlines.add(deadline)
        return done

    def _serving(self, worker: Worker) -> int:
        """How many ports ``worker`` serves now."""
        return self.p._servers.memberships(worker) if self.p._servers is not None else 0

    @staticmethod
    def _exit_of(worker: Worker) -> Completion:
        """Finishes once ``worker`` has exited."""
        gone = Completion()
        if worker.is_dead():
            gone.finish()
        else:
            worker.once("exit", lambda *_: gone.finish())
        return gone

    def _retire(self, worker: Worker, done: Completion | None = None) -> Completion:
        """Disconnect ``worker`` gracefully; kill it after ``shutdown_timeout``."""
        if done is None:
            done = self.retiring.get(worker.id) or Completion()
        self.retiring[worker.id] = done
        if worker.is_dead() or not worker.is_connected():
            # Leaving already (perhaps crashing, its exit still to come): retired all
            # the same, so that exit is not replaced, whatever its status.
            self.retiring.pop(worker.id, None)
            if not worker.is_dead():
                self.dropped.add(worker.id)
            done.finish()
            return done
        timeout = float(self.settings.get("shutdown_timeout", 30.0))

        def kill() -> None:
            if not worker.is_dead():
                log.warning(
                    "worker %d did not disconnect in %.1f s: killing it", worker.id, timeout
                )
                worker.process.send_signal(signal.SIGKILL)

        timer = self.p.reactor.call_later(timeout, kill)

        def finished(*_: Any) -> None:
            timer.cancel()
            self.retiring.pop(worker.id, None)
            done.finish()

        worker.once("exit", finished)
        worker.disconnect()
        return done

    def _alive(self) -> list[Worker]:
        return [
            w
            for w in self.p.workers.values()
            if w.id not in self.retiring and not w.is_dead() and w.is_connected()
        ]

    def reload(self, batch: int = 1) -> Completion:
        """Replace every worker, ``batch`` at a time, each new one ready before the old goes."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, not {batch!r}")
        self.p._attach_if_running()
        if self.stopping:
            return self._refused("reload")
        done = Completion()
        self._reloads.add(done)
        done.add_done_callback(lambda: self._reloads.discard(done))
        olds = sorted(self._alive(), key=lambda w: w.slot or 0)
        errors: list[BaseException] = []
        log.info("reloading %d worker(s), %d at a time", len(olds), batch)

        def next_batch() -> None:
            if done.done:
                return  # cancelled by shutdown
            # A worker that died or left since the reload began needs no replacement.
            olds[:] = [w for w in olds if not w.is_dead() and w.is_connected()]
            if not olds:
                done.finish(errors[0] if errors else None)
                return
            group, olds[:] = olds[:batch], olds[batch:]
            pending = len(group)

            def one_done(comp: Completion) -> None:
                nonlocal pending
                if comp.error is not None:
                    errors.append(comp.error)
                pending -= 1
                if pending == 0 and errors:
                    # The new code does not start: replacing more workers would only
                    # cost each its start attempt, so the rest keep the old code.
                    kept = [w for w in olds if not w.is_dead()]
                    if kept:
                        log.error("reload stopped: %d worker(s) keep the old code", len(kept))
                    done.finish(errors[0])
                elif pending == 0:
                    next_batch()

            for old in group:
                comp = self.replace(old)
                comp.add_done_callback(lambda comp=comp: one_done(comp))  # type: ignore[misc]

        self.p.reactor.post(next_batch)
        return done

    def scale(self, n: int) -> Completion:
        """Start or gracefully retire workers until ``n`` are alive."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"scale() takes a worker count >= 0, not {n!r}")
        self.p._attach_if_running()
        if self.stopping:
            return self._refused("scale")
        done = Completion()
        # A worker whose channel ended but whose exit is not reaped yet counts as gone:
        # its exit must not bring a worker back beyond ``n`` (a crash seen in a
        # 'disconnect' or 'exit' listener that scales down, a failing start).
        for worker in self.p.workers.values():
            if not worker.is_dead() and not worker.is_connected():
                self.dropped.add(worker.id)
        alive = sorted(self._alive(), key=lambda w: w.slot or 0)
        current = len(alive) + len(self._restart_timers)
        comps: list[Completion] = []
        if n > current:
            for _ in range(n - current):
                worker = self.p.fork()
                comp = Completion()
                worker.once("online", comp.finish)
                worker.once("exit", lambda *_, comp=comp: comp.finish())
                comps.append(comp)
        else:
            excess = current - n
            # Slots waiting for a restart go first: they serve nothing yet.
            for slot in sorted(self._restart_timers, reverse=True)[:excess]:
                self._cancel_restart(slot)
                excess -= 1
            for worker in alive[len(alive) - excess :][::-1] if excess else []:
                cancel = self._cancels.get(worker.id)
                if cancel is None:
                    comps.append(self._retire(worker))
                    continue
                # A replacement not ready yet (a reload is running): its slot goes,
                # with the worker it was to replace.
                predecessor = self._replacing[worker.id]
                cancel()
                comps += [self._exit_of(worker), self._exit_of(predecessor)]
        log.info("scaling from %d to %d worker(s)", current, n)
        pending = len(comps)
        if not pending:
            self.p.reactor.post(done.finish)

        def one_done() -> None:
            nonlocal pending
            pending -= 1
            if pending == 0:
                done.finish()

        for comp in comps:
            comp.add_done_callback(one_done)
        return done

    # -- the periodic check -------------------------------------------------------------------
    def _needed(self) -> bool:
        s = self.settings
        return any(s.get(k) is not None for k in ("timeout", "max_requests", "max_memory"))

    def _arm(self) -> None:
        if self._monitor is None and self._needed() and self.p.workers:
            self._monitor = self.p.reactor.call_later(MONITOR_INTERVAL, self._check)

    def _check(self) -> None:
        self._monitor = None
        s = self.settings
        timeout, max_memory = s.get("timeout"), s.get("max_memory")
        now = time.monotonic()
        memory_due = max_memory is not None and now - self._last_memory_check >= MEMORY_INTERVAL
        if memory_due:
            self._last_memory_check = now
        for worker in list(self.p.workers.values()):
            status = getattr(worker._backend, "status", None)
            if status is None or worker.is_dead() or not worker.is_connected():
                continue
            if worker.id in self.retiring or worker.id in self.hung:
                continue
            if timeout is not None and worker.state in ("online", "listening"):
                silent = now - status.last_beat
                if silent > timeout:
                    self._abort(worker, silent)
                    continue
            limit = self.limits.get(worker.id)
            if limit is not None and status.connections >= limit:
                log.info(
                    "worker %d served %d connections: recycling it", worker.id, status.connections
                )
                self.replace(worker)
                continue
            if memory_due:
                rss = resident_memory(worker.process.pid)
                if rss is not None and max_memory is not None and rss > max_memory:
                    log.info(
                        "worker %d uses %d bytes (> %d): recycling it", worker.id, rss, max_memory
                    )
                    self.replace(worker)
        self._arm()

    def _abort(self, worker: Worker, silent: float) -> None:
        log.error(
            "worker %d (pid %s) sent no heartbeat for %.1f s: aborting it (its stack goes to stderr)",
            worker.id,
            worker.process.pid,
            silent,
        )
        self.hung.add(worker.id)
        worker.process.send_signal(signal.SIGABRT)

        def kill() -> None:
            if not worker.is_dead():
                worker.process.send_signal(signal.SIGKILL)

        self.p.reactor.call_later(ABORT_GRACE, kill)

    # -- signals and statistics ---------------------------------------------------------------
    def signal_handlers(self) -> dict[int, Callable[[int], None]]:
        """What ``run()`` does on SIGHUP, SIGTTIN, SIGTTOU and SIGQUIT."""
        return {
            signal.SIGHUP: lambda _: self._quietly(self.reload()),
            signal.SIGTTIN: lambda _: self._quietly(self.scale(self.count() + 1)),
            signal.SIGTTOU: lambda _: self._quietly(self.scale(max(1, self.count() - 1))),
            signal.SIGQUIT: self._quit,
        }

    @staticmethod
    def _quietly(done: Completion) -> None:
        done.add_done_callback(
            lambda: log.error("%s", done.error) if done.error is not None else None
        )

    def _quit(self, signum: int) -> None:
        log.warning("primary got SIGQUIT: killing every worker now")
        self.stop()
        self.p.kill_all(signal.SIGKILL)

    def statistics(self) -> list[dict[str, Any]]:
        """A snapshot per live worker."""
        now = time.monotonic()
        handed = self.p._servers.handed if self.p._servers is not None else {}
        out = []
        for worker in sorted(self.p.workers.values(), key=lambda w: w.id):
            status = getattr(worker._backend, "status", None)
            pid = worker.process.pid
            history = self.history.get(worker.slot or 0)
            out.append(
                {
                    "id": worker.id,
                    "slot": worker.slot,
                    "pid": pid,
                    "state": worker.state,
                    "uptime": now - self.started.get(worker.id, now),
                    "connections": max(
                        status.connections if status is not None else 0, handed.get(worker.id, 0)
                    ),
                    "restarts": history.total if history is not None else 0,
                    "rss": resident_memory(pid),
                }
            )
        return out
