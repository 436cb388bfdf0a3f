"""A worker cannot reach into the primary: descriptors, memory, other workers.

Each program here runs a worker that tries what a compromised or buggy worker
might: name every descriptor number of the primary with ``fd=N``, announce a
frame of gigabytes on its channel. The primary refuses, stays small, and keeps
serving the other workers.
"""

from __future__ import annotations

import errno
import json

from tests.conftest import Cluster, Commands

FD_SCAN = """
import errno, json, os, socket, sys
import pycluster as cluster

def emit(**kw):
    sys.stdout.write(json.dumps(kw) + "\\n")
    sys.stdout.flush()

if cluster.is_primary:
    # What the program gives its workers: a listening TCP socket and a bound UDP one.
    given = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    # What it does not: a connected pair of its own, and a bound but silent TCP socket.
    client = socket.create_connection(given.getsockname())
    peer, _ = given.accept()
    quiet = socket.socket()
    quiet.bind(("127.0.0.1", 0))
    other = cluster.fork({"ROLE": "other"})  # its channel and hand-off sockets exist too

    def on_message(worker, msg, handle):
        if msg == "listening":
            cluster.fork({"ROLE": "scanner"})
            return
        client.sendall(b"still connected")
        emit(allowed=msg["allowed"], errors=msg["errors"],
             given=given.fileno(), udp=udp.fileno(),
             pair=peer.recv(100).decode())
        cluster.disconnect()

    cluster.on("message", on_message)
    cluster.run()
elif os.environ["ROLE"] == "other":
    cluster.create_server(("127.0.0.1", 0))
    cluster.worker.send("listening")
    cluster.worker.wait_disconnected()
else:
    allowed, errors = {}, set()
    for fd in range(0, 128):
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            try:
                srv = cluster.create_server(None, fd=fd, type=kind)
            except OSError as exc:
                errors.add(errno.errorcode.get(exc.errno, str(exc.errno)))
            else:
                allowed[str(fd)] = srv.type == socket.SOCK_DGRAM and "udp" or "tcp"
                srv.close()
    cluster.worker.send({"allowed": allowed, "errors": sorted(errors)})
    cluster.worker.wait_disconnected()
"""


def test_fd_names_only_sockets_the_primary_was_given(cluster_env: Cluster) -> None:
    result = cluster_env.run(FD_SCAN, timeout=60)
    assert result.returncode == 0, result.stderr
    (report,) = [e for e in result.events() if "allowed" in e]
    # Exactly the program's listening and bound sockets; never a channel, a hand-off
    # socket, the port another worker serves, a connection, or a silent socket.
    assert report["allowed"] == {str(report["given"]): "tcp", str(report["udp"]): "udp"}
    assert report["errors"] == [errno.errorcode[errno.EBADF]]
    # The primary's own connection was left alone.
    assert report["pair"] == "still connected"


CLI_SCAN = """
import json, socket
import pycluster as cluster

allowed = []
for fd in range(0, 128):
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        try:
            cluster.create_server(None, fd=fd, type=kind).close()
        except OSError:
            pass
        else:
            allowed.append(fd)
print(json.dumps({"allowed": allowed}), flush=True)
"""


def test_fd_never_names_the_command_lines_control_socket(
    cluster_env: Cluster, commands: Commands
) -> None:
    script = cluster_env.write("scan.py", CLI_SCAN)
    control = cluster_env.tmp / "control.sock"
    command = commands.start(
        "run", "-w", "1", "--control", str(control), "--restart", "never", str(script)
    )
    (line,) = command.wait_line('{"allowed"', timeout=30)
    assert json.loads(line[line.index("{") :]) == {"allowed": []}
    command.proc.terminate()
    command.finish()


MESSAGE_SIZE = """
import importlib.util, json, os, struct, sys
import pycluster as cluster

def emit(**kw):
    sys.stdout.write(json.dumps(kw) + "\\n")
    sys.stdout.flush()

LIMIT = 1 << 20

# JSON encodes a string of n characters in n + 2 bytes, and orjson (the "fast" extra)
# adds a newline (see pycluster._ipc.serialization).
QUOTES = 3 if importlib.util.find_spec("orjson") else 2

def try_send(who, sender, size):
    try:
        sent = sender.send("x" * (size - QUOTES))
    except ValueError as exc:
        emit(who=who, size=size, error="ValueError", names=str(LIMIT) in str(exc))
    else:
        emit(who=who, size=size, sent=sent)

if cluster.is_primary:
    cluster.setup_primary(max_message_size=LIMIT)
    bad = cluster.fork({"ROLE": "bad"})
    good = cluster.fork({"ROLE": "good"})
    bad.on("disconnect", lambda: emit(event="bad disconnect"))
    bad.on("exit", lambda code, sig: emit(event="bad exit", code=code))

    @good.on("message")
    def on_message(msg, handle):
        if msg == "your turn":
            try_send("primary", good, LIMIT + 1)  # refused, nothing sent
            try_send("primary", good, LIMIT)  # the largest allowed
        elif isinstance(msg, str):
            emit(who="primary got", size=len(msg) + QUOTES)
        else:
            emit(who="worker got", size=msg)
            good.disconnect()

    cluster.run()
    emit(event="run returned")
elif os.environ["ROLE"] == "bad":
    # Announce one byte over the limit and trickle a little: the primary must
    # cut this worker off at the header, not buffer what it announces.
    raw = cluster.worker._backend.channel._sock
    raw.sendall(struct.pack("!2sBBBBHQ", b"PC", 1, 1, 0, 0, 0, LIMIT + 1) + b"x" * 1000)
    cluster.worker.wait_disconnected()
else:
    got = []
    cluster.worker.on("message", lambda msg, handle: cluster.worker.send(len(msg) + QUOTES))
    try_send("worker", cluster.worker, LIMIT + 1)
    try_send("worker", cluster.worker, LIMIT)
    cluster.worker.send("your turn")
    cluster.worker.wait_disconnected()
"""


def test_message_size_limit_both_ways(cluster_env: Cluster) -> None:
    result = cluster_env.run(MESSAGE_SIZE, timeout=30)
    assert result.returncode == 0, result.stderr
    events = result.events()
    limit = 1 << 20
    # The worker announcing too much is cut off at once (its channel ends, it exits).
    assert {"event": "bad disconnect"} in events
    assert {"event": "bad exit", "code": 0} in events
    assert f"exceeds the limit of {limit} bytes" in result.stderr
    # send() over the limit raises in the sender and sends nothing; at the limit it goes.
    sends = [e for e in events if e.get("who") in ("worker", "primary")]
    assert sends == [
        {"who": "worker", "size": limit + 1, "error": "ValueError", "names": True},
        {"who": "worker", "size": limit, "sent": True},
        {"who": "primary", "size": limit + 1, "error": "ValueError", "names": True},
        {"who": "primary", "size": limit, "sent": True},
    ]
    # Each side received exactly the other's largest message.
    assert [e for e in events if str(e.get("who")).endswith(" got")] == [
        {"who": "primary got", "size": limit},
        {"who": "worker got", "size": limit},
    ]
    assert events[-1] == {"event": "run returned"}
