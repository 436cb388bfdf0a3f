"""Chaos phases 4 and 5 (``bench/chaos.py --phases burst,hostile``).

Phase 4, burst: an unchanged ``http.server.ThreadingHTTPServer`` program (the
stdlib's ``request_queue_size`` of 5) under ``pycluster run -w 2 --policy rr``; 2,000
clients connect at the same moment, three times. Reported: how many got their
answer within ``CLIENT_TIMEOUT``, and how long the slowest took. Goal: all of them
(the primary listens with at least Node's 511, capped by ``somaxconn``).

Phase 5, hostile worker: a cluster of two HTTP workers and one hostile worker,
under HTTP load. The hostile worker (1) names every descriptor number 0..255 of
the primary with ``create_server(None, fd=N)``, as a stream and as a datagram
server, and (2) announces a 4 GiB frame on its channel and streams data behind the
header. Reported: descriptors it obtained (goal: 0, the program gave none), the
primary's peak resident memory over its start (goal: flat, not the announced
size), whether the hostile worker was cut off, and the share of requests the good
workers answered meanwhile (goal: 100 %).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from _common import free_port

HOST = "127.0.0.1"
PYTHON = sys.executable
CLIENTS = 2000
BURSTS = 3
CLIENT_TIMEOUT = 10.0

BURST_SERVER = """
import http.server, sys

class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "6")
        self.end_headers()
        self.wfile.write(b"hello\\n")

    def log_message(self, *args):
        pass

with http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Hello) as server:
    server.serve_forever()
"""

HOSTILE_PROGRAM = """
import json, os, socket, struct, sys, time
from http.server import BaseHTTPRequestHandler
import pycluster as cluster

def emit(**kw):
    os.write(1, (json.dumps(kw) + "\\n").encode())

class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "6")
        self.end_headers()
        self.wfile.write(b"hello\\n")

    def log_message(self, *args):
        pass

if cluster.is_primary:
    cluster.on("listening", lambda w, a: emit(ev="listening", id=w.id))
    cluster.on("disconnect", lambda w: emit(ev="disconnect", id=w.id))
    cluster.on("exit", lambda w, code, sig: emit(ev="exit", id=w.id, code=code, sig=sig))
    cluster.on("message", lambda w, msg, h: emit(ev="message", id=w.id, msg=msg))
    cluster.fork({"ROLE": "good"})
    cluster.fork({"ROLE": "good"})
    cluster.fork({"ROLE": "hostile"})
    cluster.run()
elif os.environ["ROLE"] == "good":
    with cluster.http.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Hello) as server:
        server.serve_forever()
else:
    time.sleep(float(sys.argv[2]))  # let the benchmark see the primary at rest first
    obtained = []
    for fd in range(256):
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            try:
                cluster.create_server(None, fd=fd, type=kind).close()
            except OSError:
                pass
            else:
                obtained.append(fd)
    cluster.worker.send({"obtained": obtained})
    time.sleep(0.5)
    raw = cluster.worker._backend.channel._sock
    sent = 0
    chunk = b"x" * (1 << 20)
    try:
        raw.sendall(struct.pack("!2sBBBBHQ", b"PC", 1, 1, 0, 0, 0, 4 << 30))
        while sent < 256 << 20:
            raw.sendall(chunk)
            sent += len(chunk)
    except OSError as exc:
        emit(ev="hostile cut off", sent=sent, error=type(exc).__name__)
    cluster.worker.wait_disconnected(30)
"""


def _rss(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _wait_http(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 1) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            if s.recv(16).startswith(b"HTTP/1.0 200"):
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing answers on port {port}")


# --------------------------------------------------------------------------- phase 4


async def _one(port: int, gate: asyncio.Event) -> float | None:
    await gate.wait()
    start = time.monotonic()

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            return await reader.read()
        finally:
            writer.close()

    try:
        answer = await asyncio.wait_for(exchange(), CLIENT_TIMEOUT)
    except (OSError, asyncio.TimeoutError):
        return None
    return time.monotonic() - start if answer.startswith(b"HTTP/1.0 200") else None


async def _burst(port: int) -> list[float | None]:
    gate = asyncio.Event()
    tasks = [asyncio.create_task(_one(port, gate)) for _ in range(CLIENTS)]
    await asyncio.sleep(0)
    gate.set()
    return list(await asyncio.gather(*tasks))


def run_burst(workdir: Path) -> dict[str, Any]:
    """Phase 4: bursts of simultaneous connections to an unchanged stdlib server."""
    script = workdir / "burst_server.py"
    script.write_text(BURST_SERVER)
    port = free_port(HOST)
    proc = subprocess.Popen(
        [PYTHON, "-m", "pycluster", "run", "-w", "2", "--policy", "rr", "--no-control"]
        + [str(script), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    bursts = []
    try:
        _wait_http(port)
        for _ in range(BURSTS):
            times = asyncio.run(_burst(port))
            done = sorted(t for t in times if t is not None)
            bursts.append(
                {
                    "clients": CLIENTS,
                    "answered": len(done),
                    "p50_ms": round(1000 * done[len(done) // 2], 1) if done else None,
                    "max_ms": round(1000 * done[-1], 1) if done else None,
                }
            )
            time.sleep(0.5)
    finally:
        _stop(proc)
    with open("/proc/sys/net/core/somaxconn") as f:
        somaxconn = int(f.read())
    return {"bursts": bursts, "somaxconn": somaxconn, "client_timeout_s": CLIENT_TIMEOUT}


# --------------------------------------------------------------------------- phase 5


def run_hostile(workdir: Path, rest: float = 2.0) -> dict[str, Any]:
    """Phase 5: a hostile worker next to two serving ones, under load."""
    script = workdir / "hostile.py"
    script.write_text(HOSTILE_PROGRAM)
    port = free_port(HOST)
    proc = subprocess.Popen(
        [PYTHON, str(script), str(port), str(rest)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    events: list[dict[str, Any]] = []
    cut_off = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            with contextlib.suppress(ValueError):
                ev = json.loads(raw)
                events.append(ev)
                if ev.get("ev") == "exit" and ev.get("id") == 3:
                    cut_off.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    stop = threading.Event()
    counts = {"ok": 0, "failed": 0}

    def load() -> None:
        while not stop.is_set():
            try:
                with socket.create_connection((HOST, port), 5) as s:
                    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                    ok = s.recv(16).startswith(b"HTTP/1.0 200")
            except OSError:
                ok = False
            counts["ok" if ok else "failed"] += 1

    try:
        _wait_http(port)
        at_rest = _rss(proc.pid) or 0
        loaders = [threading.Thread(target=load, daemon=True) for _ in range(4)]
        for t in loaders:
            t.start()
        peak = at_rest
        deadline = time.monotonic() + rest + 60.0
        while not cut_off.is_set() and time.monotonic() < deadline:
            peak = max(peak, _rss(proc.pid) or 0)
            time.sleep(0.02)
        time.sleep(1.0)  # the good workers keep serving after the hostile one is gone
        peak = max(peak, _rss(proc.pid) or 0)
        stop.set()
        for t in loaders:
            t.join(10)
    finally:
        stop.set()
        _stop(proc)
        reader.join(5)
    obtained = next((e["msg"]["obtained"] for e in events if e.get("ev") == "message"), None)
    hostile = next((e for e in events if e.get("ev") == "hostile cut off"), {})
    total = counts["ok"] + counts["failed"]
    return {
        "descriptors_obtained": obtained,
        "primary_rss_at_rest_mb": round(at_rest / 2**20, 1),
        "primary_rss_peak_mb": round(peak / 2**20, 1),
        "announced_gb": 4,
        "hostile_cut_off": cut_off.is_set(),
        "hostile_sent_before_cut_off_mb": round(hostile.get("sent", 0) / 2**20, 1),
        "requests": total,
        "success_pct": 100.0 * counts["ok"] / total if total else 0.0,
    }


def report_lines(results: dict[str, Any]) -> list[str]:
    """The phases' lines of the chaos report."""
    lines: list[str] = []
    burst = results.get("burst")
    if burst:
        lines.append(
            f"Phase 4: bursts of {CLIENTS} simultaneous connections, unchanged "
            f"ThreadingHTTPServer (request_queue_size 5), pycluster run -w 2, round-robin"
        )
        for i, b in enumerate(burst["bursts"], 1):
            lines.append(
                f"  burst {i}: {b['answered']}/{b['clients']} answered, "
                f"median {b['p50_ms']} ms, slowest {b['max_ms']} ms"
            )
    hostile = results.get("hostile")
    if hostile:
        lines += [
            "Phase 5: a hostile worker beside two serving ones, under load",
            f"  fd=0..255 scan: descriptors obtained {hostile['descriptors_obtained']}",
            f"  4 GiB frame announced: cut off {hostile['hostile_cut_off']} after "
            f"{hostile['hostile_sent_before_cut_off_mb']} MiB sent; primary RSS "
            f"{hostile['primary_rss_at_rest_mb']} -> peak {hostile['primary_rss_peak_mb']} MiB",
            f"  good workers: {hostile['success_pct']:.2f} % of {hostile['requests']} requests",
        ]
    return lines
