"""Bad input never hangs or kills the primary.

A worker program that cannot start, a worker that writes garbage on its channel,
invalid settings, and primary-only calls in a worker: each fails loudly, naming the
problem, and the rest of the cluster carries on.
"""

from __future__ import annotations

import struct

import pytest

from tests.conftest import Cluster

PRELUDE = """\
import json
import os
import sys

import pycluster as cluster


def emit(**kw):
    # One write per line, so lines from the primary and its workers never interleave.
    sys.stdout.write(json.dumps(kw, default=repr) + "\\n")
    sys.stdout.flush()


def good_worker():
    \"\"\"Fork a worker of this program and check that it answers a message.\"\"\"
    cluster.setup_primary(exec=os.path.abspath(__file__), executable=sys.executable, cwd=None)
    worker = cluster.fork({"ROLE": "good"})
    worker.on("online", lambda: worker.send("ping"))

    @worker.on("message")
    def on_message(msg, handle):
        emit(event="good worker answered", msg=msg)
        worker.disconnect()

    return worker


def answer_pings():
    cluster.worker.on("message", lambda msg, handle: cluster.worker.send(f"pong to {msg}"))
    cluster.worker.wait_disconnected()


"""


def program(body: str) -> str:
    """A cluster program: the shared prelude (``emit``, ``good_worker``) and ``body``."""
    return PRELUDE + body


# A worker that cannot start: the primary reports it and keeps running a good one.
CANNOT_START = program("""
if cluster.is_primary:
    what = sys.argv[1]
    if what == "missing program":
        cluster.setup_primary(exec=os.path.abspath("not-there.py"))
    elif what == "syntax error":
        cluster.setup_primary(exec=os.path.abspath("broken.py"))
    elif what == "missing interpreter":
        cluster.setup_primary(executable=os.path.abspath("no-such-python"))
    elif what == "bad cwd":
        cluster.setup_primary(cwd=os.path.abspath("no-such-dir"))
    bad = cluster.fork({"ROLE": "bad"})
    bad.on("error", lambda exc: emit(event="error", type=type(exc).__name__, text=str(exc)))

    @bad.on("exit")
    def on_exit(code, sig):
        emit(event="exit", code=code, signal=sig, dead=bad.is_dead(), listed=bad.id in cluster.workers)
        good_worker()

    cluster.run()
    emit(event="run returned")
else:
    answer_pings()
""")

GOOD_ANSWER = {"event": "good worker answered", "msg": "pong to ping"}


@pytest.mark.parametrize(
    ("what", "code", "stderr"),
    [
        ("missing program", 2, "not-there.py"),
        ("syntax error", 1, "SyntaxError"),
    ],
)
def test_worker_program_that_fails_at_start_exits_with_its_status(
    cluster_env: Cluster, what: str, code: int, stderr: str
) -> None:
    cluster_env.write("broken.py", "def broken(:\n    pass\n")
    result = cluster_env.run(CANNOT_START, what, timeout=15)
    assert result.returncode == 0, result.stderr
    assert result.events() == [
        {"event": "exit", "code": code, "signal": None, "dead": True, "listed": False},
        GOOD_ANSWER,
        {"event": "run returned"},
    ]
    assert stderr in result.stderr


@pytest.mark.parametrize(
    ("what", "missing"), [("missing interpreter", "no-such-python"), ("bad cwd", "no-such-dir")]
)
def test_worker_that_cannot_be_spawned_emits_error_and_exit(
    cluster_env: Cluster, what: str, missing: str
) -> None:
    result = cluster_env.run(CANNOT_START, what, timeout=15)
    assert result.returncode == 0, result.stderr
    events = result.events()
    assert events[0]["event"] == "error"
    assert events[0]["type"] == "FileNotFoundError"
    assert missing in str(events[0]["text"])
    assert events[1:] == [
        {"event": "exit", "code": 127, "signal": None, "dead": True, "listed": False},
        GOOD_ANSWER,
        {"event": "run returned"},
    ]


NO_ERROR_LISTENER = program("""
if cluster.is_primary:
    cluster.setup_primary(cwd=os.path.abspath("no-such-dir"))
    bad = cluster.fork({"ROLE": "bad"})
    # No 'error' listener: the failure must not raise out of run().
    bad.on("exit", lambda code, sig: (emit(event="exit", code=code), good_worker()))
    cluster.run()
    emit(event="run returned")
else:
    answer_pings()
""")


def test_spawn_failure_without_an_error_listener_is_logged(cluster_env: Cluster) -> None:
    result = cluster_env.run(NO_ERROR_LISTENER, timeout=15)
    assert result.returncode == 0, result.stderr
    assert result.events() == [
        {"event": "exit", "code": 127},
        GOOD_ANSWER,
        {"event": "run returned"},
    ]
    assert "could not start" in result.stderr
    assert "no-such-dir" in result.stderr


def _frame(
    payload: bytes,
    *,
    magic: bytes = b"PC",
    version: int = 1,
    kind: int = 0,
    flags: int = 0,
    nfds: int = 0,
    length: int | None = None,
) -> bytes:
    """A frame as the wire format describes it, with any field set to a wrong value."""
    size = len(payload) if length is None else length
    return struct.pack("!2sBBBBHQ", magic, version, kind, 0, flags, nfds, size) + payload


GARBAGE = {
    "not a frame": b"this is not a pycluster frame at all\n",
    "wrong version": _frame(b"{}", version=9),
    "reserved flags": _frame(b'{"act":"online"}', flags=0x80),
    "huge length": _frame(b"", length=2**62),
    # One byte over the default max_message_size: cut off at the header.
    "over max_message_size": _frame(b"{}", length=(64 << 20) + 1),
    "descriptors missing": _frame(b'{"act":"online"}', nfds=1),
    "internal not json": _frame(b"{not json"),
    "primary's act": _frame(b'{"act":"disconnect"}'),
    "unknown act": _frame(b'{"act":"takeOver"}'),
    "handle not a number": _frame(b'{"act":"close","handle":[1]}'),
    "seq not a number": _frame(b'{"act":"queryServer","seq":"x","family":2,"type":1}'),
    "backlog not a number": _frame(
        b'{"act":"queryServer","seq":1,"family":2,"type":1,"port":0,"backlog":"zz"}'
    ),
    "nested too deep": _frame(b"[" * 5000 + b"]" * 5000),
    "number out of range": _frame(
        b'{"act":"queryServer","seq":1,"family":2,"type":1,"port":null,"fd":1099511627776}'
    ),
}

MALFORMED = program("""
if cluster.is_primary:
    bad = cluster.fork({"ROLE": "bad"})
    good = cluster.fork({"ROLE": "good"})
    bad.on("disconnect", lambda: (emit(event="bad disconnect"), good.send("ping")))
    bad.on("exit", lambda code, sig: emit(event="bad exit", code=code, signal=sig))

    @good.on("message")
    def on_message(msg, handle):
        emit(event="good worker answered", msg=msg, connected=good.is_connected())
        good.disconnect()

    cluster.run()
    emit(event="run returned")
elif os.environ["ROLE"] == "bad":
    raw = cluster.worker._backend.channel._sock
    raw.sendall(bytes.fromhex(sys.argv[1]))
    cluster.worker.wait_disconnected()
    emit(event="bad worker still running")
else:
    answer_pings()
""")


@pytest.mark.parametrize("garbage", list(GARBAGE), ids=list(GARBAGE))
def test_malformed_frame_ends_only_that_workers_channel(cluster_env: Cluster, garbage: str) -> None:
    result = cluster_env.run(MALFORMED, GARBAGE[garbage].hex(), timeout=15)
    assert result.returncode == 0, result.stderr
    events = result.events()
    assert events[-1] == {"event": "run returned"}
    assert {"event": "bad disconnect"} in events
    # The worker whose channel broke exits by itself, as when its primary goes away.
    assert {"event": "bad exit", "code": 0, "signal": None} in events
    assert {"event": "good worker answered", "msg": "pong to ping", "connected": True} in events
    assert "protocol error" in result.stderr.lower()


INVALID_SETTINGS = program("""
from pathlib import Path

CASES = [
    {"bogus": 1},
    {"exec": 5},
    {"args": "--not-a-list"},
    {"args": ["ok", 3]},
    {"exec_argv": None},
    {"executable": Path("/usr/bin/python3")},
    {"cwd": 3},
    {"serialization": "xml"},
    {"serialization": 1},
    {"silent": "yes"},
    {"stdio": ["inherit"]},
    {"stdio": ["inherit", "bogus", "inherit"]},
    {"stdio": ["inherit", 1.5, "inherit"]},
    {"uid": -1},
    {"uid": "root"},
    {"gid": True},
]

cluster.setup_primary(args=["kept"])
for case in CASES:
    [(key, value)] = case.items()
    try:
        cluster.setup_primary(**case)
    except (TypeError, ValueError) as exc:
        emit(key=key, error=type(exc).__name__, names_key=repr(key) in str(exc))
    else:
        emit(key=key, error=None)
emit(args=cluster.settings["args"], silent=cluster.settings["silent"])
""")


def test_invalid_settings_raise_naming_the_key(cluster_env: Cluster) -> None:
    result = cluster_env.run(INVALID_SETTINGS)
    assert result.returncode == 0, result.stderr
    *cases, last = result.events()
    assert [(c["key"], c["error"], c["names_key"]) for c in cases] == [
        ("bogus", "TypeError", True),
        ("exec", "TypeError", True),
        ("args", "TypeError", True),
        ("args", "TypeError", True),
        ("exec_argv", "TypeError", True),
        ("executable", "TypeError", True),
        ("cwd", "TypeError", True),
        ("serialization", "ValueError", True),
        ("serialization", "TypeError", True),
        ("silent", "TypeError", True),
        ("stdio", "TypeError", True),
        ("stdio", "ValueError", True),
        ("stdio", "TypeError", True),
        ("uid", "ValueError", True),
        ("uid", "TypeError", True),
        ("gid", "TypeError", True),
    ]
    # A rejected call changes nothing.
    assert last == {"args": ["kept"], "silent": False}


PRIMARY_ONLY = program("""
import asyncio

CALLS = {
    "fork": lambda: cluster.fork(),
    "setup_primary": lambda: cluster.setup_primary(silent=True),
    "disconnect": lambda: cluster.disconnect(),
    "run": lambda: cluster.run(),
    "wait_closed": lambda: asyncio.run(cluster.wait_closed()),
    "allow_types": lambda: cluster.allow_types(dict),
}

if cluster.is_primary:
    cluster.fork()
    cluster.run()
else:
    for name, call in CALLS.items():
        try:
            call()
        except RuntimeError as exc:
            emit(call=name, error="RuntimeError", says_primary="primary" in str(exc))
        except Exception as exc:
            emit(call=name, error=type(exc).__name__, text=str(exc))
        else:
            emit(call=name, error=None)
    emit(workers=cluster.workers, settings=dict(cluster.settings))
""")


def test_primary_only_calls_raise_in_a_worker(cluster_env: Cluster) -> None:
    result = cluster_env.run(PRIMARY_ONLY)
    assert result.returncode == 0, result.stderr
    *calls, last = result.events()
    assert calls == [
        {"call": name, "error": "RuntimeError", "says_primary": True}
        for name in ("fork", "setup_primary", "disconnect", "run", "wait_closed", "allow_types")
    ]
    assert last == {"workers": None, "settings": {}}
