"""Graceful disconnect over real sockets: requests in progress finish, nothing is dropped.

``worker.disconnect()`` must stop the worker taking new connections at once, let a
request already in progress finish with its full response while other workers take
the new connections, then close the channel and let the worker exit. The slow
request waits for a ``release`` message from the primary, so the test decides when
it ends instead of sleeping.
"""

from __future__ import annotations

import pytest

from tests.conftest import Cluster, free_port

PROGRAM = """
import asyncio, http.client, json, os, socket, sys, threading
from http.server import BaseHTTPRequestHandler
import pycluster as cluster

PORT = int(os.environ["PORT"])
PORT2 = int(os.environ["PORT2"])
BODY = 200_000  # big enough to need many writes: a cut-off answer would show

def emit(**kw):
    sys.stdout.write(json.dumps(kw) + "\\n")

def ask_http(path, port=PORT):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        return [response.status, int(body.split(b":")[0]), len(body)]
    finally:
        conn.close()

def ask_line(word, port=PORT):
    with socket.create_connection(("127.0.0.1", port), timeout=20) as c:
        c.sendall(word.encode() + b"\\n")
        body = b""
        while chunk := c.recv(65536):
            body += chunk
    return [200, int(body.split(b":")[0]), len(body)]

def answer():
    return b"%d:" % cluster.worker.id + b"x" * BODY

if cluster.is_primary:
    inbox = asyncio.Queue()
    listening = asyncio.Queue()
    exits = asyncio.Queue()
    cluster.on("message", lambda w, m, h: inbox.put_nowait([w.id, m]))
    cluster.on("listening", lambda w, a: listening.put_nowait(w.id))
    cluster.on("exit", lambda w, code, sig: exits.put_nowait(
        [w.id, code, sig, w.exited_after_disconnect]))

    async def graceful():
        kind = sys.argv[2]
        ask = ask_line if kind == "aio" else ask_http
        slow, fast = ("SLOW", "FAST") if kind == "aio" else ("/slow", "/")
        for _ in range(2):
            cluster.fork({"ROLE": kind})
        for _ in range(2):
            await asyncio.wait_for(listening.get(), 15)
        before = [await asyncio.to_thread(ask, fast) for _ in range(4)]
        in_progress = asyncio.create_task(asyncio.to_thread(ask, slow))
        leaving_id, what = await asyncio.wait_for(inbox.get(), 10)
        assert what == "slow"
        leaving = cluster.workers[leaving_id]
        seen = []
        leaving.on("disconnect", lambda: seen.append("disconnect"))
        leaving.on("exit", lambda code, sig: seen.append("exit"))
        leaving.disconnect()
        # New connections go elsewhere while the slow request is still in progress.
        during = [await asyncio.to_thread(ask, fast) for _ in range(6)]
        still_running = not in_progress.done()
        leaving.send("release")
        slow_answer = await asyncio.wait_for(in_progress, 20)
        gone = await asyncio.wait_for(exits.get(), 20)
        after = [await asyncio.to_thread(ask, fast) for _ in range(3)]
        emit(leaving=leaving_id, before=before, during=during, still_running=still_running,
             slow=slow_answer, gone=gone, seen=seen, after=after)
        await cluster.disconnect()
        await cluster.wait_closed()
        emit(done=True)

    async def cycles():
        def refused(port):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            except ConnectionRefusedError:
                return True
            return False

        for cycle in range(2):
            for _ in range(8):
                cluster.fork({"ROLE": "two_ports"})
            for _ in range(16):
                await asyncio.wait_for(listening.get(), 20)
            answers = [
                (await asyncio.to_thread(ask_line, "FAST", port))[1]
                for port in (PORT, PORT2) for _ in range(8)
            ]
            await cluster.disconnect()
            gone = [await asyncio.wait_for(exits.get(), 20) for _ in range(8)]
            emit(cycle=cycle, answers=answers, gone=gone, workers=len(cluster.workers),
                 refused=[refused(PORT), refused(PORT2)])
        await cluster.wait_closed()
        emit(done=True)

    asyncio.run(globals()[sys.argv[1]]())
else:
    ROLE = os.environ["ROLE"]
    release = threading.Event()
    cluster.worker.on("message", lambda m, h: release.set())
    if ROLE in ("threading_http", "http"):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/slow":
                    cluster.worker.send("slow")
                    release.wait(20)
                body = answer()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        cls = cluster.http.ThreadingHTTPServer if ROLE == "threading_http" else cluster.http.HTTPServer
        cls(("127.0.0.1", PORT), Handler).serve_forever()
    else:
        async def on_client(reader, writer):
            line = await reader.readline()
            if line.startswith(b"SLOW"):
                cluster.worker.send("slow")
                await asyncio.to_thread(release.wait, 20)
            writer.write(answer())
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        async def main():
            ports = [PORT, PORT2] if ROLE == "two_ports" else [PORT]
            servers = [await cluster.aio.start_server(on_client, "127.0.0.1", p) for p in ports]
            await asyncio.gather(*(s.serve_forever() for s in servers))

        asyncio.run(main())
    emit(worker_ended=cluster.worker.id)
"""


def run(
    cluster_env: Cluster, *args: str, env: dict[str, str] | None = None
) -> list[dict[str, object]]:
    """Run a scenario on two fresh ports; return its events after checking it ended cleanly."""
    ports = {"PORT": str(free_port()), "PORT2": str(free_port())}
    result = cluster_env.run(PROGRAM, *args, env={**ports, **(env or {})}, timeout=40)
    assert result.returncode == 0, result.stderr
    events = result.events()
    assert events[-1] == {"done": True}, events
    return events


@pytest.mark.parametrize(
    ("kind", "policy"),
    [("threading_http", "rr"), ("threading_http", "none"), ("aio", "rr"), ("aio", "none")],
)
def test_disconnect_lets_the_request_in_progress_finish(
    cluster_env: Cluster, kind: str, policy: str
) -> None:
    events = run(cluster_env, "graceful", kind, env={"PYCLUSTER_SCHED_POLICY": policy})
    report = next(e for e in events if "leaving" in e)
    leaving = report["leaving"]
    staying = 3 - int(leaving)  # workers 1 and 2
    full = 200_000 + len(f"{leaving}:")
    assert report["slow"] == [200, leaving, full]  # the whole answer, from the leaving worker
    assert report["still_running"] is True
    during = report["during"]
    assert all(status == 200 and size == 200_000 + 2 for status, _, size in during), during
    if policy == "rr":
        # The primary routes nothing new to a worker once its disconnect is asked for.
        assert [who for _, who, _ in during] == [staying] * 6
        assert {who for _, who, _ in report["before"]} == {1, 2}
    assert report["after"] == [[200, staying, 200_000 + 2]] * 3
    # Then the channel closed and the worker exited, planned and clean.
    assert report["gone"] == [leaving, 0, None, True]
    assert report["seen"] == ["disconnect", "exit"]
    assert {"worker_ended": leaving} in events


@pytest.mark.timeout(90)
def test_cluster_disconnect_of_eight_workers_twice_on_the_same_ports(
    cluster_env: Cluster,
) -> None:
    events = run(cluster_env, "cycles")
    cycles = [e for e in events if "cycle" in e]
    assert [c["cycle"] for c in cycles] == [0, 1]
    for cycle, first_id in zip(cycles, (1, 9), strict=True):
        answers = cycle["answers"]
        assert len(answers) == 16
        assert set(answers) <= set(range(first_id, first_id + 8))
        assert len(set(answers[:8])) == len(set(answers[8:])) == 8  # round-robin on each port
        gone = cycle["gone"]
        assert sorted(g[0] for g in gone) == list(range(first_id, first_id + 8))
        assert all(g[1:] == [0, None, True] for g in gone), gone
        assert cycle["workers"] == 0
        assert cycle["refused"] == [True, True]  # the primary closed both ports
