"""Rolling reload: ``cluster.reload()`` and SIGHUP replace every worker with no failed request.

Two clients in the test process hit the server for the whole reload: one reusing a
keep-alive connection (a response carrying ``Connection: close`` means "reconnect",
which is not an error), one opening a fresh connection per request. Every failure
(refused, reset, incomplete response) is counted; there must be none.
"""

from __future__ import annotations

import http.client
import signal
import threading
import time

from tests.conftest import Cluster, Live, LiveProgram, free_port

SERVER = """
import asyncio, json, os, sys
from http.server import BaseHTTPRequestHandler
import pycluster as cluster

def emit(**kw):
    sys.stdout.write(json.dumps(kw) + "\\n")
    sys.stdout.flush()

class Web(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def do_GET(self):
        if self.path == "/reload":
            cluster.worker.send("reload")
        body = str(cluster.worker.id).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

async def reload_on_request(worker, msg, handle):
    # A coroutine listener: reload() is awaitable inside the primary's loop.
    try:
        await cluster.reload(batch=1)
    except RuntimeError as exc:
        emit(ev="reload_failed", error=str(exc), workers=sorted(cluster.workers))
        return
    emit(ev="reloaded", workers=sorted(cluster.workers))

if cluster.is_primary:
    cluster.setup_primary(
        restart=os.environ.get("RESTART", "never"),
        start_timeout=float(os.environ.get("START_TIMEOUT", "60")),
        shutdown_timeout=float(os.environ.get("SHUTDOWN_TIMEOUT", "5")),
    )
    cluster.on("listening", lambda w, a: emit(ev="listening", id=w.id, slot=w.slot))
    cluster.on("disconnect", lambda w: emit(ev="disconnect", id=w.id))
    cluster.on("exit", lambda w, code, sig: emit(
        ev="exit", id=w.id, code=code, sig=sig, planned=w.exited_after_disconnect
    ))
    cluster.on("restart", lambda old, new: emit(ev="restart", old=old.id, new=new.id, slot=new.slot))
    cluster.on("message", reload_on_request)
    cluster.fork()
    cluster.fork()
    cluster.run()
    emit(ev="done")
else:
    if os.path.exists("broken"):
        sys.exit("this build is broken")
    if os.path.exists("slow") and cluster.worker.id > 2:
        import time
        time.sleep(3600)  # a boot that never finishes: only a kill ends it
    with cluster.http.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Web) as server:
        server.serve_forever()
"""


class Hammer(threading.Thread):
    """Requests ``/`` in a loop until stopped, counting answers per worker and failures."""

    def __init__(self, port: int, keep_alive: bool) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.keep_alive = keep_alive
        self.answers: dict[int, int] = {}
        self.failures: list[str] = []
        self.reconnects = 0
        self.halt = threading.Event()

    def run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self.halt.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                body = response.read()
                if response.status != 200 or not body.isdigit():
                    raise ValueError(f"bad answer {response.status} {body!r}")
                worker = int(body)
                self.answers[worker] = self.answers.get(worker, 0) + 1
                if not self.keep_alive or response.will_close:
                    self.reconnects += response.will_close
                    conn.close()
                    conn = None
            except Exception as exc:
                self.failures.append(repr(exc))
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(0.003)  # leave the two cores some room for the cluster
        if conn is not None:
            conn.close()

    def finish(self) -> None:
        self.halt.set()
        self.join(15)


def hammer(port: int) -> list[Hammer]:
    clients = [Hammer(port, keep_alive=True), Hammer(port, keep_alive=False)]
    for c in clients:
        c.start()
    return clients


def get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return int(conn.getresponse().read())
    finally:
        conn.close()


def reload_under_load(program: LiveProgram, port: int, trigger: object) -> list[Hammer]:
    """Hit the server, reload it through ``trigger()``, hit it some more; the clients."""
    program.wait_for(ev="listening", count=2)
    clients = hammer(port)
    try:
        # Some traffic on the old workers first.
        while sum(sum(c.answers.values()) for c in clients) < 20:
            time.sleep(0.01)
        trigger()  # type: ignore[operator]
        program.wait_for(ev="exit", id=2, timeout=20)
        program.wait_for(ev="listening", id=4)
        served = sum(sum(c.answers.get(w, 0) for w in (3, 4)) for c in clients)
        # And some on the new ones, through the same keep-alive client.
        while sum(sum(c.answers.get(w, 0) for w in (3, 4)) for c in clients) < served + 20:
            time.sleep(0.01)
    finally:
        for c in clients:
            c.finish()
    return clients


def check(clients: list[Hammer], events: list[dict[str, object]]) -> None:
    for c in clients:
        assert c.failures == [], (c.keep_alive, c.failures)
        if c.keep_alive:
            # A draining worker told it to reconnect, at least once.
            assert c.reconnects >= 1
        assert set(c.answers) <= {1, 2, 3, 4}
        assert set(c.answers) & {1, 2} and set(c.answers) & {3, 4}, c.answers
    restarts = [(e["old"], e["new"], e["slot"]) for e in events if e["ev"] == "restart"]
    assert restarts == [(1, 3, 0), (2, 4, 1)]
    order = [(e["ev"], e.get("id")) for e in events]
    # batch=1: one at a time, each replacement listening before its predecessor goes.
    assert order.index(("listening", 3)) < order.index(("disconnect", 1))
    assert order.index(("exit", 1)) < order.index(("listening", 4))
    assert order.index(("listening", 4)) < order.index(("disconnect", 2))
    for e in events:
        if e["ev"] == "exit":
            assert (e["code"], e["sig"], e["planned"]) == (0, None, True), e


def stop(program: LiveProgram) -> list[dict[str, object]]:
    program.proc.send_signal(signal.SIGTERM)
    result = program.finish(15)
    assert result.returncode == 0, result.stderr
    return result.events()


def test_reload_call_drops_no_request(live: Live) -> None:
    port = free_port()
    program = live.start(SERVER, env={"PORT": str(port)})
    clients = reload_under_load(program, port, lambda: get(port, "/reload"))
    program.wait_for(ev="reloaded")
    events = stop(program)
    check(clients, events)
    (reloaded,) = [e for e in events if e["ev"] == "reloaded"]
    assert reloaded["workers"] == [3, 4]


def test_sighup_drops_no_request(live: Live) -> None:
    port = free_port()
    program = live.start(SERVER, env={"PORT": str(port)})
    clients = reload_under_load(program, port, lambda: program.proc.send_signal(signal.SIGHUP))
    events = stop(program)
    check(clients, events)
    assert not [e for e in events if e["ev"] == "reloaded"]


BLOCKING = """
import json, os, sys
import pycluster as cluster

def emit(**kw):
    sys.stdout.write(json.dumps(kw) + "\\n")
    sys.stdout.flush()

if cluster.is_primary:
    order = []
    cluster.on("fork", lambda w: order.append(["fork", w.id]))
    cluster.on("exit", lambda w, code, sig: order.append(["exit", w.id]))
    for _ in range(3):
        cluster.fork()
    # Outside any loop, reload() blocks until every worker has been replaced.
    result = cluster.reload(batch=2)
    emit(ev="reloaded", result=result, workers=sorted(cluster.workers), order=order)
    cluster.shutdown()
    emit(ev="done", workers=len(cluster.workers))
else:
    cluster.worker.wait_disconnected()
"""


def test_blocking_reload_in_batches(cluster_env: Cluster) -> None:
    result = cluster_env.run(BLOCKING, timeout=20)
    assert result.returncode == 0, result.stderr
    events = {e["ev"]: e for e in result.events()}
    reloaded = events["reloaded"]
    assert reloaded["result"] is None
    assert reloaded["workers"] == [4, 5, 6]
    order = [tuple(x) for x in reloaded["order"]]  # type: ignore[attr-defined]
    # batch=2: two replacements start together; the third only once both
    # predecessors of the first batch are gone.
    assert order[:3] == [("fork", 1), ("fork", 2), ("fork", 3)]
    assert order.index(("fork", 5)) < order.index(("exit", 1))
    assert order.index(("fork", 5)) < order.index(("exit", 2))
    assert max(order.index(("exit", 1)), order.index(("exit", 2))) < order.index(("fork", 6))
    assert events["done"]["workers"] == 0


def test_failed_replacement_keeps_the_old_worker(live: Live) -> None:
    port = free_port()
    program = live.start(SERVER, env={"PORT": str(port)})
    program.wait_for(ev="listening", count=2)
    # From now on the program cannot start: every replacement dies before listening.
    (live.cluster.tmp / "broken").touch()
    get(port, "/reload")
    (failed,) = program.wait_for(ev="reload_failed")
    assert "failed to start" in str(failed["error"])
    assert failed["workers"] == [1, 2]
    program.wait_for_stderr("this build is broken")
    program.wait_for_stderr("exited before it was ready")
    # The old workers were never disconnected and still take connections.
    assert not [e for e in program.events() if e.get("ev") == "disconnect" and e["id"] in (1, 2)]
    assert {get(port, "/") for _ in range(4)} == {1, 2}
    events = stop(program)
    exits = {e["id"]: (e["code"], e["planned"]) for e in events if e["ev"] == "exit"}
    # The first replacement failed, so the reload stopped: worker 2 was never tried.
    assert exits[3] == (1, False) and 4 not in exits
    assert exits[1] == (0, True) and exits[2] == (0, True)
    assert "reload stopped: 1 worker(s) keep the old code" in program.stderr


def test_a_replacement_that_is_never_ready_fails_the_reload_and_keeps_the_old(
    live: Live,
) -> None:
    port = free_port()
    program = live.start(
        SERVER, env={"PORT": str(port), "START_TIMEOUT": "1", "RESTART": "on-failure"}
    )
    program.wait_for(ev="listening", count=2)
    (live.cluster.tmp / "slow").touch()
    get(port, "/reload")
    (failed,) = program.wait_for(ev="reload_failed")
    assert "was not ready within 1 s (start_timeout)" in str(failed["error"]), failed
    assert failed["workers"] == [1, 2]
    program.wait_for(ev="exit", id=3)
    program.wait_for_stderr(
        "was not ready within 1 s (start_timeout): killing it; keeping worker 1"
    )
    # The old workers serve on, and the killed replacement was not restarted in their slot.
    assert {get(port, "/") for _ in range(4)} == {1, 2}
    time.sleep(0.5)
    events = stop(program)
    exits = {e["id"]: (e["code"], e["sig"], e["planned"]) for e in events if e["ev"] == "exit"}
    assert exits == {3: (None, "SIGKILL", False), 1: (0, None, True), 2: (0, None, True)}
    assert [(e["old"], e["new"]) for e in events if e["ev"] == "restart"] == [(1, 3)]


def test_stop_during_a_reload_ends_it_and_forks_nothing_more(live: Live) -> None:
    port = free_port()
    program = live.start(SERVER, env={"PORT": str(port), "SHUTDOWN_TIMEOUT": "1"})
    program.wait_for(ev="listening", count=2)
    (live.cluster.tmp / "slow").touch()
    get(port, "/reload")
    program.wait_for(ev="restart", old=1, new=3)
    program.proc.send_signal(signal.SIGTERM)
    result = program.finish(15)
    assert result.returncode == 0, result.stderr
    events = result.events()
    (failed,) = [e for e in events if e["ev"] == "reload_failed"]
    assert failed["error"] == "reload cancelled: the cluster is shutting down"
    # Worker 2 never got a replacement; the stuck one was killed at the shutdown timeout.
    assert [(e["old"], e["new"]) for e in events if e["ev"] == "restart"] == [(1, 3)]
    exits = {e["id"]: (e["code"], e["sig"]) for e in events if e["ev"] == "exit"}
    assert exits == {1: (0, None), 2: (0, None), 3: (None, "SIGKILL")}
    assert events[-1] == {"ev": "done"}
