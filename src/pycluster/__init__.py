"""pycluster: Node.js's ``cluster`` module for Python.

A primary process forks workers that re-run the same program and share server
ports: round-robin hand-off of each connection from the primary (the default), or
one listening socket that every worker accepts on. The module itself is the
cluster, as in Node::

    import pycluster as cluster

    if cluster.is_primary:
        for _ in range(4):
            cluster.fork()
        cluster.run()
    else:
        ...  # serve

This module only wires the public names to one default runtime: the primary's
(``primary.Primary``) or the worker's (``child.ChildRuntime``). Nothing heavy is
imported until it is used, so a worker is online as early as possible.
"""

from __future__ import annotations

import os
import sys
import types
import warnings
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from pycluster import _child
from pycluster._events import EventEmitter
from pycluster._ipc.channel import ChannelClosedError
from pycluster._ipc.framing import ProtocolError
from pycluster._worker import Address, Worker

if TYPE_CHECKING:
    import socket as _socket

    from pycluster import aio, http, socketserver
    from pycluster._primary import Primary
    from pycluster._reactor import Completion
    from pycluster._supervisor import Supervisor

__all__ = [
    "SCHED_NONE",
    "SCHED_RR",
    "SCHED_REUSEPORT",
    "Address",
    "ChannelClosedError",
    "ProtocolError",
    "Worker",
    "aio",
    "allow_types",
    "create_server",
    "disconnect",
    "emit",
    "fork",
    "http",
    # Not "is_master": it warns on access, and `from pycluster import *` would too.
    "is_primary",
    "is_worker",
    "listeners",
    "off",
    "on",
    "once",
    "reload",
    "remove_all_listeners",
    "remove_listener",
    "run",
    "scale",
    "scheduling_policy",
    "settings",
    "setup_master",
    "setup_primary",
    "shutdown",
    "socketserver",
    "statistics",
    "wait_closed",
    "worker",
    "workers",
]

#: Leave connection distribution to the operating system: workers accept on a shared socket.
SCHED_NONE = 1
#: Round-robin: the primary accepts and hands each connection to the next free worker.
SCHED_RR = 2
#: Each worker binds its own socket with ``SO_REUSEPORT``; the kernel balances by hash.
SCHED_REUSEPORT = 3
_POLICIES = {SCHED_NONE, SCHED_RR, SCHED_REUSEPORT}
_POLICY_ENV = "PYCLUSTER_SCHED_POLICY"
_POLICY_WORDS = {"none": SCHED_NONE, "rr": SCHED_RR}

_runtime = _child.boot()
is_worker: bool = _runtime is not None
is_primary: bool = not is_worker

_emitter = EventEmitter()
on = _emitter.on
once = _emitter.once
off = _emitter.off
remove_listener = _emitter.remove_listener
remove_all_listeners = _emitter.remove_all_listeners
listeners = _emitter.listeners
emit = _emitter.emit

# Declared for type checkers; the values come from _ClusterModule's properties.
workers: dict[int, Worker] | None
worker: Worker | None
settings: Mapping[str, Any]
scheduling_policy: int
is_master: bool


def _policy_from_env(strict: bool) -> int | None:
    raw = os.environ.get(_POLICY_ENV)
    if raw is None or raw == "":
        return None
    value = _POLICY_WORDS.get(raw.strip().lower())
    if value is None and strict:
        raise ValueError(f"environment variable {_POLICY_ENV} must be 'rr' or 'none', not {raw!r}")
    return value


_assigned_policy: int | None = None
_initial_policy: int = _policy_from_env(strict=False) or SCHED_RR
_primary_obj: Primary | None = None


def _frozen_policy() -> int:
    if _assigned_policy is not None:
        return _assigned_policy
    return _policy_from_env(strict=True) or SCHED_RR


def _the_primary(api: str) -> Primary:
    global _primary_obj
    if is_worker:
        raise RuntimeError(f"cluster.{api}() can only be called in the primary process")
    if _primary_obj is None:
        from pycluster._primary import Primary

        _primary_obj = Primary(_emitter, _frozen_policy)
    return _primary_obj


def setup_primary(**settings: Any) -> None:
    """Change how later ``fork()`` calls start workers; emits ``'setup'`` afterwards."""
    _the_primary("setup_primary").setup(settings)


def setup_master(**settings: Any) -> None:
    """Deprecated alias of :func:`setup_primary`."""
    warnings.warn(
        "setup_master() is deprecated; use setup_primary()", DeprecationWarning, stacklevel=2
    )
    setup_primary(**settings)


def fork(env: Mapping[str, Any] | None = None) -> Worker:
    """Start a worker process running this program (or ``settings['exec']``)."""
    return _the_primary("fork").fork(dict(env) if env else None)


def disconnect(callback: Callable[[], Any] | None = None) -> Completion:
    """Disconnect every worker; ``callback()`` once all are and the handles are closed.

    Also awaitable: ``await cluster.disconnect()``.
    """
    return _the_primary("disconnect").disconnect(callback)


def run() -> None:
    """Drive the primary until no worker is left; SIGINT/SIGTERM shut down gracefully."""
    _the_primary("run").run()


async def wait_closed() -> None:
    """``run()`` for asyncio programs: wait in the running loop until no worker is left."""
    await _the_primary("wait_closed").wait_idle()


def allow_types(*classes: type) -> None:
    """Let "advanced" decoding in the primary construct instances of ``classes``."""
    _the_primary("allow_types").allow.add(*classes)


def reload(*, batch: int = 1) -> Awaitable[None] | None:
    """Replace every worker, ``batch`` at a time, without dropping a connection."""
    from pycluster._primary import awaitable_or_block

    primary = _the_primary("reload")
    return awaitable_or_block(primary, _supervisor_of(primary).reload(batch))


def scale(n: int) -> Awaitable[None] | None:
    """Start or gracefully retire workers until ``n`` are alive."""
    from pycluster._primary import awaitable_or_block

    primary = _the_primary("scale")
    return awaitable_or_block(primary, _supervisor_of(primary).scale(n))


def shutdown(timeout: float | None = None) -> Awaitable[None] | None:
    """Disconnect every worker and kill what is left after ``timeout`` seconds."""
    from pycluster._primary import awaitable_or_block

    primary = _the_primary("shutdown")
    return awaitable_or_block(primary, primary.shutdown(timeout))


def statistics() -> list[dict[str, Any]]:
    """A snapshot per worker: id, slot, pid, state, uptime, connections, restarts, memory."""
    primary = _the_primary("statistics")
    stats: list[dict[str, Any]] = _supervisor_of(primary).statistics()
    return stats


def _supervisor_of(primary: Primary) -> Supervisor:
    # Not named _supervisor: importing pycluster._supervisor sets that attribute of
    # this package to the module, which would shadow a function of the same name.
    assert primary.supervisor is not None  # the primary always has one
    return primary.supervisor


def create_server(
    address: Any,
    *,
    family: int | None = None,
    type: int | None = None,
    backlog: int | None = None,
    reuse_port: bool = False,
    dualstack_ipv6: bool = False,
    exclusive: bool = False,
    fd: int | None = None,
) -> _socket.socket:
    """``socket.create_server`` whose listening socket is shared with the other workers."""
    from pycluster._ports import create_server as _create_server

    return _create_server(
        address,
        family=family,
        type=type,
        backlog=backlog,
        reuse_port=reuse_port,
        dualstack_ipv6=dualstack_ipv6,
        exclusive=exclusive,
        fd=fd,
    )


_LAZY = {"aio", "socketserver", "http", "net"}


class _ClusterModule(types.ModuleType):
    """The module object: module attributes whose values are live state."""

    @property
    def is_master(self) -> bool:
        warnings.warn("is_master is deprecated; use is_primary", DeprecationWarning, stacklevel=2)
        return is_primary

    @property
    def workers(self) -> dict[int, Worker] | None:
        if is_worker:
            return None
        return _the_primary("workers").workers

    @property
    def worker(self) -> Worker | None:
        return _runtime.worker if _runtime is not None else None

    @property
    def settings(self) -> Mapping[str, Any]:
        if is_worker or _primary_obj is None:
            return types.MappingProxyType({})
        return _primary_obj.settings_view

    @property
    def scheduling_policy(self) -> int:
        if _primary_obj is not None and _primary_obj.policy is not None:
            return _primary_obj.policy
        return _assigned_policy if _assigned_policy is not None else _initial_policy

    @scheduling_policy.setter
    def scheduling_policy(self, value: int) -> None:
        global _assigned_policy
        if isinstance(value, bool) or value not in _POLICIES:
            raise ValueError(
                f"scheduling_policy must be SCHED_RR, SCHED_NONE or SCHED_REUSEPORT, not {value!r}"
            )
        if _primary_obj is not None and _primary_obj.policy is not None:
            return  # frozen at the first fork() or setup_primary(), as in Node
        _assigned_policy = value

    def __getattr__(self, name: str) -> Any:
        if name in _LAZY:
            import importlib

            return importlib.import_module(f"pycluster.{name}")
        raise AttributeError(f"module 'pycluster' has no attribute {name!r}")


sys.modules[__name__].__class__ = _ClusterModule
