"""The public names of API.md exist, and ``__all__`` changes only on purpose.

A rename or removal of a public name fails here loudly. Attribute checks run in
fresh interpreters (a primary and the worker it forks), because touching
``cluster.workers`` or ``cluster.settings`` sets up the primary's machinery, which
the test process must not carry.
"""

from __future__ import annotations

import subprocess
import sys

import pycluster
from tests.conftest import Cluster

# Sorted. Update deliberately, together with API.md.
EXPECTED_ALL = [
    "Address",
    "ChannelClosedError",
    "ProtocolError",
    "SCHED_NONE",
    "SCHED_REUSEPORT",
    "SCHED_RR",
    "Worker",
    "aio",
    "allow_types",
    "create_server",
    "disconnect",
    "emit",
    "fork",
    "http",
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


def test_all_is_the_fixed_list() -> None:
    assert EXPECTED_ALL == sorted(EXPECTED_ALL)
    assert len(pycluster.__all__) == len(set(pycluster.__all__))
    assert sorted(pycluster.__all__) == EXPECTED_ALL


def test_star_import_is_silent() -> None:
    """``from pycluster import *`` touches every exported name: none may warn."""
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", "from pycluster import *; print(is_primary)"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert (out.returncode, out.stdout.strip()) == (0, "True"), out.stderr


def test_import_does_not_load_asyncio() -> None:
    """The worker runtime stays light: a worker that never uses asyncio never imports it."""
    out = subprocess.run(
        [sys.executable, "-c", "import sys, pycluster; print('asyncio' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


CHECK = r"""
import json, socket, sys, warnings
import pycluster as cluster

MODULE_NAMES = [
    "SCHED_NONE", "SCHED_RR", "is_primary", "is_worker", "workers", "worker", "settings",
    "scheduling_policy", "setup_primary", "setup_master", "fork", "disconnect", "run",
    "wait_closed", "on", "once", "off", "remove_listener", "emit", "listeners",
    "remove_all_listeners", "Address", "Worker", "create_server", "aio", "socketserver",
    "http", "allow_types", "reload", "scale", "shutdown", "statistics",
]
CALLABLES = [
    "setup_primary", "setup_master", "fork", "disconnect", "run", "wait_closed", "on",
    "once", "off", "remove_listener", "emit", "listeners", "remove_all_listeners",
    "create_server", "allow_types", "reload", "scale", "shutdown", "statistics",
]
SUBMODULES = {
    "aio": ["start_server", "create_server"],
    "socketserver": ["ClusterMixIn", "TCPServer", "ThreadingTCPServer", "UDPServer",
                     "ThreadingUDPServer"],
    "http": ["HTTPServer", "ThreadingHTTPServer"],
}
WORKER_METHODS = ["send", "disconnect", "kill", "destroy", "is_connected", "is_dead",
                  "messages", "on", "once", "off", "emit", "listeners"]
WORKER_ATTRS = ["id", "process", "state", "exited_after_disconnect", "slot"]

def missing_on_worker(w):
    out = [n for n in WORKER_METHODS if not callable(getattr(w, n, None))]
    out += [n for n in WORKER_ATTRS if not hasattr(w, n)]
    return out

def emit(**kw):
    # One write per line: workers share this stdout.
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()

if cluster.is_primary:
    import asyncio, socketserver as std_socketserver, http.server as std_http
    report = {}
    report["missing"] = [n for n in MODULE_NAMES if not hasattr(cluster, n)]
    report["not_callable"] = [n for n in CALLABLES if not callable(getattr(cluster, n))]
    report["submodules"] = {
        mod: [n for n in names if not hasattr(getattr(cluster, mod), n)]
        for mod, names in SUBMODULES.items()
    }
    report["constants"] = [cluster.SCHED_NONE, cluster.SCHED_RR]
    report["roles"] = [cluster.is_primary, cluster.is_worker]
    report["address_fields"] = list(cluster.Address._fields)
    report["address"] = list(cluster.Address("127.0.0.1", 80, 4))
    report["subclasses"] = [
        issubclass(cluster.socketserver.TCPServer, std_socketserver.TCPServer),
        issubclass(cluster.socketserver.ThreadingTCPServer, std_socketserver.ThreadingTCPServer),
        issubclass(cluster.socketserver.UDPServer, std_socketserver.UDPServer),
        issubclass(cluster.socketserver.ThreadingUDPServer, std_socketserver.ThreadingUDPServer),
        issubclass(cluster.http.HTTPServer, std_http.HTTPServer),
        issubclass(cluster.http.ThreadingHTTPServer, std_http.ThreadingHTTPServer),
    ]
    report["coroutines"] = [
        asyncio.iscoroutinefunction(cluster.aio.start_server),
        asyncio.iscoroutinefunction(cluster.aio.create_server),
        asyncio.iscoroutinefunction(cluster.wait_closed),
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report["is_master"] = cluster.is_master
    report["is_master_warns"] = [w.category.__name__ for w in caught]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cluster.setup_master(args=["from-setup-master"])
    report["setup_master_warns"] = [w.category.__name__ for w in caught]
    report["settings_args"] = cluster.settings["args"]
    report["workers_before"] = dict(cluster.workers)
    report["worker_in_primary"] = cluster.worker

    # `on` also works as a decorator.
    @cluster.on("exit")
    def on_exit(worker, code, signal):
        emit(event="exit", code=code)

    w = cluster.fork()
    report["fork_returns_worker"] = isinstance(w, cluster.Worker)
    report["worker_missing"] = missing_on_worker(w)
    report["workers_key"] = list(cluster.workers) == [w.id]
    report["process"] = [callable(getattr(w.process, "kill", None)), hasattr(w.process, "pid")]
    emit(event="primary", **report)
    w.on("message", lambda msg, handle: emit(event="worker", **msg))
    cluster.run()
else:
    w = cluster.worker
    cluster.worker.send({
        "roles": [cluster.is_primary, cluster.is_worker],
        "workers": cluster.workers,
        "is_worker_instance": isinstance(w, cluster.Worker),
        "missing": missing_on_worker(w),
        "id": w.id,
        "settings": dict(cluster.settings),
    })
"""


def test_api_names_in_a_primary_and_its_worker(cluster_env: Cluster) -> None:
    result = cluster_env.run(CHECK, timeout=30)
    assert result.returncode == 0, result.stderr
    events = {str(e["event"]): e for e in result.events()}
    primary = events["primary"]
    assert primary["missing"] == []
    assert primary["not_callable"] == []
    assert primary["submodules"] == {"aio": [], "socketserver": [], "http": []}
    assert primary["constants"] == [1, 2]
    assert primary["roles"] == [True, False]
    assert primary["address_fields"] == ["address", "port", "address_type"]
    assert primary["address"] == ["127.0.0.1", 80, 4]
    assert primary["subclasses"] == [True] * 6
    assert primary["coroutines"] == [True] * 3
    assert primary["is_master"] is True
    assert primary["is_master_warns"] == ["DeprecationWarning"]
    assert primary["setup_master_warns"] == ["DeprecationWarning"]
    assert primary["settings_args"] == ["from-setup-master"]
    assert primary["workers_before"] == {}
    assert primary["worker_in_primary"] is None
    assert primary["fork_returns_worker"] is True
    assert primary["worker_missing"] == []
    assert primary["workers_key"] is True
    assert primary["process"] == [True, True]
    worker = events["worker"]
    assert worker == {
        "event": "worker",
        "roles": [False, True],
        "workers": None,
        "is_worker_instance": True,
        "missing": [],
        "id": 1,
        "settings": {},
    }
    assert events["exit"] == {"event": "exit", "code": 0}
