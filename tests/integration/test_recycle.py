"""Recycling: ``max_requests`` (+ jitter) and ``max_memory`` replace a worker gracefully.

The replacement is listening before its predecessor is disconnected, so a client
hitting the server throughout never sees a failed request; the retired worker ends
cleanly as a planned exit, and its replacement keeps the slot.
"""

from __future__ import annotations

import http.client
import signal
import time

from tests.conftest import Live, LiveProgram, free_port

PROGRAM = """
import json, os, sys
from http.server import BaseHTTPRequestHandler
import pycluster as cluster
from pycluster._supervisor import resident_memory

def emit(**kw):
    sys.stdout.write(json.dumps(kw) + "\\n")
    sys.stdout.flush()

hoard = []

class Web(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/grow":
            # Touched, so every page is resident.
            hoard.append(bytearray(b"x") * (int(os.environ["GROW_MB"]) << 20))
        body = str(cluster.worker.id).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

if cluster.is_primary:
    settings = json.loads(sys.argv[1])
    if "max_memory_over_primary" in settings:
        # A worker starts about as big as this primary: allow some growth above that.
        extra = settings.pop("max_memory_over_primary") << 20
        settings["max_memory"] = resident_memory(os.getpid()) + extra
    cluster.setup_primary(shutdown_timeout=3.0, **settings)
    cluster.on("listening", lambda w, a: emit(ev="listening", id=w.id, slot=w.slot))
    cluster.on("disconnect", lambda w: emit(ev="disconnect", id=w.id))
    cluster.on("exit", lambda w, code, sig: emit(
        ev="exit", id=w.id, code=code, sig=sig, planned=w.exited_after_disconnect
    ))
    cluster.on("restart", lambda old, new: emit(ev="restart", old=old.id, new=new.id, slot=new.slot))
    cluster.fork()
    cluster.run()
    emit(ev="done")
else:
    with cluster.http.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Web) as server:
        server.serve_forever()
"""


def start(live: Live, settings: str, grow_mb: int = 0) -> tuple[LiveProgram, int]:
    port = free_port()
    env = {"PORT": str(port), "GROW_MB": str(grow_mb)}
    program = live.start(PROGRAM, settings, env=env)
    program.wait_for(ev="listening", id=1)
    return program, port


def get(port: int, path: str = "/") -> int:
    """GET on a fresh connection; the id of the worker that answered."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200
        return int(response.read())
    finally:
        conn.close()


def stop(program: LiveProgram) -> list[dict[str, object]]:
    program.proc.send_signal(signal.SIGTERM)
    result = program.finish(15)
    assert result.returncode == 0, result.stderr
    return result.events()


def assert_handed_over(events: list[dict[str, object]], old: int, new: int) -> None:
    """``new`` was listening before ``old`` was disconnected, and ``old`` ended as planned."""
    order = [(e["ev"], e.get("id")) for e in events]
    assert order.index(("listening", new)) < order.index(("disconnect", old)), order
    (exit_,) = [e for e in events if e["ev"] == "exit" and e["id"] == old]
    assert (exit_["code"], exit_["sig"], exit_["planned"]) == (0, None, True)


def test_max_requests_with_jitter(live: Live) -> None:
    program, port = start(live, '{"max_requests": 3, "max_requests_jitter": 2}')
    served: list[int] = []
    deadline = time.monotonic() + 15
    # Every request must succeed, through two recyclings. Paced so the primary's
    # periodic check sees each worker's count while it serves.
    while not [e for e in program.events() if e.get("ev") == "restart" and e["old"] == 2]:
        assert time.monotonic() < deadline, program.stdout
        served.append(get(port))
        time.sleep(0.02)
    # Nothing more is sent, so worker 3 cannot be recycled in turn while 2 drains.
    program.wait_for(ev="exit", id=2)
    events = stop(program)
    restarts = [(e["old"], e["new"], e["slot"]) for e in events if e["ev"] == "restart"]
    assert restarts[:2] == [(1, 2, 0), (2, 3, 0)]
    # A worker is recycled only once it has served max_requests connections; the
    # jitter only ever adds to that.
    assert served.count(1) >= 3 and served.count(2) >= 3, served
    assert served[0] == 1 and set(served) <= {1, 2, 3}, served
    assert_handed_over(events, 1, 2)
    assert_handed_over(events, 2, 3)


def test_max_memory(live: Live) -> None:
    program, port = start(live, '{"max_memory_over_primary": 40}', grow_mb=80)
    assert get(port) == 1
    assert not [e for e in program.events() if e.get("ev") == "restart"]
    # This request makes worker 1 hold 80 MB more: over the limit, it is replaced.
    assert get(port, "/grow") == 1
    program.wait_for(ev="restart", old=1, new=2, timeout=15)
    program.wait_for(ev="exit", id=1)
    assert get(port) == 2
    events = stop(program)
    assert_handed_over(events, 1, 2)
    assert [e["new"] for e in events if e["ev"] == "restart"] == [2]
