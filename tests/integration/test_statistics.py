"""``cluster.statistics()``: a per-worker snapshot, checked against what really happened.

The test makes requests, so it knows how many connections each worker got; the
workers report their own pids; a worker killed from outside is replaced, which
shows in its slot's restart count and nowhere else.
"""

from __future__ import annotations

import http.client
import os
import signal

from tests.conftest import Live, LiveProgram, free_port

PROGRAM = """
import json, os, sys
from http.server import BaseHTTPRequestHandler
import pycluster as cluster

def emit(**kw):
    sys.stdout.write(json.dumps(kw) + "\\n")
    sys.stdout.flush()

class Web(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/stats":
            cluster.worker.send("stats")
        body = str(cluster.worker.id).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

if cluster.is_primary:
    cluster.setup_primary(restart="on-failure", restart_delay=0.05)
    cluster.on("listening", lambda w, a: emit(ev="listening", id=w.id, slot=w.slot))
    cluster.on("message", lambda w, msg, h: emit(ev="stats", stats=cluster.statistics()))
    cluster.fork()
    cluster.fork()
    cluster.run()
else:
    try:
        cluster.statistics()
    except RuntimeError as exc:
        emit(ev="worker", id=cluster.worker.id, pid=os.getpid(), error=str(exc))
    with cluster.http.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Web) as server:
        server.serve_forever()
"""

KEYS = {"id", "slot", "pid", "state", "uptime", "connections", "restarts", "rss"}


def get(port: int, path: str = "/") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return int(conn.getresponse().read())
    finally:
        conn.close()


def snapshot(program: LiveProgram, port: int, answers: dict[int, int]) -> list[dict[str, object]]:
    """Ask for statistics through a request (counted in ``answers`` too)."""
    before = len([e for e in program.events() if e.get("ev") == "stats"])
    worker = get(port, "/stats")
    answers[worker] = answers.get(worker, 0) + 1
    found = program.wait_for(ev="stats", count=before + 1)
    return found[before]["stats"]  # type: ignore[return-value]


def test_statistics_per_worker(live: Live) -> None:
    port = free_port()
    program = live.start(PROGRAM, env={"PORT": str(port)})
    program.wait_for(ev="listening", count=2)
    pids = {int(e["id"]): int(e["pid"]) for e in program.wait_for(ev="worker", count=2)}  # type: ignore[call-overload]
    # The primary-only call fails loudly in a worker.
    assert all("primary" in str(e["error"]) for e in program.events() if e.get("ev") == "worker")
    answers: dict[int, int] = {}
    for _ in range(6):
        worker = get(port)
        answers[worker] = answers.get(worker, 0) + 1
    first = snapshot(program, port, answers)
    assert [set(s) for s in first] == [KEYS, KEYS]
    assert [(s["id"], s["slot"], s["pid"]) for s in first] == [(1, 0, pids[1]), (2, 1, pids[2])]
    for s in first:
        assert s["state"] == "listening"
        assert s["restarts"] == 0
        # Every connection the test made went to one of them, and is counted there.
        assert s["connections"] == answers[s["id"]]  # type: ignore[index]
        assert 0 < s["uptime"] < 60  # type: ignore[operator]
        assert 1 << 20 < s["rss"] < 1 << 30  # type: ignore[operator]

    # Killed from outside (not planned): replaced in slot 0, which counts one restart.
    os.kill(pids[1], signal.SIGKILL)
    program.wait_for(ev="listening", id=3)
    (new,) = [e for e in program.wait_for(ev="worker", count=3) if e["id"] == 3]
    second = snapshot(program, port, answers)
    assert [(s["id"], s["slot"], s["pid"], s["restarts"]) for s in second] == [
        (2, 1, pids[2], 0),
        (3, 0, new["pid"], 1),
    ]
    by_id = {s["id"]: s for s in second}
    assert by_id[2]["uptime"] > first[1]["uptime"]  # type: ignore[operator]
    assert by_id[3]["uptime"] < by_id[2]["uptime"]  # type: ignore[operator]
    assert by_id[3]["connections"] == answers.get(3, 0)
    assert by_id[2]["connections"] == answers[2]
    program.proc.send_signal(signal.SIGTERM)
    assert program.finish(15).returncode == 0
