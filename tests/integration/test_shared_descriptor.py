"""A shared listening socket (``SCHED_NONE``) stays every worker's, whatever one does.

Under the shared policy every worker holds the primary's listening socket itself: one
open file, one set of flags. What one worker's program does to its socket must not
reach the others (``setblocking(True)`` clearing ``O_NONBLOCK``), a worker that leaves
must go quiet at once (its event loop must not keep waking for connections it can no
longer take), and a descriptor copied with ``os.dup()`` is a descriptor of the same
socket, as in plain Python.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import Cluster, Commands, free_port

FLAGS = """
import fcntl, json, os, socket, sys, threading, time
import pycluster as cluster

if cluster.is_primary:
    cluster.scheduling_policy = cluster.SCHED_NONE
    workers = [cluster.fork({"ROLE": role}) for role in ("flip", "watch")]
    listening = []

    def on_listening(worker, address):
        listening.append(worker)
        if len(listening) == 2:
            for w in workers:
                w.send("go")

    def on_message(worker, message, handle):
        print(json.dumps(message), flush=True)
        reports.append(message)
        if len(reports) == 2:
            cluster.disconnect()

    reports = []
    cluster.on("listening", on_listening)
    cluster.on("message", on_message)
    cluster.run()
else:
    srv = cluster.create_server(("127.0.0.1", int(os.environ["PORT"])))
    go = threading.Event()
    cluster.worker.on("message", lambda m, h: go.set())
    go.wait(10)
    fd = srv.fileno()
    if os.environ["ROLE"] == "flip":
        # The program switches its own socket between blocking and non-blocking mode.
        deadline = time.monotonic() + 1.5
        flips = 0
        while time.monotonic() < deadline:
            srv.setblocking(True)
            srv.settimeout(None)
            srv.setblocking(False)
            flips += 1
        modes = []
        srv.setblocking(True)
        modes.append([srv.gettimeout(), srv.getblocking(), srv.timeout])
        srv.settimeout(2.5)
        modes.append([srv.gettimeout(), srv.getblocking(), srv.timeout])
        srv.setblocking(False)
        modes.append([srv.gettimeout(), srv.getblocking(), srv.timeout])
        cluster.worker.send({"flips": flips, "modes": modes})
    else:
        # Another worker's non-blocking socket: its descriptor must stay non-blocking.
        srv.setblocking(False)
        deadline = time.monotonic() + 1.2
        samples = cleared = 0
        while time.monotonic() < deadline:
            samples += 1
            if not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK:
                cleared += 1
        cluster.worker.send({"samples": samples, "cleared": cleared})
    cluster.worker.wait_disconnected()
"""


def test_one_workers_blocking_mode_never_reaches_the_others(cluster_env: Cluster) -> None:
    result = cluster_env.run(FLAGS, env={"PORT": str(free_port())}, timeout=30)
    assert result.returncode == 0, result.stderr
    events = {key: e for e in result.events() for key in e}
    assert events["flips"]["flips"] > 100  # the flipping really ran
    assert events["samples"]["samples"] > 1000
    assert events["cleared"]["cleared"] == 0
    # The program still sees the modes it asked for, as plain Python shows them.
    assert events["modes"]["modes"] == [[None, True, None], [2.5, True, 2.5], [0.0, False, 0.0]]


SELECTOR_PROGRAM = """
import json, os, selectors, signal, socket, sys, time
import pycluster as cluster

port = int(sys.argv[1])
me = cluster.worker.id
signal.signal(signal.SIGTERM, lambda *a: None)  # stops by itself once measured
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen()
s.setblocking(False)
if me == 2:
    # Holds the shared socket but never accepts (busy), until the other has measured.
    open("listening-2", "w").close()
    while not os.path.exists("measured"):
        time.sleep(0.02)
    sys.exit(0)
sel = selectors.DefaultSelector()
sel.register(s, selectors.EVENT_READ)
while not os.path.exists("listening-2"):
    time.sleep(0.02)
cluster.worker.disconnect()  # this worker leaves; its socket is retired
cluster.worker.wait_disconnected()
# A connection waits on the shared socket for the other (busy) worker.
client = socket.create_connection(("127.0.0.1", port), timeout=5)
wakeups = again = 0
deadline = time.monotonic() + 0.5
while time.monotonic() < deadline:
    for key, _ in sel.select(timeout=0.05):
        wakeups += 1
        try:
            s.accept()[0].close()
        except BlockingIOError:
            again += 1
with open("measured.tmp", "w") as f:
    json.dump({"wakeups": wakeups, "again": again, "name": list(s.getsockname())}, f)
os.rename("measured.tmp", "measured")
sel.unregister(s)
s.close()
"""


def wait_for(path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"{path.name} never appeared")
        time.sleep(0.05)


def test_a_retired_shared_socket_is_quiet_at_once(commands: Commands) -> None:
    """A worker that leaves while connections wait for the others: its selector loop
    sees nothing more (it used to wake for them in a busy loop, each accept EAGAIN)."""
    port = free_port()
    path = commands.cluster.write("selector.py", SELECTOR_PROGRAM)
    command = commands.start(
        "run", "-w", "2", "--policy", "none", "--no-control", "--restart", "never",
        str(path), str(port),
    )  # fmt: skip
    measured = commands.cluster.tmp / "measured"
    wait_for(measured)
    code, output = command.finish(30)
    seen = json.loads(measured.read_text())
    assert seen["wakeups"] == 0, (seen, output)
    assert code == 0, output


DUP_PROGRAM = """
import json, os, socket, sys

port = int(sys.argv[1])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen()
name = s.getsockname()
copy_fd = os.dup(s.fileno())
s.close()  # the copy still holds the socket, as in plain Python
copy = socket.socket(fileno=copy_fd)
seen = {"kind": [int(copy.family), int(copy.type)], "name": list(copy.getsockname())}
answers = []
for _ in range(3):
    with socket.create_connection(name, timeout=5) as client:
        copy.settimeout(5)
        try:
            conn, peer = copy.accept()
        except OSError as exc:
            answers.append(repr(exc))
        else:
            answers.append(peer[0])
            conn.close()
seen["answers"] = answers
copy.close()
with open("dup.json", "w") as f:
    json.dump(seen, f)
"""


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_an_os_dup_copy_outlives_the_close_of_its_original(commands: Commands, policy: str) -> None:
    port = free_port()
    path = commands.cluster.write("dup.py", DUP_PROGRAM)
    code, output = commands.run(
        "run", "-w", "1", "--policy", policy, "--no-control", "--restart", "never",
        str(path), str(port), timeout=30,
    )  # fmt: skip
    assert code == 0, output
    seen = json.loads((commands.cluster.tmp / "dup.json").read_text())
    assert seen == {
        "kind": [2, 1],  # AF_INET, SOCK_STREAM: the program's kind of socket
        "name": ["127.0.0.1", port],
        "answers": ["127.0.0.1"] * 3,
    }, output


DUP_AT_DISCONNECT = """
import json, os, signal, socket, sys, time
import pycluster as cluster

port = int(sys.argv[1])
signal.signal(signal.SIGTERM, lambda *a: None)  # stops by itself once measured
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen()
if cluster.worker.id == 2:
    open("listening-2", "w").close()
    while not os.path.exists("dup.json"):
        try:
            s.settimeout(0.2)
            conn, _ = s.accept()
        except TimeoutError:
            continue
        conn.sendall(b"2")
        conn.close()
    sys.exit(0)
copy = socket.socket(fileno=os.dup(s.fileno()))  # a copy the program keeps
while not os.path.exists("listening-2"):
    time.sleep(0.02)
cluster.worker.disconnect()
cluster.worker.wait_disconnected()
# After its disconnect this worker takes no connection, through any descriptor.
answers = []
for _ in range(3):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        copy.settimeout(0.3)
        try:
            copy.accept()[0].close()
            taken = "taken by the leaving worker"
        except OSError as exc:
            taken = type(exc).__name__
        client.settimeout(5)
        answers.append([taken, client.recv(8).decode()])
with open("dup.json.tmp", "w") as f:
    json.dump(answers, f)
os.rename("dup.json.tmp", "dup.json")
"""


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_an_os_dup_copy_retires_with_its_listener(commands: Commands, policy: str) -> None:
    port = free_port()
    path = commands.cluster.write("dup_disconnect.py", DUP_AT_DISCONNECT)
    command = commands.start(
        "run", "-w", "2", "--policy", policy, "--no-control", "--restart", "never",
        str(path), str(port),
    )  # fmt: skip
    result = commands.cluster.tmp / "dup.json"
    wait_for(result)
    code, output = command.finish(30)
    assert json.loads(result.read_text()) == [["TimeoutError", "2"]] * 3, output
