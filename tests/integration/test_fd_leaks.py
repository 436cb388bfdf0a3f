"""No descriptor leaks: handles passed both ways leave the descriptor tables as they were.

Both programs count ``/proc/self/fd`` in the process itself, around the work, and
print the difference (with the leftover descriptors' targets, to make a failure
readable).
"""

from __future__ import annotations

import pytest

from tests.conftest import Cluster

PRELUDE = """
import json, os, socket, sys
import pycluster as cluster

def emit(**kw):
    # One write per line: workers share this stdout.
    sys.stdout.write(json.dumps(kw) + "\\n")
    sys.stdout.flush()

def fds():
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[name] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # the directory's own descriptor, already closed
    return out

def leaked(before):
    after = fds()
    return {fd: target for fd, target in after.items() if before.get(fd) != target}
"""

PRIMARY_SIDE = (
    PRELUDE
    + """
N = int(sys.argv[1])
ROUNDS = 10

def handles():
    # A connected pair end, a listening TCP socket and a UDP socket per round.
    a, b = socket.socketpair()
    keep.append(b)
    lst = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    return [a, lst, udp]

def start_round(n):
    workers = [cluster.fork() for _ in range(n)]
    for w in workers:
        def on_online(w=w):
            for i in range(ROUNDS):
                for h in handles():
                    connected = _connected(h)
                    w.send({"i": i}, h)
                    if not connected:
                        h.close()  # send() closes only connected stream sockets
            w.send("echo-done")
        w.on("online", on_online)

        def on_message(msg, handle, w=w):
            if handle is not None:
                received.append(handle.type)
                handle.close()
            if msg == "finished":
                w.disconnect()
        w.on("message", on_message)

def _connected(s):
    try:
        s.getpeername()
        return True
    except OSError:
        return False

keep, received = [], []
if cluster.is_primary:
    # Warm-up round: whatever the primary sets up once is set up now.
    start_round(1)
    cluster.run()
    for s in keep:
        s.close()
    keep.clear()
    received.clear()
    before = fds()
    start_round(N)
    cluster.run()
    for s in keep:
        s.close()
    emit(event="primary", leaked=leaked(before), received=len(received), workers=len(cluster.workers))
else:
    before = fds()
    def on_message(msg, handle):
        if handle is not None:
            # Send it back (closed here since connected), or close it.
            if handle.type == socket.SOCK_STREAM and msg["i"] % 2 == 0:
                cluster.worker.send({"back": msg["i"]}, handle)
                if handle.fileno() != -1:
                    handle.close()
            else:
                handle.close()
        elif msg == "echo-done":
            emit(event="worker", id=cluster.worker.id, leaked=leaked(before))
            cluster.worker.send("finished")
    cluster.worker.on("message", on_message)
    cluster.worker.wait_disconnected()
"""
)


@pytest.mark.timeout(30)
def test_primary_descriptors_after_workers_exchange_handles_and_exit(
    cluster_env: Cluster,
) -> None:
    n = 4
    result = cluster_env.run(PRIMARY_SIDE, str(n), timeout=25)
    assert result.returncode == 0, result.stderr
    events = result.events()
    primary = events[-1]
    assert primary["event"] == "primary"
    assert primary["leaked"] == {}, primary
    assert primary["workers"] == 0
    # Each worker sent back the even rounds' two stream sockets (pair end, listener).
    assert primary["received"] == n * 5 * 2
    workers = [e for e in events if e["event"] == "worker"]
    assert len(workers) == n + 1  # the warm-up worker too
    assert all(e["leaked"] == {} for e in workers), workers


WORKER_SIDE = (
    PRELUDE
    + """
COUNT = 200

if cluster.is_primary:
    before = fds()
    peers = []
    worker = cluster.fork()

    def read(sock):
        try:
            return sock.recv(16)
        except BlockingIOError:
            return None

    def on_message(msg, handle):
        if msg == "ready":
            for i in range(COUNT):
                a, b = socket.socketpair()
                b.setblocking(False)
                peers.append(b)
                worker.send(i, a)  # a connected stream: closed here once sent
            worker.send("all-sent")
        elif msg == "closed":
            # Each socket the worker got worked, then was closed at its end. The
            # worker wrote and closed before saying so, so nothing here may block: a
            # peer without EOF has a copy of its socket still open somewhere.
            ok = sum(1 for b in peers if read(b) == b"hi")
            eof = sum(1 for b in peers if read(b) == b"")
            emit(event="sockets", ok=ok, eof=eof)
            worker.disconnect()
        else:
            emit(event="worker", **msg)

    worker.on("message", on_message)
    cluster.run()
    for b in peers:
        b.close()
    emit(event="primary", leaked=leaked(before))
else:
    before = fds()
    held = []

    def on_message(msg, handle):
        if handle is not None:
            held.append(handle)
            return
        during = len(fds()) - len(before)
        for s in held:
            s.sendall(b"hi")
            s.close()
        cluster.worker.send({"got": len(held), "during": during, "leaked": leaked(before)})
        cluster.worker.send("closed")

    cluster.worker.on("message", on_message)
    cluster.worker.send("ready")  # only now: "before" must not include early sockets
    cluster.worker.wait_disconnected()
"""
)


@pytest.mark.timeout(30)
def test_worker_receives_and_closes_200_sockets(cluster_env: Cluster) -> None:
    result = cluster_env.run(WORKER_SIDE, timeout=25)
    assert result.returncode == 0, result.stderr
    events = {str(e["event"]): e for e in result.events()}
    worker = events["worker"]
    assert worker["got"] == 200
    assert worker["during"] == 200  # really held: one descriptor per socket
    assert worker["leaked"] == {}
    assert events["sockets"] == {"event": "sockets", "ok": 200, "eof": 200}
    assert events["primary"]["leaked"] == {}
