"""Messages between the primary and a worker, over the real IPC channel.

Both codecs (JSON and "advanced" with its allow-list), ordering and volume, a message
far larger than any socket buffer, sockets passed as handles in both directions,
errors at ``send()``, messages that arrive before anyone listens, user messages
shaped like internal ones, and ``messages()`` in an asyncio worker.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import Cluster

PRELUDE = """\
import json
import os
import sys
import threading
import time

import pycluster as cluster


def emit(**kw):
    # One write per line, so lines from the primary and its workers never interleave.
    sys.stdout.write(json.dumps(kw, default=repr) + "\\n")
    sys.stdout.flush()


"""


def program(body: str) -> str:
    """A cluster program: the shared prelude (``emit``) followed by ``body``."""
    return PRELUDE + body


def by_side(events: list[dict[str, object]], side: str) -> list[dict[str, object]]:
    """The events one side (``"primary"`` or ``"worker"``) printed."""
    return [e for e in events if e.get("side") == side]


JSON_VALUES = [
    None,
    True,
    False,
    0,
    -7,
    2**60,
    1.5,
    "",
    "héllo ✓ \u0000 \n",
    [],
    {},
    [1, [2, [3]]],
    {"nested": {"list": [None, 1.25]}},
    [1, 2],
]

JSON_ROUND_TRIP = program(f"""
VALUES = {JSON_VALUES!r}

if cluster.is_primary:
    worker = cluster.fork()
    worker.on("online", lambda: [worker.send(v) for v in VALUES])
    got = []

    @worker.on("message")
    def on_message(msg, handle):
        got.append([msg, handle is None])
        if len(got) == 2 * len(VALUES):
            emit(side="primary", got=got)
            worker.disconnect()

    cluster.run()
else:
    # The worker's own values first, then an echo of everything the primary sent.
    for value in VALUES:
        cluster.worker.send(value)
    cluster.worker.on("message", lambda msg, handle: cluster.worker.send(msg))
    cluster.worker.wait_disconnected()
""")


def test_json_messages_round_trip(cluster_env: Cluster) -> None:
    result = cluster_env.run(JSON_ROUND_TRIP)
    assert result.returncode == 0, result.stderr
    [primary] = result.events()
    expected = json.loads(json.dumps(JSON_VALUES))
    assert primary["got"] == [[v, True] for v in expected + expected]


ADVANCED = program("""
import collections
import dataclasses
import datetime
import decimal
import fractions
import pathlib
import uuid


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


def sample():
    shared = [1, 2]
    loop = []
    loop.append(loop)
    return {
        "tuple": (1, "two", (3,)),
        "set": {1, 2, 3},
        "frozenset": frozenset({"a"}),
        "bytes": bytes(range(256)),
        "bytearray": bytearray(b"xyz"),
        "complex": 1 + 2j,
        "datetime": datetime.datetime(
            2024, 2, 29, 12, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
        ),
        "date": datetime.date(2024, 1, 1),
        "time": datetime.time(1, 2, 3),
        "timedelta": datetime.timedelta(days=1, microseconds=5),
        "decimal": decimal.Decimal("3.14159265358979323846"),
        "fraction": fractions.Fraction(1, 3),
        "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "ordered": collections.OrderedDict(b=1, a=2),
        "deque": collections.deque([1, 2]),
        "path": pathlib.PurePosixPath("/srv/app"),
        "point": Point(1, 2),
        "shared": (shared, shared),
        "loop": loop,
    }


def check(got):
    \"\"\"Which values survived with their type, value and references.\"\"\"
    expected = sample()
    failed = []
    for key, want in expected.items():
        value = got.get(key)
        if key == "loop":
            ok = type(value) is list and value[0] is value
        elif key == "shared":
            ok = value == want and value[0] is value[1]
        else:
            ok = type(value) is type(want) and value == want
            if key == "ordered":
                ok = ok and list(value) == ["b", "a"]
        if not ok:
            failed.append(key)
    return {"keys": len(expected), "failed": failed}


if cluster.is_primary:
    cluster.setup_primary(serialization="advanced")
    cluster.allow_types(Point)
    worker = cluster.fork()
    reports = []

    @worker.on("message")
    def on_message(msg, handle):
        if msg == "ready":
            worker.send(sample())
        elif "keys" in msg:
            emit(side="worker", **msg)
        else:
            reports.append(check(msg))
        if len(reports) == 2:
            emit(side="primary", echoed=reports[0], own=reports[1])
            worker.disconnect()

    cluster.run()
else:
    def on_message(msg, handle):
        cluster.worker.send(check(msg))
        cluster.worker.send(msg)
        cluster.worker.send(sample())

    cluster.worker.on("message", on_message)
    # Sent only now: see test_advanced_message_for_a_class_the_worker_defines_later.
    cluster.worker.send("ready")
    cluster.worker.wait_disconnected()
""")


def test_advanced_serialization_keeps_python_types(cluster_env: Cluster) -> None:
    result = cluster_env.run(ADVANCED)
    assert result.returncode == 0, result.stderr
    events = result.events()
    intact = {"keys": 19, "failed": []}
    assert by_side(events, "worker") == [{"side": "worker", **intact}]
    assert by_side(events, "primary") == [{"side": "primary", "echoed": intact, "own": intact}]


EARLY_CLASS = program("""
if cluster.is_worker:
    # A round trip through the primary: its reply comes after the message it sent
    # at 'fork', so that message reached this worker before Point exists here.
    cluster.create_server(("127.0.0.1", 0)).close()

import dataclasses


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


if cluster.is_primary:
    cluster.setup_primary(serialization="advanced")
    cluster.allow_types(Point)
    cluster.on("fork", lambda worker: worker.send(Point(1, 2)))
    worker = cluster.fork()

    @worker.on("message")
    def on_message(msg, handle):
        if msg == "ready":
            worker.send("after")
        else:
            emit(side="worker", got=msg)
            worker.disconnect()

    cluster.run()
else:
    got = []

    def on_message(msg, handle):
        got.append(repr(msg))
        if msg == "after":
            cluster.worker.send(got)

    cluster.worker.on("message", on_message)
    cluster.worker.send("ready")
    cluster.worker.wait_disconnected()
""")


def test_advanced_message_for_a_class_the_worker_defines_later(cluster_env: Cluster) -> None:
    result = cluster_env.run(EARLY_CLASS)
    assert result.returncode == 0, result.stderr
    assert result.events() == [{"side": "worker", "got": ["Point(x=1, y=2)", "'after'"]}]


REFUSED = program("""
class Secret:
    pass


class Sneaky:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


if cluster.is_primary:
    cluster.setup_primary(serialization="advanced")
    worker = cluster.fork()
    worker.on("error", lambda exc: emit(side="primary", error=str(exc)))

    @worker.on("message")
    def on_message(msg, handle):
        emit(side="primary", message=msg)
        worker.disconnect()

    cluster.run()
else:
    cluster.worker.send(Secret())
    cluster.worker.send({"payload": Sneaky()})
    cluster.worker.send("still connected")
    cluster.worker.wait_disconnected()
""")


def test_advanced_decoding_in_the_primary_refuses_unlisted_types(cluster_env: Cluster) -> None:
    result = cluster_env.run(REFUSED)
    assert result.returncode == 0, result.stderr
    events = result.events()
    errors = [str(e["error"]) for e in events if "error" in e]
    assert len(errors) == 2, events
    assert "__main__.Secret" in errors[0]
    assert "system" in errors[1]
    # The channel survives a refused message, and the crafted one ran nothing.
    assert events[-1] == {"side": "primary", "message": "still connected"}
    assert not (cluster_env.tmp / "pwned").exists()
    assert "dropped a message" in result.stderr


MANY = program("""
N = 100_000

if cluster.is_primary:
    worker = cluster.fork()
    state = {"next": 0, "in_order": True}

    @worker.on("online")
    def blast():
        for i in range(N):
            worker.send(i)

    @worker.on("message")
    def on_message(msg, handle):
        if isinstance(msg, dict):
            emit(side="worker", **msg)
            return
        state["in_order"] &= msg == state["next"]
        state["next"] += 1
        if state["next"] == N:
            emit(side="primary", received=state["next"], in_order=state["in_order"])
            worker.disconnect()

    cluster.run()
else:
    state = {"next": 0, "in_order": True}
    all_in = threading.Event()

    def on_message(msg, handle):
        state["in_order"] &= msg == state["next"]
        state["next"] += 1
        if state["next"] == N:
            all_in.set()

    cluster.worker.on("message", on_message)
    all_in.wait()
    cluster.worker.send({"received": state["next"], "in_order": state["in_order"]})
    for i in range(N):
        cluster.worker.send(i)
    cluster.worker.wait_disconnected()
""")


@pytest.mark.timeout(60)
def test_many_small_messages_arrive_in_order(cluster_env: Cluster) -> None:
    result = cluster_env.run(MANY, timeout=50)
    assert result.returncode == 0, result.stderr
    assert result.events() == [
        {"side": "worker", "received": 100_000, "in_order": True},
        {"side": "primary", "received": 100_000, "in_order": True},
    ]


PING_PONG = program("""
N = 3_000
SERIALIZATION = sys.argv[1]
CPUS = sorted(os.sched_getaffinity(0))
if sys.argv[2] == "one-cpu":
    # Primary and workers on one CPU: the primary yields to the worker it answered
    # before reading its reply (channel.py); split, that read comes back empty.
    os.sched_setaffinity(0, CPUS[:1])

if cluster.is_primary:
    cluster.setup_primary(serialization=SERIALIZATION)
    workers = [cluster.fork(), cluster.fork()]
    seen = {w.id: [] for w in workers}
    done = set()

    def pong(worker):
        def on_message(msg, handle):
            seen[worker.id].append(msg["n"] if msg["ok"] else None)
            if msg["n"] + 1 < N:
                # Answer in the listener, twice: a message, then one with a callback
                # (the channel's other send path), as a chatty primary would.
                worker.send({"n": msg["n"] + 1, "half": 0})
                worker.send({"n": msg["n"] + 1, "half": 1}, callback=lambda err: None)
            else:
                done.add(worker.id)
                if len(done) == len(workers):
                    emit(side="primary", counts=[len(s) for s in seen.values()],
                         in_order=all(s == list(range(N)) for s in seen.values()))
                    cluster.disconnect()
        worker.on("message", on_message)

    for w in workers:
        pong(w)
        w.on("online", lambda w=w: w.send({"n": 0, "half": 1}))
    cluster.run()
else:
    # Every number after 0 comes as half 0, then half 1; the reply goes out after half 1.
    state = {"expect": (0, 1), "ok": True}

    def on_message(msg, handle):
        n, half = msg["n"], msg["half"]
        state["ok"] &= (n, half) == state["expect"]
        state["expect"] = (n, 1) if half == 0 else (n + 1, 0)
        if half == 1:
            if sys.argv[2] == "slow-replies" and n % 3 == 0:
                # Later than the primary polls for a reply (channel.py): it gives up
                # and the reply wakes its loop.
                time.sleep(0.0003)
            cluster.worker.send({"n": n, "ok": state["ok"]})

    cluster.worker.on("message", on_message)
    cluster.worker.wait_disconnected()
""")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("serialization", ["json", "advanced"])
@pytest.mark.parametrize("placement", ["one-cpu", "any-cpu", "slow-replies"])
def test_ping_pong_with_two_workers_keeps_every_exchange_in_order(
    cluster_env: Cluster, serialization: str, placement: str
) -> None:
    result = cluster_env.run(PING_PONG, serialization, placement, timeout=50)
    assert result.returncode == 0, result.stderr
    assert result.events() == [{"side": "primary", "counts": [3_000, 3_000], "in_order": True}]


BIG = program("""
import hashlib

SIZE = 64 << 20


def make_blob():
    if SERIALIZATION == "advanced":
        return os.urandom(SIZE)
    return os.urandom(SIZE // 2).hex()


def digest(blob):
    return hashlib.sha256(blob if isinstance(blob, bytes) else blob.encode()).hexdigest()


def describe(msg):
    blob = msg["blob"]
    return {"type": type(blob).__name__, "size": len(blob), "intact": digest(blob) == msg["digest"]}


SERIALIZATION = sys.argv[1]

if cluster.is_primary:
    # A 64 MiB blob plus its envelope is just over the default max_message_size.
    cluster.setup_primary(serialization=SERIALIZATION, max_message_size=SIZE + (1 << 20))
    blob = make_blob()
    worker = cluster.fork()
    worker.on("online", lambda: worker.send({"blob": blob, "digest": digest(blob)}))

    @worker.on("message")
    def on_message(msg, handle):
        if "blob" in msg:
            emit(side="primary", **describe(msg))
            worker.disconnect()
        else:
            emit(side="worker", **msg)

    cluster.run()
else:
    received = threading.Event()

    def on_message(msg, handle):
        cluster.worker.send(describe(msg))
        received.set()

    cluster.worker.on("message", on_message)
    received.wait()
    blob = make_blob()
    cluster.worker.send({"blob": blob, "digest": digest(blob)})
    cluster.worker.wait_disconnected()
""")


@pytest.mark.parametrize(("serialization", "kind"), [("json", "str"), ("advanced", "bytes")])
def test_a_64_mib_message_arrives_intact(
    cluster_env: Cluster, serialization: str, kind: str
) -> None:
    result = cluster_env.run(BIG, serialization, timeout=40)
    assert result.returncode == 0, result.stderr
    intact = {"type": kind, "size": 64 << 20, "intact": True}
    assert result.events() == [{"side": "worker", **intact}, {"side": "primary", **intact}]


SOCKET_TO_WORKER = program("""
import socket

if cluster.is_primary:
    worker = cluster.fork()
    mine, theirs = socket.socketpair()

    @worker.on("online")
    def hand_over():
        sent = worker.send("take this", theirs)
        emit(side="primary", sent=sent, closed_in_sender=theirs.fileno() == -1)

    @worker.on("message")
    def on_message(msg, handle):
        emit(side="worker", **msg)
        emit(side="primary", read=mine.recv(100).decode())
        mine.close()
        worker.disconnect()

    cluster.run()
else:
    def on_message(msg, handle):
        report = {"msg": msg, "type": type(handle).__name__, "family": handle.family.name}
        handle.sendall(b"written by the worker")
        handle.close()
        cluster.worker.send(report)

    cluster.worker.on("message", on_message)
    cluster.worker.wait_disconnected()
""")


def test_socket_travels_from_primary_to_worker(cluster_env: Cluster) -> None:
    result = cluster_env.run(SOCKET_TO_WORKER)
    assert result.returncode == 0, result.stderr
    assert result.events() == [
        {"side": "primary", "sent": True, "closed_in_sender": True},
        {"side": "worker", "msg": "take this", "type": "socket", "family": "AF_UNIX"},
        {"side": "primary", "read": "written by the worker"},
    ]


SOCKET_TO_PRIMARY = program("""
import socket

if cluster.is_primary:
    worker = cluster.fork()
    got = []

    @worker.on("message")
    def on_message(msg, handle):
        if isinstance(msg, dict):
            emit(side="worker", **msg)
            worker.disconnect()
            return
        got.append(msg)
        emit(side="primary", msg=msg, type=type(handle).__name__, family=handle.family.name)
        handle.sendall(f"primary wrote on the {msg} socket".encode())
        handle.close()
        if len(got) == 2:
            worker.send("written")

    cluster.run()
else:
    server = socket.create_server(("127.0.0.1", 0))
    kept = socket.create_connection(server.getsockname())
    kept_peer, _ = server.accept()
    given = socket.create_connection(server.getsockname())
    given_peer, _ = server.accept()
    server.close()

    def on_message(msg, handle):
        kept.sendall(b" and the worker still can")
        kept.close()
        cluster.worker.send({
            "kept_open": kept_open,
            "closed": closed,
            "kept_peer": kept_peer.recv(200).decode(),
            "given_peer": given_peer.recv(200).decode(),
        })

    cluster.worker.send("kept", kept, keep_open=True)
    kept_open = kept.fileno() != -1
    cluster.worker.send("given", given)
    closed = given.fileno() == -1
    cluster.worker.on("message", on_message)  # the primary's answer waits for it
    cluster.worker.wait_disconnected()
""")


def test_connected_socket_travels_from_worker_to_primary(cluster_env: Cluster) -> None:
    result = cluster_env.run(SOCKET_TO_PRIMARY)
    assert result.returncode == 0, result.stderr
    events = result.events()
    assert by_side(events, "primary") == [
        {"side": "primary", "msg": "kept", "type": "socket", "family": "AF_INET"},
        {"side": "primary", "msg": "given", "type": "socket", "family": "AF_INET"},
    ]
    [worker] = by_side(events, "worker")
    assert worker["kept_open"] is True
    assert worker["closed"] is True
    # The peer received a chunk or two; what it read so far is a prefix of the whole.
    whole = "primary wrote on the kept socket and the worker still can"
    assert whole.startswith(str(worker["kept_peer"]))
    assert str(worker["kept_peer"]).startswith("primary wrote on the kept socket")
    assert worker["given_peer"] == "primary wrote on the given socket"


UNENCODABLE = program("""
SERIALIZATION = sys.argv[1]


class Widget:
    pass


def unencodable():
    # JSON cannot encode an arbitrary object; pickle cannot encode a generator.
    return Widget() if SERIALIZATION == "json" else (i for i in range(3))


if cluster.is_primary:
    cluster.setup_primary(serialization=SERIALIZATION)
    worker = cluster.fork()

    @worker.on("online")
    def try_send():
        try:
            worker.send({"thing": unencodable()})
        except TypeError as exc:
            emit(side="primary", error=str(exc))
        worker.send("after the error")

    @worker.on("message")
    def on_message(msg, handle):
        emit(side="worker", **msg)
        worker.disconnect()

    cluster.run()
else:
    try:
        cluster.worker.send([unencodable()])
    except TypeError as exc:
        error = str(exc)
    cluster.worker.on(
        "message", lambda msg, handle: cluster.worker.send({"error": error, "then": msg})
    )
    cluster.worker.wait_disconnected()
""")


@pytest.mark.parametrize(
    ("serialization", "type_name"), [("json", "Widget"), ("advanced", "generator")]
)
def test_unencodable_message_raises_type_error_at_send(
    cluster_env: Cluster, serialization: str, type_name: str
) -> None:
    result = cluster_env.run(UNENCODABLE, serialization)
    assert result.returncode == 0, result.stderr
    events = result.events()
    [primary] = by_side(events, "primary")
    [worker] = by_side(events, "worker")
    assert type_name in str(primary["error"])
    assert type_name in str(worker["error"])
    # The channel still works after the refused send.
    assert worker["then"] == "after the error"


SEND_AFTER_EXIT = program("""
if cluster.is_primary:
    worker = cluster.fork()

    def attempt(when):
        def callback(error):
            emit(side="primary", when=when, callback=type(error).__name__,
                 connection_error=isinstance(error, ConnectionError))
        emit(side="primary", when=when, returned=worker.send("too late", callback=callback))

    worker.on("disconnect", lambda: attempt("disconnect"))
    worker.on("exit", lambda code, sig: attempt("exit"))
    cluster.run()
else:
    cluster.worker.disconnect()
    cluster.worker.wait_disconnected()
    errors = []
    returned = cluster.worker.send("too late", callback=errors.append)
    emit(side="worker", returned=returned, callback=[type(e).__name__ for e in errors],
         connection_error=all(isinstance(e, ConnectionError) for e in errors))
""")


def test_send_on_a_closed_channel_returns_false(cluster_env: Cluster) -> None:
    result = cluster_env.run(SEND_AFTER_EXIT)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    events = result.events()
    assert by_side(events, "worker") == [
        {
            "side": "worker",
            "returned": False,
            "callback": ["ChannelClosedError"],
            "connection_error": True,
        }
    ]
    primary = by_side(events, "primary")
    for when in ("disconnect", "exit"):
        mine = [e for e in primary if e["when"] == when]
        assert {"side": "primary", "when": when, "returned": False} in mine
        assert {
            "side": "primary",
            "when": when,
            "callback": "ChannelClosedError",
            "connection_error": True,
        } in mine


HELD = program("""
if cluster.is_primary:
    cluster.on("fork", lambda worker: [worker.send(i) for i in (1, 2, 3)])
    worker = cluster.fork()
    worker.send(0)
    worker.on("online", lambda: [worker.send(i) for i in (4, 5, 6)])

    @worker.on("message")
    def on_message(msg, handle):
        emit(side="worker", got=msg)
        worker.disconnect()

    cluster.run()
else:
    # A round trip through the primary: its reply comes after everything it sent
    # at 'fork' and 'online', so those messages are here before we listen.
    cluster.create_server(("127.0.0.1", 0)).close()
    got = []

    def on_message(msg, handle):
        got.append(msg)
        if len(got) == 7:
            cluster.worker.send(got)

    cluster.worker.on("message", on_message)
    cluster.worker.wait_disconnected()
""")


def test_messages_sent_before_the_worker_listens_are_held(cluster_env: Cluster) -> None:
    result = cluster_env.run(HELD)
    assert result.returncode == 0, result.stderr
    assert result.events() == [{"side": "worker", "got": [0, 1, 2, 3, 4, 5, 6]}]


LOOKALIKES = [
    {"act": "disconnect"},
    {"act": "reply", "seq": 1},
    {"act": "queryServer", "seq": 2, "address": "0.0.0.0", "port": 80},
    {"act": "online"},
    {"act": "exitedAfterDisconnect"},
    {"act": "listening", "port": 80},
    {"act": "newconn", "key": "x"},
    {"cmd": "NODE_CLUSTER", "act": "disconnect"},
    "disconnect",
    ["act", "disconnect"],
]

LOOKALIKE = program(f"""
LOOKALIKES = {LOOKALIKES!r}

if cluster.is_primary:
    worker = cluster.fork()
    worker.on("online", lambda: [worker.send(m) for m in LOOKALIKES + ["end"]])
    got = []

    @worker.on("message")
    def on_message(msg, handle):
        got.append(msg)
        if msg == "end":
            emit(side="primary", got=got, state=worker.state, connected=worker.is_connected(),
                 planned=worker.exited_after_disconnect)
            worker.disconnect()

    cluster.run()
else:
    for message in LOOKALIKES:
        cluster.worker.send(message)
    cluster.worker.on("message", lambda msg, handle: cluster.worker.send(msg))
    cluster.worker.wait_disconnected()
""")


def test_user_messages_that_look_internal_are_delivered_unchanged(cluster_env: Cluster) -> None:
    result = cluster_env.run(LOOKALIKE)
    assert result.returncode == 0, result.stderr
    assert result.events() == [
        {
            "side": "primary",
            "got": LOOKALIKES + LOOKALIKES + ["end"],
            "state": "online",
            "connected": True,
            "planned": None,
        }
    ]


ASYNC_ITERATOR = program("""
import asyncio

if cluster.is_primary:
    worker = cluster.fork()
    worker.on("online", lambda: [worker.send(i) for i in (1, 2, 3)])
    replies = []

    @worker.on("message")
    def on_message(msg, handle):
        replies.append(msg)
        if len(replies) == 3:
            emit(side="primary", replies=replies)
            worker.disconnect()

    worker.on("exit", lambda code, sig: emit(side="primary", code=code))
    cluster.run()
else:
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        task = asyncio.create_task(ticker())
        got = []
        async for msg, handle in cluster.worker.messages():
            got.append([msg, handle])
            cluster.worker.send(msg * 10)
        task.cancel()
        # The loop kept running while the iterator waited.
        emit(side="worker", got=got, loop_ran=ticks > 0, connected=cluster.worker.is_connected())

    asyncio.run(main())
""")


def test_messages_iterator_in_an_asyncio_worker(cluster_env: Cluster) -> None:
    result = cluster_env.run(ASYNC_ITERATOR)
    assert result.returncode == 0, result.stderr
    assert result.events() == [
        {"side": "primary", "replies": [10, 20, 30]},
        {
            "side": "worker",
            "got": [[1, None], [2, None], [3, None]],
            "loop_ran": True,
            "connected": False,
        },
        {"side": "primary", "code": 0},
    ]


LAST_WORDS = program("""
import socket, time
if cluster.is_primary:
    got = []

    def on_message(worker, msg, handle):
        got.append([msg, handle is not None])
        if handle is not None:
            handle.close()

    cluster.on("message", on_message)
    # The primary is busy while the worker writes its last messages and exits.
    cluster.on("online", lambda worker: time.sleep(0.5))
    cluster.on("exit", lambda worker, code, sig: emit(side="primary", code=code, got=got))
    cluster.fork()
    cluster.run()
else:
    a, b = socket.socketpair()
    for i in range(5):
        cluster.worker.send(i, a, keep_open=True)
    cluster.worker.send("last")
    try:
        cluster.worker.send("a pipe is no socket", os.pipe())
    except TypeError as exc:
        cluster.worker.send(str(exc))
    os._exit(0)
""")


def test_messages_written_before_exit_all_arrive_before_exit(cluster_env: Cluster) -> None:
    result = cluster_env.run(LAST_WORDS)
    assert result.returncode == 0, result.stderr
    [primary] = by_side(result.events(), "primary")
    # A read stops at every frame that carries a descriptor: draining must go on
    # until the socket is empty, not stop at the first short read.
    assert primary["got"] == [
        *([i, True] for i in range(5)),
        ["last", False],
        ["a handle sent with a message must be a socket, not tuple", False],
    ]


TRANSPORT_SOCKET = program("""
import asyncio, socket
if cluster.is_primary:
    def on_message(worker, msg, handle):
        # The connection arrives as a real socket; its peer is still in the worker.
        handle.sendall(b"hello from the primary")
        handle.close()

    cluster.on("message", on_message)
    cluster.fork()
    cluster.run()
else:
    async def main():
        a, b = socket.socketpair()
        _reader, writer = await asyncio.open_connection(sock=a)
        # asyncio's TransportSocket is no socket.socket, but it is a socket.
        cluster.worker.send("take it", writer.get_extra_info("socket"))
        b.settimeout(10)
        emit(side="worker", got=b.recv(64).decode())
        writer.close()
        cluster.worker.disconnect()

    asyncio.run(main())
""")


def test_a_transport_socket_can_be_sent(cluster_env: Cluster) -> None:
    result = cluster_env.run(TRANSPORT_SOCKET)
    assert result.returncode == 0, result.stderr
    assert by_side(result.events(), "worker") == [
        {"side": "worker", "got": "hello from the primary"}
    ]
