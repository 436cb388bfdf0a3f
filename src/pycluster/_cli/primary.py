"""The primary of ``pycluster run`` and ``pycluster serve``.

It sets the cluster up from the options (workers run ``-m pycluster._cli.worker`` with
a JSON description of their job), forks the workers, and drives its own asyncio loop
until the cluster ends. On that loop it also:

* logs one line per lifecycle event (fork, online, listening, disconnect, exit,
  restart, give-up) with the worker's id and pid;
* answers signals: SIGTERM/SIGINT stop gracefully (a second one kills), SIGHUP
  reloads, SIGTTIN/SIGTTOU add or retire a worker, SIGQUIT kills every worker;
* serves the control socket (``pycluster status/reload/scale/stop``) and, with
  ``--metrics``, Prometheus metrics;
* tells systemd when it is ready, reloading or stopping.

It drives its own loop (``await cluster.wait_closed()``) rather than
``cluster.run()``, because systemd must hear of reloads and stops as they start, and
the services must close on the loop before it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, cast

import pycluster as cluster
from pycluster._cli import EXIT_APP_LOAD, EXIT_USAGE, CliError, binds, logs, systemd

log = logging.getLogger("pycluster._cli")

#: A worker failed before any worker listened (as gunicorn's WORKER_BOOT_ERROR).
EXIT_BOOT = 3
POLICIES = {
    "rr": cluster.SCHED_RR,
    "none": cluster.SCHED_NONE,
    "reuseport": cluster.SCHED_REUSEPORT,
}
POLICY_NAMES = {v: k for k, v in POLICIES.items()}


def main(ns: argparse.Namespace) -> int:
    """Run the cluster ``ns`` describes until it ends; returns the exit status."""
    logs.configure(ns.log_level, "primary")
    app = ClusterApp(ns)
    try:
        return asyncio.run(app.run())
    except ValueError as exc:  # bad settings or environment, named by the library
        raise CliError(str(exc), EXIT_USAGE) from None


def worker_spec(ns: argparse.Namespace, bind_list: list[binds.Bind]) -> dict[str, Any]:
    """What every worker needs to know, as JSON-able data."""
    spec: dict[str, Any] = {"kind": ns.command, "log_level": ns.log_level, "binds": bind_list}
    if ns.command == "run":
        if ns.module is None:
            script = os.path.abspath(ns.script)
            if not os.path.isfile(script):
                raise CliError(f"no such program: {ns.script}", EXIT_USAGE)
            spec.update(script=script, module=None)
        else:
            spec.update(script=None, module=ns.module)
        spec["args"] = list(ns.args)
        return spec
    keys = (
        "app interface factory lifespan threads loop http keep_alive limit_request_body "
        "limit_concurrency backlog access_log root_path proxy_headers forwarded_allow_ips"
    )
    spec.update({key: getattr(ns, key) for key in keys.split()})
    spec["app_dir"] = os.path.abspath(ns.app_dir)
    return spec


class ClusterApp:
    """The command line's primary: one per ``pycluster run`` / ``serve``."""

    def __init__(self, ns: argparse.Namespace) -> None:
        self.ns = ns
        self.target: int = ns.workers
        self.name: str = ns.name or str(os.getpid())
        self.notifier = systemd.Notifier()
        self.started = time.monotonic()
        self.addresses: list[str] = []
        self.ever_listened = False
        self.ready_sent = False
        self.stopping = False
        self.reloading = False
        self.exit_code = 0
        self.control: Any = None
        self.bind_list: list[binds.Bind] = []
        self.metrics: Any = None

    # -- start and run ----------------------------------------------------------------------
    def _binds(self) -> list[binds.Bind]:
        bind_list: list[binds.Bind] = list(self.ns.bind)
        activated = systemd.listen_fds()
        if not bind_list:
            bind_list = [{"kind": "fd", "fd": fd} for fd in activated]
            if activated:
                log.info("socket activation: listening on descriptors %s", activated)
        if not bind_list and self.ns.command == "serve":
            bind_list = [binds.parse("127.0.0.1:8000")]
        for bind in bind_list:
            try:
                binds.check(bind)
            except ValueError as exc:
                raise CliError(str(exc), EXIT_USAGE) from None
            if bind["kind"] == "unix":
                binds.remove_stale_socket(bind["path"])
        return bind_list

    def _setup(self) -> None:
        if self.ns.policy is not None:
            cluster.scheduling_policy = POLICIES[self.ns.policy]
        cwd = getattr(self.ns, "setting_cwd", None)
        if cwd is not None and not os.path.isdir(cwd):
            raise CliError(f"--cwd {cwd}: no such directory", EXIT_USAGE)
        self.bind_list = self._binds()
        spec = worker_spec(self.ns, self.bind_list)
        spec["policy"] = POLICY_NAMES.get(cluster.scheduling_policy, "rr")
        cluster.setup_primary(
            exec="-m pycluster._cli.worker", args=[json.dumps(spec)], **self.ns.settings
        )
        for event in ("fork", "online", "listening", "disconnect", "exit", "restart", "give_up"):
            cluster.on(event, getattr(self, f"_on_{event}"))

    async def run(self) -> int:
        """Set up, fork, serve until no worker is left; returns the exit status."""
        loop = asyncio.get_running_loop()
        self._setup()
        await self._start_services(loop)
        handled = self._install_signals(loop)
        watchdog = loop.create_task(self._watchdog()) if self.notifier.watchdog else None
        try:
            kind = "program" if self.ns.command == "run" else "application"
            log.info(
                "starting %d worker(s) for %s %s, policy %s",
                self.target,
                kind,
                self.ns.script or self.ns.module if self.ns.command == "run" else self.ns.app,
                POLICY_NAMES.get(cluster.scheduling_policy, cluster.scheduling_policy),
            )
            for _ in range(self.target):
                cluster.fork()
            await cluster.wait_closed()
        finally:
            for signum in handled:
                loop.remove_signal_handler(signum)
            if watchdog is not None:
                watchdog.cancel()
            await self._stop_services()
            for bind in self.bind_list:
                if bind["kind"] == "unix":  # as Node's server.close(): no socket file left
                    binds.remove_stale_socket(bind["path"])
        log.info("stopped")
        return self.exit_code

    async def _start_services(self, loop: asyncio.AbstractEventLoop) -> None:
        from pycluster._cli import control

        if not self.ns.no_control:
            path = Path(self.ns.control) if self.ns.control else None
            path = path or control.runtime_dir() / f"{self.name}.sock"
            self.control = control.ControlServer(path, self.command)
            try:
                await self.control.start()
            except (OSError, control.ControlError) as exc:
                raise CliError(f"control socket {path}: {exc}") from None
            log.info("control socket %s", path)
        if self.ns.metrics:
            from pycluster._cli import metrics

            try:
                self.metrics = metrics.start(self.ns.metrics, self.snapshot, loop)
            except (OSError, ValueError, RuntimeError) as exc:
                if self.control is not None:
                    await self.control.close()
                raise CliError(f"metrics on {self.ns.metrics}: {exc}") from None
        self._own_sockets()

    def _own_sockets(self) -> None:
        """The control and metrics sockets are pycluster's: no worker's ``fd=N`` gets them."""
        primary = cluster._the_primary("fork")
        server = getattr(self.control, "_server", None)
        socks = [s.fileno() for s in server.sockets] if server is not None else []
        metrics_sock = getattr(self.metrics, "socket", None)
        if metrics_sock is not None:
            socks.append(metrics_sock.fileno())
        for fd in socks:
            primary.own_socket(fd)

    async def _stop_services(self) -> None:
        if self.control is not None:
            await self.control.close()
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.shutdown)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        handlers = {
            signal.SIGINT: lambda: self.stop("SIGINT"),
            signal.SIGTERM: lambda: self.stop("SIGTERM"),
            signal.SIGHUP: lambda: self._background(self.reload(1), "reload"),
            signal.SIGTTIN: lambda: self._background(self.scale(self.target + 1), "scale"),
            signal.SIGTTOU: lambda: self._background(self.scale(max(1, self.target - 1)), "scale"),
            signal.SIGQUIT: self.kill_all,
        }
        for signum, handler in handlers.items():
            loop.add_signal_handler(signum, handler)
        return list(handlers)

    def _background(self, coro: Any, what: str) -> None:
        task = asyncio.get_running_loop().create_task(coro)

        def done(t: asyncio.Task[Any]) -> None:
            if not t.cancelled() and t.exception() is not None:
                log.error("%s failed: %s", what, t.exception())

        task.add_done_callback(done)

    async def _watchdog(self) -> None:
        assert self.notifier.watchdog is not None
        while True:
            self.notifier.notify("WATCHDOG=1", wait=0.0)
            await asyncio.sleep(self.notifier.watchdog / 2)

    # -- operations (signals and the control socket) ---------------------------------------------
    def stop(self, why: str) -> None:
        """Graceful shutdown; asked a second time, kill every worker now."""
        if self.stopping:
            log.warning("%s again: killing every worker now", why)
            self.kill_all()
            return
        self.stopping = True
        self.notifier.stopping()
        log.info("%s: stopping gracefully", why)
        cluster.shutdown()

    def kill_all(self) -> None:
        """SIGKILL every worker at once (SIGQUIT)."""
        self.stopping = True
        for worker in list((cluster.workers or {}).values()):
            if not worker.is_dead():
                worker.kill("SIGKILL")

    async def reload(self, batch: int) -> int:
        """Rolling reload of every worker; returns how many were replaced."""
        if self.stopping:
            raise RuntimeError("the cluster is stopping")
        if self.reloading:
            raise RuntimeError("a reload is already running")
        self.reloading = True
        count = len([w for w in (cluster.workers or {}).values() if not w.is_dead()])
        self.notifier.reloading()
        started = time.monotonic()
        try:
            await cast("asyncio.Future[None]", cluster.reload(batch=batch))
        finally:
            self.reloading = False
            if not self.stopping:
                self.notifier.ready(self._status_line())
        log.info("reload done in %.1f s", time.monotonic() - started)
        return count

    async def scale(self, n: int) -> int:
        """Start or retire workers until ``n`` run."""
        if self.stopping:
            raise RuntimeError("the cluster is stopping")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"scale needs a worker count >= 0, not {n!r}")
        self.target = n
        await cast("asyncio.Future[None]", cluster.scale(n))
        return n

    async def command(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer one request of the control socket."""
        cmd = request.get("cmd")
        if cmd == "status":
            return {"ok": True, **self.snapshot()}
        if cmd == "reload":
            batch = request.get("batch", 1)
            if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
                raise ValueError(f"batch must be a positive integer, not {batch!r}")
            return {"ok": True, "replaced": await self.reload(batch)}
        if cmd == "scale":
            return {"ok": True, "workers": await self.scale(request.get("n"))}  # type: ignore[arg-type]
        if cmd == "stop":
            self.stop("stop requested on the control socket")
            return {"ok": True}
        raise ValueError(f"unknown command {cmd!r}")

    def snapshot(self) -> dict[str, Any]:
        """The cluster's state: the primary and one dict per worker (``cluster.statistics()``)."""
        queued = 0
        primary_obj = getattr(cluster, "_primary_obj", None)
        if primary_obj is not None and primary_obj._servers is not None:
            queued = primary_obj._servers.queued()
        return {
            "primary": {
                "pid": os.getpid(),
                "name": self.name,
                "kind": self.ns.command,
                "target_text": self.ns.app if self.ns.command == "serve" else self._program(),
                "workers": self.target,
                "policy": POLICY_NAMES.get(cluster.scheduling_policy, "?"),
                "binds": self.addresses,
                "uptime": time.monotonic() - self.started,
                "queued": queued,
                "stopping": self.stopping,
            },
            "workers": cluster.statistics(),
        }

    def _program(self) -> str:
        return str(self.ns.script or f"-m {self.ns.module}")

    def _status_line(self) -> str:
        return f"{self.target} worker(s) on {', '.join(self.addresses) or 'no address yet'}"

    # -- lifecycle events -------------------------------------------------------------------
    def _on_fork(self, worker: cluster.Worker) -> None:
        log.info(
            "worker %d (pid %s) started in slot %s", worker.id, worker.process.pid, worker.slot
        )

    def _on_online(self, worker: cluster.Worker) -> None:
        log.info("worker %d (pid %s) online", worker.id, worker.process.pid)

    def _on_listening(self, worker: cluster.Worker, address: cluster.Address) -> None:
        if address.address_type == -1:
            where = f"unix:{address.address}"
        elif address.address_type == 6:
            where = f"[{address.address}]:{address.port}"
        else:
            where = f"{address.address or '0.0.0.0'}:{address.port}"
        if where not in self.addresses:
            self.addresses.append(where)
        log.info("worker %d (pid %s) listening on %s", worker.id, worker.process.pid, where)
        self.ever_listened = True
        listening = [w for w in (cluster.workers or {}).values() if w.state == "listening"]
        if not self.ready_sent and len(listening) >= self.target:
            self.ready_sent = True
            log.info("ready: %s", self._status_line())
            self.notifier.ready(self._status_line())

    def _on_disconnect(self, worker: cluster.Worker) -> None:
        log.info("worker %d (pid %s) disconnected", worker.id, worker.process.pid)

    def _on_exit(self, worker: cluster.Worker, code: int | None, sig: str | None) -> None:
        how = f"signal {sig}" if sig else f"code {code}"
        pid = worker.process.pid
        if worker.exited_after_disconnect:
            log.info("worker %d (pid %s) exited (%s)", worker.id, pid, how)
            return
        failed = sig is not None or code != 0
        (log.warning if failed else log.info)("worker %d (pid %s) exited (%s)", worker.id, pid, how)
        if not failed or self.stopping:
            return
        # A crash the supervisor recovers from is not the cluster's failure: only one
        # that is never restarted, a give-up or a failure to start makes the exit
        # status non-zero.
        if (cluster.settings or {}).get("restart", "never") == "never":
            self.exit_code = 1
        if code == EXIT_APP_LOAD:
            log.error("the application could not be loaded (see above): stopping")
            self._fail(EXIT_APP_LOAD)
        elif not self.ever_listened:
            log.error("worker %d failed before any worker listened: stopping", worker.id)
            self._fail(EXIT_BOOT)

    def _fail(self, code: int) -> None:
        self.exit_code = code
        self.stop("startup failure")

    def _on_restart(self, old: cluster.Worker, new: cluster.Worker) -> None:
        log.info(
            "worker %d (pid %s) replaces worker %d (pid %s) in slot %s",
            new.id,
            new.process.pid,
            old.id,
            old.process.pid,
            new.slot,
        )

    def _on_give_up(self, worker: cluster.Worker, reason: str) -> None:
        # The supervisor has logged the give-up and its reason already.
        self.exit_code = 1
        alive = [w for w in (cluster.workers or {}).values() if not w.is_dead()]
        if not alive:
            with contextlib.suppress(RuntimeError):
                self.stop("no worker left")
