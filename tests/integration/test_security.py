"""A hostile worker cannot run code in the primary, nor take it down.

The worker programs here bypass ``send()`` and write raw frames onto their channel,
as a compromised worker (say, one running with a lowered ``uid``) could. Each code
execution payload would create a marker file if the primary unpickled it with a
stock unpickler.
"""

from __future__ import annotations

import pytest

from tests.conftest import Cluster

HOSTILE = """
import json, os, pickle, subprocess, sys
import pycluster as cluster
from pycluster._ipc.framing import Codec, Kind, encode_header

def emit(**kw):
    # One write per line: workers share this stdout.
    sys.stdout.write(json.dumps(kw) + "\\n")
    sys.stdout.flush()

MARKER = os.path.abspath("pwned")

class Popener:
    def __reduce__(self):
        return (subprocess.Popen, (["touch", MARKER],))

def raw(payload, codec=Codec.ADVANCED):
    # Straight onto the socket: no encode(), no send().
    frame = encode_header(Kind.USER, codec, len(payload)) + payload
    cluster.worker._backend.channel._sock.sendall(frame)

if cluster.is_primary:
    cluster.setup_primary(serialization=sys.argv[1])
    worker = cluster.fork()
    errors = []
    if "listen-errors" in sys.argv:
        worker.on("error", lambda exc: errors.append(str(exc)))

    def on_message(message, handle):
        emit(event="message", message=message, errors=errors)
        if message == "still here":
            worker.disconnect()

    worker.on("message", on_message)
    worker.on("exit", lambda code, sig: emit(event="exit", code=code, signal=sig))
    cluster.run()
    emit(event="done", marker=os.path.exists(MARKER))
else:
    touch = f"touch {MARKER}".encode()
    raw(b"cos\\nsystem\\n(V" + touch + b"\\ntR.")
    raw(b"cbuiltins\\neval\\n(Vopen(" + repr(MARKER).encode() + b", 'w')\\ntR.")
    raw(pickle.dumps(Popener(), protocol=5))
    raw(b"\\x80\\x04\\x8c\\x05posix\\x8c\\x06system\\x93V" + touch + b"\\n\\x85R.")
    # A Fraction that would take the primary hours to build.
    raw(b"cfractions\\nFraction\\n(V1e1000000000\\ntR.")
    cluster.worker.send("still here")
    cluster.worker.wait_disconnected()
"""


@pytest.mark.parametrize("serialization", ["advanced", "json"])
def test_crafted_pickles_are_refused_and_logged(cluster_env: Cluster, serialization: str) -> None:
    """Refused, logged, and the channel keeps working; no 'error' listener is needed."""
    result = cluster_env.run(HOSTILE, serialization, timeout=30)
    assert result.returncode == 0, result.stderr
    assert not (cluster_env.tmp / "pwned").exists()
    assert result.events() == [
        {"event": "message", "message": "still here", "errors": []},
        {"event": "exit", "code": 0, "signal": None},
        {"event": "done", "marker": False},
    ]
    for name in ("os.system", "builtins.eval", "subprocess.Popen", "posix.system"):
        assert f"refusing to decode {name}" in result.stderr, result.stderr
    assert result.stderr.count("worker 1: dropped a message") == 5


def test_refusals_reach_error_listeners(cluster_env: Cluster) -> None:
    result = cluster_env.run(HOSTILE, "advanced", "listen-errors", timeout=30)
    assert result.returncode == 0, result.stderr
    assert not (cluster_env.tmp / "pwned").exists()
    message = result.events()[0]
    assert message["message"] == "still here"
    errors = message["errors"]
    assert isinstance(errors, list) and len(errors) == 5
    assert "os.system" in errors[0] and "builtins.eval" in errors[1]
    assert "subprocess.Popen" in errors[2] and "posix.system" in errors[3]
    assert "Fraction" in errors[4]


ALLOW = """
import dataclasses, datetime, json, sys
import pycluster as cluster

def emit(**kw):
    # One write per line: workers share this stdout.
    sys.stdout.write(json.dumps(kw) + "\\n")
    sys.stdout.flush()

@dataclasses.dataclass
class Point:
    x: int
    y: int

@dataclasses.dataclass
class Secret:
    value: str

if cluster.is_primary:
    cluster.setup_primary(serialization="advanced")
    cluster.allow_types(Point)
    worker = cluster.fork()
    worker.on("error", lambda exc: emit(event="error", type=type(exc).__name__, text=str(exc)))

    def on_message(message, handle):
        emit(event="message", repr=repr(message))
        if message == "done":
            worker.disconnect()

    worker.on("message", on_message)
    cluster.run()
else:
    cluster.worker.send(Point(1, 2))
    cluster.worker.send(Secret("s3cr3t"))
    cluster.worker.send({"when": datetime.date(2024, 5, 6), "tags": {"a"}})
    cluster.worker.send("done")
    cluster.worker.wait_disconnected()
"""


def test_allow_types_lets_a_dataclass_through(cluster_env: Cluster) -> None:
    result = cluster_env.run(ALLOW, timeout=30)
    assert result.returncode == 0, result.stderr
    events = result.events()
    assert [e["event"] for e in events] == ["message", "error", "message", "message"]
    assert events[0]["repr"] == "Point(x=1, y=2)"
    assert events[1]["type"] == "DecodeError"
    assert "__main__.Secret" in str(events[1]["text"])
    assert "cluster.allow_types" in str(events[1]["text"])
    assert events[2]["repr"] == "{'when': datetime.date(2024, 5, 6), 'tags': {'a'}}"
    assert events[3]["repr"] == "'done'"


BROKEN = """
import json, os, socket, sys
import pycluster as cluster
from pycluster._ipc.framing import HEADER, MAGIC, Codec, Kind, encode_header
from pycluster._ipc.fds import ancillary_for

def emit(**kw):
    # One write per line: workers share this stdout.
    sys.stdout.write(json.dumps(kw) + "\\n")
    sys.stdout.flush()

def fd_count():
    return len(os.listdir("/proc/self/fd"))

if cluster.is_primary:
    before = fd_count()
    kinds = {}
    cut_off = []

    def on_disconnect(worker):
        emit(event="disconnect", kind=kinds[worker.id])
        if kinds[worker.id] != "good":
            cut_off.append(worker.id)
            if len(cut_off) == 4:
                good.send("ping")  # the others are gone: is the good one still served?

    for kind in ("bad-header", "huge-length", "stray-fds", "wrong-count", "good"):
        w = cluster.fork({"ROLE": kind})
        kinds[w.id] = kind
        good = w  # the last one forked
    cluster.on("disconnect", on_disconnect)
    cluster.on("message", lambda w, msg, handle: (emit(event="message", kind=kinds[w.id], msg=msg), w.disconnect()))
    cluster.on("exit", lambda w, code, sig: emit(event="exit", kind=kinds[w.id], code=code))
    cluster.run()
    emit(event="done", leaked=fd_count() - before)
else:
    role = os.environ["ROLE"]
    sock = cluster.worker._backend.channel._sock
    if role == "good":
        cluster.worker.on("message", lambda msg, handle: cluster.worker.send("pong"))
    elif role == "bad-header":
        sock.sendall(b"GET / HTTP/1.1\\r\\n\\r\\n")
    elif role == "huge-length":
        sock.sendall(HEADER.pack(MAGIC, 1, Kind.USER, Codec.JSON, 0, 0, (1 << 64) - 1))
    elif role == "stray-fds":
        # Descriptors with a frame that declares none: the primary must close them.
        r, w = os.pipe()
        sock.sendmsg([encode_header(Kind.USER, Codec.JSON, 2) + b"{}"], ancillary_for([r, w, r]))
    elif role == "wrong-count":
        r, w = os.pipe()
        sock.sendmsg([encode_header(Kind.USER, Codec.JSON, 2, 3) + b"{}"], ancillary_for([r]))
    cluster.worker.wait_disconnected()
"""


def test_malformed_frames_cut_off_only_their_worker(cluster_env: Cluster) -> None:
    """A protocol error ends that worker's channel; the primary and the others carry on."""
    result = cluster_env.run(BROKEN, timeout=30)
    assert result.returncode == 0, result.stderr
    events = result.events()
    bad = {"bad-header", "huge-length", "stray-fds", "wrong-count"}
    cut_off = [e["kind"] for e in events if e["event"] == "disconnect" and e["kind"] in bad]
    assert sorted(cut_off) == sorted(bad)  # type: ignore[type-var]
    # Cut off without being asked: each exits by itself, with status 0.
    exits = {e["kind"]: e["code"] for e in events if e["event"] == "exit"}
    assert exits == {kind: 0 for kind in (*bad, "good")}
    assert {"event": "message", "kind": "good", "msg": "pong"} in events
    assert events[-1] == {"event": "done", "leaked": 0}
    assert result.stderr.count("IPC protocol error") == 4, result.stderr
    for words in ("bad magic", "exceeds the limit", "without a frame", "declares 3"):
        assert words in result.stderr
