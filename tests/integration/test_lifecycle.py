"""A worker's life as the primary and the worker see it, with real processes.

Events and their arguments, exit statuses, ``exited_after_disconnect``, removal from
``cluster.workers``, disconnect and kill from either side, ``run()`` /
``wait_closed()``, listener exceptions, and the small accessors (``state``, ``id``,
``is_master``). The ``'listening'`` event belongs to the port-sharing tests.
"""

from __future__ import annotations

import time

from tests.conftest import Cluster, pid_alive

PRELUDE = """\
import json
import os
import sys

import pycluster as cluster


def emit(**kw):
    # One write per line, so lines from the primary and its workers never interleave.
    sys.stdout.write(json.dumps(kw) + "\\n")
    sys.stdout.flush()


"""


def program(body: str) -> str:
    """A cluster program: the shared prelude (``emit``) followed by ``body``."""
    return PRELUDE + body


def wait_all_gone(pids: list[int], timeout: float) -> list[int]:
    """Poll until none of ``pids`` is alive; return the ones still alive at the deadline."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if pid_alive(pid)]
        if alive:
            time.sleep(0.02)
    return alive


EVENT_ORDER = program("""
if cluster.is_primary:
    def record(source, name):
        def listener(*args):
            shown = []
            for arg in args:
                shown.append(f"worker{arg.id}" if isinstance(arg, cluster.Worker) else arg)
            emit(source=source, event=name, args=shown)
        return listener

    for name in ("fork", "online", "disconnect", "exit"):
        cluster.on(name, record("cluster", name))
    worker = cluster.fork()
    for name in ("online", "disconnect", "exit"):
        worker.on(name, record("worker", name))
    worker.on("online", worker.disconnect)
    cluster.run()
else:
    cluster.worker.wait_disconnected()
""")


def test_events_come_in_order_with_their_arguments(cluster_env: Cluster) -> None:
    result = cluster_env.run(EVENT_ORDER)
    assert result.returncode == 0, result.stderr
    seen = [(e["source"], e["event"], e["args"]) for e in result.events()]
    assert seen[:3] == [
        ("cluster", "fork", ["worker1"]),
        ("worker", "online", []),
        ("cluster", "online", ["worker1"]),
    ]
    # 'disconnect' and 'exit' may come in either order; each is emitted on the
    # worker first, then on the cluster, with the documented arguments.
    rest = seen[3:]
    assert sorted(rest) == sorted(
        [
            ("worker", "disconnect", []),
            ("cluster", "disconnect", ["worker1"]),
            ("worker", "exit", [0, None]),
            ("cluster", "exit", ["worker1", 0, None]),
        ]
    )
    for name in ("disconnect", "exit"):
        names = [(source, event) for source, event, _ in rest]
        assert names.index(("worker", name)) + 1 == names.index(("cluster", name))


EXIT_STATUS = program("""
import signal

if cluster.is_primary:
    @cluster.on("exit")
    def on_exit(worker, code, sig):
        emit(mode=worker.mode, code=code, signal=sig, planned=worker.exited_after_disconnect)

    for mode in ("exit3", "sigkill", "sigterm", "exception"):
        worker = cluster.fork({"MODE": mode})
        worker.mode = mode
        if mode == "sigterm":
            # Sent by the primary, not through worker.kill(): an exit nobody asked for.
            worker.on("online", lambda w=worker: w.process.kill("SIGTERM"))
    cluster.run()
else:
    mode = os.environ["MODE"]
    if mode == "exit3":
        sys.exit(3)
    elif mode == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif mode == "exception":
        raise ValueError("the worker program failed")
    cluster.worker.wait_disconnected()
""")


def test_exit_reports_code_and_signal(cluster_env: Cluster) -> None:
    result = cluster_env.run(EXIT_STATUS)
    assert result.returncode == 0, result.stderr
    by_mode = {e["mode"]: (e["code"], e["signal"], e["planned"]) for e in result.events()}
    assert by_mode == {
        "exit3": (3, None, False),
        "sigkill": (None, "SIGKILL", False),
        "sigterm": (None, "SIGTERM", False),
        "exception": (1, None, False),
    }
    assert "ValueError: the worker program failed" in result.stderr


EXITED_AFTER_DISCONNECT = program("""
if cluster.is_primary:
    def show(worker, when):
        emit(mode=worker.mode, when=when, value=worker.exited_after_disconnect)

    def on_online(worker):
        show(worker, "online")
        if worker.mode == "disconnect":
            worker.disconnect()
            show(worker, "called")
        elif worker.mode == "kill":
            worker.kill()
            show(worker, "called")
        else:
            worker.send("end")

    for mode in ("disconnect", "kill", "crash", "clean"):
        worker = cluster.fork({"MODE": mode})
        worker.mode = mode
        show(worker, "fork")
        worker.on("online", lambda w=worker: on_online(w))
        worker.on("disconnect", lambda w=worker: show(w, "disconnect"))
        worker.on("exit", lambda code, sig, w=worker: show(w, "exit"))
    cluster.run()
else:
    mode = os.environ["MODE"]
    if mode in ("crash", "clean"):
        ended = __import__("threading").Event()
        cluster.worker.on("message", lambda msg, handle: ended.set())
        ended.wait()
        sys.exit(1 if mode == "crash" else 0)
    cluster.worker.wait_disconnected()
""")


def test_exited_after_disconnect_tells_planned_from_unasked(cluster_env: Cluster) -> None:
    result = cluster_env.run(EXITED_AFTER_DISCONNECT)
    assert result.returncode == 0, result.stderr
    values: dict[str, dict[str, object]] = {}
    for e in result.events():
        values.setdefault(str(e["mode"]), {})[str(e["when"])] = e["value"]
    asked = {"fork": None, "online": None, "called": True, "disconnect": True, "exit": True}
    unasked = {"fork": None, "online": None, "disconnect": False, "exit": False}
    assert values == {"disconnect": asked, "kill": asked, "crash": unasked, "clean": unasked}


REMOVAL = program("""
if cluster.is_primary:
    def check(worker, source, name):
        emit(id=worker.id, source=source, event=name, listed=worker.id in cluster.workers)

    for name in ("disconnect", "exit"):
        cluster.on(name, lambda worker, *rest, name=name: check(worker, "cluster", name))
    for mode in ("disconnect", "kill", "crash"):
        worker = cluster.fork({"MODE": mode})
        for name in ("disconnect", "exit"):
            worker.on(name, lambda *rest, w=worker, name=name: check(w, "worker", name))
        if mode == "disconnect":
            worker.on("online", worker.disconnect)
        elif mode == "kill":
            worker.on("online", lambda w=worker: w.kill("SIGKILL"))
    cluster.run()
    emit(event="done", left=len(cluster.workers))
else:
    if os.environ["MODE"] == "crash":
        os._exit(7)
    cluster.worker.wait_disconnected()
""")


def test_worker_leaves_workers_before_the_later_event(cluster_env: Cluster) -> None:
    result = cluster_env.run(REMOVAL)
    assert result.returncode == 0, result.stderr
    events = result.events()
    assert events[-1] == {"event": "done", "left": 0}
    for worker_id in (1, 2, 3):
        mine = [e for e in events if e.get("id") == worker_id]
        assert len(mine) == 4, mine
        first, second = mine[0]["event"], mine[2]["event"]
        assert {first, second} == {"disconnect", "exit"}
        # Listed during the earlier event (both listeners), gone for the later one.
        assert [(e["event"], e["listed"]) for e in mine] == [
            (first, True),
            (first, True),
            (second, False),
            (second, False),
        ]


PRIMARY_DISCONNECT = program("""
if cluster.is_primary:
    worker = cluster.fork()

    # Asked once the worker listens for 'disconnect' (its channel runs from boot).
    @worker.on("message")
    def on_ready(msg, handle):
        emit(side="primary", returned_self=worker.disconnect() is worker)

    worker.on(
        "disconnect",
        lambda: emit(side="primary", event="disconnect", connected=worker.is_connected(),
                     planned=worker.exited_after_disconnect),
    )
    worker.on("exit", lambda code, sig: emit(side="primary", event="exit", code=code, signal=sig))
    cluster.run()
else:
    import time

    @cluster.worker.on("disconnect")
    def on_disconnect():
        # A listener that takes a moment still runs before wait_disconnected() returns.
        time.sleep(0.1)
        emit(side="worker", event="disconnect", connected=cluster.worker.is_connected())

    cluster.worker.send("ready")
    cluster.worker.wait_disconnected()
    emit(side="worker", event="program resumed")
""")


def test_disconnect_from_the_primary(cluster_env: Cluster) -> None:
    result = cluster_env.run(PRIMARY_DISCONNECT)
    assert result.returncode == 0, result.stderr
    events = result.events()
    primary = [e for e in events if e["side"] == "primary"]
    assert primary == [
        {"side": "primary", "returned_self": True},
        {"side": "primary", "event": "disconnect", "connected": False, "planned": True},
        {"side": "primary", "event": "exit", "code": 0, "signal": None},
    ]
    assert [e for e in events if e["side"] == "worker"] == [
        {"side": "worker", "event": "disconnect", "connected": False},
        {"side": "worker", "event": "program resumed"},
    ]


WORKER_DISCONNECT = program("""
if cluster.is_primary:
    worker = cluster.fork()
    worker.on(
        "disconnect",
        lambda: emit(side="primary", event="disconnect", planned=worker.exited_after_disconnect),
    )
    worker.on("exit", lambda code, sig: emit(side="primary", event="exit", code=code, signal=sig))
    cluster.run()
else:
    me = cluster.worker
    emit(side="worker", connected=me.is_connected(), dead=me.is_dead())
    emit(side="worker", returned_self=me.disconnect() is me)
    me.wait_disconnected()
    emit(side="worker", connected=me.is_connected(), planned=me.exited_after_disconnect)
""")


def test_disconnect_from_the_worker(cluster_env: Cluster) -> None:
    result = cluster_env.run(WORKER_DISCONNECT)
    assert result.returncode == 0, result.stderr
    events = result.events()
    assert [e for e in events if e["side"] == "worker"] == [
        {"side": "worker", "connected": True, "dead": False},
        {"side": "worker", "returned_self": True},
        {"side": "worker", "connected": False, "planned": True},
    ]
    assert [e for e in events if e["side"] == "primary"] == [
        {"side": "primary", "event": "disconnect", "planned": True},
        {"side": "primary", "event": "exit", "code": 0, "signal": None},
    ]


CLUSTER_DISCONNECT_CALLBACK = program("""
if cluster.is_primary:
    workers = [cluster.fork() for _ in range(3)]
    online = []
    calls = []

    def done():
        calls.append(1)
        emit(event="callback", calls=len(calls),
             connected=[w.is_connected() for w in workers])

    @cluster.on("online")
    def on_online(worker):
        online.append(worker)
        if len(online) == len(workers):
            cluster.disconnect(done)
            emit(event="returned", calls=len(calls))

    cluster.on("disconnect", lambda worker: emit(event="disconnect", id=worker.id))
    cluster.run()
    emit(event="run returned", calls=len(calls), left=len(cluster.workers))
else:
    cluster.worker.wait_disconnected()
""")


def test_cluster_disconnect_calls_back_once_all_are_disconnected(cluster_env: Cluster) -> None:
    result = cluster_env.run(CLUSTER_DISCONNECT_CALLBACK)
    assert result.returncode == 0, result.stderr
    events = result.events()
    names = [e["event"] for e in events]
    # Never called synchronously; called once, after every worker's 'disconnect'.
    assert events[0] == {"event": "returned", "calls": 0}
    assert names.count("disconnect") == 3
    callback = names.index("callback")
    assert callback > max(i for i, n in enumerate(names) if n == "disconnect")
    assert events[callback] == {"event": "callback", "calls": 1, "connected": [False] * 3}
    assert events[-1] == {"event": "run returned", "calls": 1, "left": 0}


AWAIT_CLUSTER_DISCONNECT = program("""
import asyncio


async def main():
    everyone_online = asyncio.Event()
    workers = [cluster.fork() for _ in range(2)]
    cluster.on(
        "online",
        lambda worker: all(w.state == "online" for w in workers) and everyone_online.set(),
    )
    await everyone_online.wait()
    await cluster.disconnect()
    emit(event="disconnected", connected=[w.is_connected() for w in workers])
    await cluster.wait_closed()
    emit(event="closed", dead=[w.is_dead() for w in workers], left=len(cluster.workers))


if cluster.is_primary:
    asyncio.run(main())
else:
    cluster.worker.wait_disconnected()
""")


def test_await_cluster_disconnect(cluster_env: Cluster) -> None:
    result = cluster_env.run(AWAIT_CLUSTER_DISCONNECT)
    assert result.returncode == 0, result.stderr
    assert result.events() == [
        {"event": "disconnected", "connected": [False, False]},
        {"event": "closed", "dead": [True, True], "left": 0},
    ]


DISCONNECT_NO_WORKERS = program("""
import asyncio

calls = []
cluster.disconnect(lambda: calls.append("callback"))
emit(event="returned", calls=list(calls))
cluster.run()
emit(event="run returned", calls=list(calls))


async def main():
    await cluster.disconnect()
    emit(event="awaited")


asyncio.run(main())
""")


def test_cluster_disconnect_without_workers(cluster_env: Cluster) -> None:
    result = cluster_env.run(DISCONNECT_NO_WORKERS)
    assert result.returncode == 0, result.stderr
    assert result.events() == [
        {"event": "returned", "calls": []},
        {"event": "run returned", "calls": ["callback"]},
        {"event": "awaited"},
    ]


KILL_DESTROY = program("""
if cluster.is_primary:
    first, second = cluster.fork(), cluster.fork()
    first.on("online", first.kill)
    second.on("online", lambda: second.destroy("SIGKILL"))
    cluster.on(
        "exit",
        lambda worker, code, sig: emit(
            id=worker.id, code=code, signal=sig, planned=worker.exited_after_disconnect,
            dead=worker.is_dead(),
        ),
    )
    cluster.run()
else:
    cluster.worker.wait_disconnected()
""")


def test_kill_and_destroy_signal_the_worker(cluster_env: Cluster) -> None:
    result = cluster_env.run(KILL_DESTROY)
    assert result.returncode == 0, result.stderr
    assert sorted(result.events(), key=lambda e: int(str(e["id"]))) == [
        {"id": 1, "code": None, "signal": "SIGTERM", "planned": True, "dead": True},
        {"id": 2, "code": None, "signal": "SIGKILL", "planned": True, "dead": True},
    ]


WORKER_SIDE_KILL = program("""
if cluster.is_primary:
    cluster.on(
        "exit",
        lambda worker, code, sig: emit(
            mode=worker.mode, code=code, signal=sig, planned=worker.exited_after_disconnect
        ),
    )
    for mode in ("main", "main-sigkill", "listener"):
        worker = cluster.fork({"MODE": mode})
        worker.mode = mode
    # The listener worker says when it listens; only then is it told to die.
    cluster.on("message", lambda worker, msg, handle: worker.send("die"))
    cluster.run()
else:
    mode = os.environ["MODE"]
    if mode == "main":
        cluster.worker.kill()
    elif mode == "main-sigkill":
        cluster.worker.kill("SIGKILL")
    else:
        # From the channel thread, inside a 'message' listener.
        cluster.worker.on("message", lambda msg, handle: cluster.worker.kill("SIGKILL"))
        cluster.worker.send("listening")
    cluster.worker.wait_disconnected()
    emit(mode=mode, error="still running after kill()")
""")


def test_worker_kills_itself(cluster_env: Cluster) -> None:
    result = cluster_env.run(WORKER_SIDE_KILL)
    assert result.returncode == 0, result.stderr
    assert sorted(result.events(), key=lambda e: str(e["mode"])) == [
        {"mode": "listener", "code": None, "signal": "SIGKILL", "planned": True},
        {"mode": "main", "code": None, "signal": "SIGTERM", "planned": True},
        {"mode": "main-sigkill", "code": None, "signal": "SIGKILL", "planned": True},
    ]


RUN_RETURNS = program("""
if cluster.is_primary:
    quick = cluster.fork({"MODE": "quick"})
    slow = cluster.fork({"MODE": "slow"})
    # The slow worker ends only once the quick one is gone.
    quick.on("exit", lambda code, sig: slow.send("go"))
    cluster.on("exit", lambda worker, code, sig: emit(event="exit", id=worker.id, code=code))
    cluster.run()
    emit(event="run returned", left=len(cluster.workers), dead=[quick.is_dead(), slow.is_dead()])
else:
    if os.environ["MODE"] == "slow":
        go = __import__("threading").Event()
        cluster.worker.on("message", lambda msg, handle: go.set())
        go.wait()
        sys.exit(5)
""")


def test_run_returns_when_the_last_worker_is_gone(cluster_env: Cluster) -> None:
    result = cluster_env.run(RUN_RETURNS)
    assert result.returncode == 0, result.stderr
    assert result.events() == [
        {"event": "exit", "id": 1, "code": 0},
        {"event": "exit", "id": 2, "code": 5},
        {"event": "run returned", "left": 0, "dead": [True, True]},
    ]


RUN_NO_WORKERS = program("""
cluster.on("setup", lambda settings: emit(event="setup"))
cluster.setup_primary()
cluster.run()
emit(event="run returned")
""")


def test_run_without_workers_delivers_pending_events_and_returns(cluster_env: Cluster) -> None:
    result = cluster_env.run(RUN_NO_WORKERS, timeout=10)
    assert result.returncode == 0, result.stderr
    assert result.events() == [{"event": "setup"}, {"event": "run returned"}]


WAIT_CLOSED = program("""
import asyncio


async def on_exit(worker, code, sig):
    await asyncio.sleep(0)  # a coroutine listener finishes before wait_closed() returns
    emit(event="exit", id=worker.id, code=code)


async def main():
    cluster.on("exit", on_exit)
    cluster.fork({"CODE": "0"})
    cluster.fork({"CODE": "2"})
    await cluster.wait_closed()
    emit(event="closed", left=len(cluster.workers))


if cluster.is_primary:
    asyncio.run(main())
else:
    sys.exit(int(os.environ["CODE"]))
""")


def test_wait_closed_in_an_asyncio_primary(cluster_env: Cluster) -> None:
    result = cluster_env.run(WAIT_CLOSED)
    assert result.returncode == 0, result.stderr
    events = result.events()
    assert events[-1] == {"event": "closed", "left": 0}
    assert sorted(events[:-1], key=lambda e: int(str(e["id"]))) == [
        {"event": "exit", "id": 1, "code": 0},
        {"event": "exit", "id": 2, "code": 2},
    ]


LISTENER_RAISES = program("""
if cluster.is_primary:
    workers = [cluster.fork() for _ in range(2)]

    @cluster.on("online")
    def explode(worker):
        if all(w.state == "online" for w in workers):
            emit(event="pids", pids=[w.process.pid for w in workers])
            raise RuntimeError("boom in a listener")

    cluster.run()
    emit(event="run returned")
else:
    cluster.worker.wait_disconnected()
""")


def test_listener_exception_ends_the_primary_and_its_workers(cluster_env: Cluster) -> None:
    result = cluster_env.run(LISTENER_RAISES, timeout=15)
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert "in explode" in result.stderr
    assert "RuntimeError: boom in a listener" in result.stderr
    events = result.events()
    assert [e["event"] for e in events] == ["pids"]
    pids = [int(p) for p in events[0]["pids"]]  # type: ignore[attr-defined]
    assert wait_all_gone(pids, timeout=2) == []


STATE = program("""
if cluster.is_primary:
    worker = cluster.fork()

    def show(when):
        emit(when=when, state=worker.state, connected=worker.is_connected(),
             dead=worker.is_dead())

    show("fork")
    worker.on("online", lambda: (show("online"), worker.send("ready?")))
    worker.on("message", lambda msg, handle: (emit(when="worker", **msg), worker.disconnect()))
    worker.on("disconnect", lambda: show("disconnect"))
    worker.on("exit", lambda code, sig: show("exit"))
    cluster.run()
else:
    me = cluster.worker
    me.on(
        "message",
        lambda msg, handle: me.send({"connected": me.is_connected(), "dead": me.is_dead()}),
    )
    me.wait_disconnected()
""")


def test_state_is_connected_and_is_dead(cluster_env: Cluster) -> None:
    result = cluster_env.run(STATE)
    assert result.returncode == 0, result.stderr
    events = {e["when"]: e for e in result.events()}
    assert events["fork"] == {"when": "fork", "state": "none", "connected": True, "dead": False}
    assert events["online"] == {
        "when": "online",
        "state": "online",
        "connected": True,
        "dead": False,
    }
    assert events["worker"] == {"when": "worker", "connected": True, "dead": False}
    # At 'disconnect' the process may or may not have been reaped yet.
    assert events["disconnect"]["connected"] is False
    assert events["disconnect"]["state"] in ("disconnected", "dead")
    assert events["exit"] == {"when": "exit", "state": "dead", "connected": False, "dead": True}


IS_MASTER = program("""
import warnings


def check(side):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = cluster.is_master
    emit(side=side, value=value, primary=cluster.is_primary, worker=cluster.is_worker,
         warnings=[w.category.__name__ for w in caught],
         mentions_is_primary=all("is_primary" in str(w.message) for w in caught))


if cluster.is_primary:
    check("primary")
    cluster.fork()
    cluster.run()
else:
    check("worker")
""")


def test_is_master_is_a_deprecated_alias(cluster_env: Cluster) -> None:
    result = cluster_env.run(IS_MASTER)
    assert result.returncode == 0, result.stderr
    assert sorted(result.events(), key=lambda e: str(e["side"])) == [
        {
            "side": "primary",
            "value": True,
            "primary": True,
            "worker": False,
            "warnings": ["DeprecationWarning"],
            "mentions_is_primary": True,
        },
        {
            "side": "worker",
            "value": False,
            "primary": False,
            "worker": True,
            "warnings": ["DeprecationWarning"],
            "mentions_is_primary": True,
        },
    ]


WORKER_ID = program("""
if cluster.is_primary:
    workers = [cluster.fork() for _ in range(3)]
    emit(event="forked", ids=[w.id for w in workers], keys=sorted(cluster.workers))
    cluster.on(
        "message",
        lambda worker, msg, handle: emit(event="message", primary_id=worker.id, worker_id=msg),
    )
    cluster.run()
else:
    cluster.worker.send(cluster.worker.id)
""")


def test_worker_id_is_the_same_on_both_sides(cluster_env: Cluster) -> None:
    result = cluster_env.run(WORKER_ID)
    assert result.returncode == 0, result.stderr
    events = result.events()
    assert events[0] == {"event": "forked", "ids": [1, 2, 3], "keys": [1, 2, 3]}
    pairs = sorted((e["primary_id"], e["worker_id"]) for e in events[1:])
    assert pairs == [(1, 1), (2, 2), (3, 3)]


PROGRAM_ENDS = program("""
if cluster.is_primary:
    cluster.fork()
    cluster.on(
        "exit",
        lambda worker, code, sig: emit(code=code, signal=sig,
                                       planned=worker.exited_after_disconnect),
    )
    cluster.run()
else:
    # A message listener and an open channel do not keep the worker alive.
    cluster.worker.on("message", lambda msg, handle: None)
    print("worker program done", flush=True)
""")


def test_worker_program_ending_ends_the_worker(cluster_env: Cluster) -> None:
    result = cluster_env.run(PROGRAM_ENDS, timeout=10)
    assert result.returncode == 0, result.stderr
    assert "worker program done" in result.lines
    assert result.events() == [{"code": 0, "signal": None, "planned": False}]
