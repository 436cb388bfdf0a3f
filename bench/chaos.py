"""Chaos benchmark: SIGKILL workers under constant HTTP load; reloads under load.

Phase 1, chaos: a pycluster primary keeps 4 workers (``cluster.http.ThreadingHTTPServer``,
hello world, keep-alive) alive with ``setup_primary(restart="on-failure",
restart_delay=0.05)``. A Python load generator (threads speaking raw HTTP/1.1: some
reuse keep-alive connections, some open a fresh connection per request) loads it for
``--duration`` seconds while a random listening worker is SIGKILLed every
``--kill-every`` seconds. Reported: the share of successful requests (goal >= 99.9 %),
whether every killed worker was replaced, how fast, and where each failed request was
lost. Every request carries a unique id, and every worker appends, unbuffered, a line
when a connection's descriptor arrives from the primary, one right before it
acknowledges the connection to the primary (until then the primary keeps its own copy
and re-routes the connection if the worker dies), one when its serving loop accepts
it, and one per request it reads (see ``bench/servers/chaos_server.py``). A failed
request is:

* *request read by a worker*: the worker logged its id and died before answering;
* *connection held by a worker*: a worker acknowledged the connection but did not log
  the request (killed before reading it, or a keep-alive connection cut between
  requests);
* *reached a dying worker, not re-routed*: a worker got the descriptor but died
  before acknowledging it, so the primary still held the connection, yet no other
  worker got it;
* *never reached a worker*: no worker ever saw the connection, so it was accepted by
  the primary (the client's handshake completed) and lost before a worker took it.

The first two are what SIGKILL does to a process. The last two are connections
accepted by the primary but lost before a worker took them: goal 0, as the primary
re-routes a connection whose worker died before taking it.

Phase 2, reload: ``wrk -t2 -c32`` for ``--reload-duration`` seconds while the primary
gets SIGHUP (pycluster's rolling reload) twice. Goal: 0 errors of any kind.
Phase 3, for comparison: the same under a PM2-style "start new, kill old" reload
(``--mode naive`` of the server: fork a new worker, SIGTERM an old one once the new
one listens). Both reloads are also run under the Python load generator, which says
where each failed request was lost.

Phases 4 and 5 (``bench/_hostile.py``): bursts of 2,000 simultaneous connections to an
unchanged ``ThreadingHTTPServer`` program, and a hostile worker (``fd=N`` scan of the
primary's descriptors, a 4 GiB frame announced on its channel) beside serving ones.

Results: a table on stdout, ``bench/results/chaos.json`` and ``bench/results/chaos.png``.

Usage::

    python bench/chaos.py            # 60 s of chaos + 4 reload runs of 10 s, about 2.5 min
    python bench/chaos.py --quick    # 15 s of chaos, 8 s reload runs
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import random
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _hostile
from _common import (
    RESULTS_DIR,
    format_table,
    free_port,
    proc_info,
    process_tree,
    stop_process_tree,
)

HOST = "127.0.0.1"
BENCH = Path(__file__).resolve().parent
SERVER = BENCH / "servers" / "chaos_server.py"
PYTHON = sys.executable

# Outcomes of one request attempt, as the load generator records them.
OK = "ok"
# wrk: report the run as one JSON line, with no per-request Lua hook (those slow wrk down).
WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'CHAOS-JSON {"requests": %d, "duration_us": %d, "errors": {"connect": %d, ' ..
    '"read": %d, "write": %d, "status": %d, "timeout": %d}, "p99_us": %d, "max_us": %d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(99), latency.max))
end
"""


# --------------------------------------------------------------------------- the server


class ClusterServer:
    """``chaos_server.py`` in its own session, and the live view of its event lines."""

    def __init__(self, mode: str, workers: int, log_dir: Path, extra: list[str]) -> None:
        self.mode = mode
        self.workers = workers
        self.port = free_port(HOST)
        self.log_dir = log_dir
        self.extra = extra
        self.events: list[dict[str, Any]] = []
        self.live: dict[int, int] = {}  # worker id -> pid, for workers listening now
        self.cond = threading.Condition()
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_path = log_dir / "server.stderr"
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start the cluster and wait until every worker listens."""
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [
                    PYTHON,
                    str(SERVER),
                    *("--port", str(self.port), "--log-dir", str(self.log_dir)),
                    *("--workers", str(self.workers), "--mode", self.mode),
                    *self.extra,
                ],
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # so the whole tree can be stopped at the end
            )
        self._reader = threading.Thread(target=self._read, name="server-events", daemon=True)
        self._reader.start()
        if not self.wait_for(lambda: len(self.live) >= self.workers, timeout):
            raise RuntimeError(f"the cluster did not start in {timeout} s:\n{self.stderr_tail()}")

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                ev = json.loads(raw)
            except ValueError:
                continue
            with self.cond:
                self.events.append(ev)
                if ev["ev"] == "listening":
                    self.live[ev["id"]] = ev["pid"]
                elif ev["ev"] == "exit":
                    self.live.pop(ev["id"], None)
                self.cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` (checked under the lock, after each event) holds."""
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def listening(self) -> dict[int, int]:
        """Worker id -> pid of the workers listening now."""
        with self.cond:
            return dict(self.live)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the primary."""
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stats(self, timeout: float = 5.0) -> list[dict[str, Any]] | None:
        """``cluster.statistics()`` of the primary (supervised mode), asked by SIGUSR1."""
        with self.cond:
            seen = len(self.events)
        self.signal(signal.SIGUSR1)

        def answered() -> bool:
            return any(e["ev"] == "stats" for e in self.events[seen:])

        if not self.wait_for(answered, timeout):
            return None
        with self.cond:
            return next(e["workers"] for e in self.events[seen:] if e["ev"] == "stats")

    def stderr_tail(self, lines: int = 20) -> str:
        """The end of the cluster's stderr (pycluster's log)."""
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 8.0) -> float | None:
        """SIGTERM the primary (a graceful shutdown); then make sure every process is gone.

        Returns the seconds the primary took to exit by itself, None if it had to be killed.
        """
        if self.proc is None:
            return None
        tree = process_tree(self.proc.pid)
        began = time.monotonic()
        took: float | None = None
        try:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=grace)
            took = time.monotonic() - began
        except subprocess.TimeoutExpired:
            pass
        finally:
            stop_process_tree(self.proc, timeout=3.0)
            # Workers live in process groups of their own; once the primary is gone
            # they are no longer its children: kill any survivor of the snapshot.
            for pid, start in tree.items():
                info = proc_info(pid)
                if info is not None and info.start == start and info.state != "Z":
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
            if self._reader is not None:
                self._reader.join(timeout=2.0)
        return took


# --------------------------------------------------------------------------- load generator


@dataclass
class Attempt:
    """One request as the client saw it."""

    rid: int
    keepalive: bool
    reused: bool  # sent on a connection that had served an earlier request
    port: int  # the client's local port: the connection's name in the workers' logs
    t_open: float  # when that connection was opened (time.time())
    t_start: float
    t_end: float
    outcome: str
    received: int  # response bytes received before the outcome


class _Failed(Exception):
    """A request failed; ``outcome`` says how."""

    def __init__(self, outcome: str, received: int = 0) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.received = received


class LoadGenerator:
    """Closed-loop HTTP/1.1 clients in threads, over raw sockets.

    Raw sockets rather than ``http.client``: the benchmark needs the client's port and
    the exact number of response bytes received before a failure. A keep-alive client
    drops a pooled connection the server has closed while it was idle (readable before
    the request is sent), as urllib3 and browsers do; such a reconnect is counted, not
    failed. Nothing is retried: every request sent counts.
    """

    def __init__(self, port: int, keepalive: int, fresh: int, timeout: float = 5.0) -> None:
        self.port = port
        self.kinds = [True] * keepalive + [False] * fresh
        self.timeout = timeout
        self.ids = itertools.count(1)
        self.stop_event = threading.Event()
        self.results: list[list[Attempt]] = [[] for _ in self.kinds]
        self.stale = [0] * len(self.kinds)
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start every client."""
        for i, keepalive in enumerate(self.kinds):
            t = threading.Thread(target=self._client, args=(i, keepalive), daemon=True)
            self.threads.append(t)
            t.start()

    def stop(self) -> list[Attempt]:
        """Stop the clients (each finishes its request) and return every attempt by start time."""
        self.stop_event.set()
        for t in self.threads:
            t.join(self.timeout + 5.0)
        out = [a for per in self.results for a in per]
        out.sort(key=lambda a: a.t_start)
        return out

    @property
    def stale_reconnects(self) -> int:
        """Pooled connections found closed by the server before reuse."""
        return sum(self.stale)

    def _client(self, index: int, keepalive: bool) -> None:
        results = self.results[index]
        sock: socket.socket | None = None
        port, t_open = -1, 0.0
        connection = b"keep-alive" if keepalive else b"close"
        while not self.stop_event.is_set():
            rid = next(self.ids)
            t_start = time.time()
            if sock is not None and select.select([sock], [], [], 0)[0]:
                # The server closed this idle connection (it never talks unasked).
                sock.close()
                sock = None
                self.stale[index] += 1
            reused = sock is not None
            if sock is None:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(self.timeout)
                t_open = time.time()
                try:
                    sock.connect((HOST, self.port))
                    port = sock.getsockname()[1]
                except OSError as exc:
                    sock.close()
                    sock = None
                    outcome = "connect_" + type(exc).__name__
                    results.append(
                        Attempt(rid, keepalive, False, -1, t_open, t_start, time.time(), outcome, 0)
                    )
                    time.sleep(0.01)  # don't spin while nothing accepts
                    continue
            request = b"GET / HTTP/1.1\r\nHost: %s\r\nX-Req-Id: %d\r\nConnection: %s\r\n\r\n" % (
                HOST.encode(),
                rid,
                connection,
            )
            received = 0
            try:
                try:
                    sock.sendall(request)
                except OSError as exc:
                    raise _Failed("send_" + type(exc).__name__) from None
                received, close = self._response(sock)
                outcome = OK
            except _Failed as failed:
                outcome, received, close = failed.outcome, failed.received, True
            results.append(
                Attempt(
                    rid, keepalive, reused, port, t_open, t_start, time.time(), outcome, received
                )
            )
            if close or not keepalive:
                sock.close()
                sock = None
        if sock is not None:
            sock.close()

    @staticmethod
    def _response(sock: socket.socket) -> tuple[int, bool]:
        """Read one response: (bytes received, whether the server closes the connection)."""
        buf = b""
        received = 0

        def more() -> bytes:
            nonlocal received
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise _failed("timeout", received) from None
            except OSError as exc:
                raise _failed(type(exc).__name__, received) from None
            if not chunk:
                raise _failed("eof", received)
            received += len(chunk)
            return chunk

        while b"\r\n\r\n" not in buf:
            buf += more()
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        while len(body) < length:
            body += more()
        if len(parts) < 2 or parts[1] != b"200":
            raise _failed("status_" + parts[1].decode(errors="replace"), received)
        return received, close


def _failed(how: str, received: int) -> _Failed:
    """A failure named by how it happened and whether any response byte had arrived."""
    if how.startswith("status_"):
        return _Failed(how, received)
    return _Failed(f"{how}_{'after_partial_response' if received else 'before_response'}", received)


# --------------------------------------------------------------------------- where requests were lost


Records = dict[int, list[tuple[float, int]]]


@dataclass
class WorkerLogs:
    """What the workers recorded: connections by client port, requests by id."""

    arrivals: Records = field(default_factory=lambda: defaultdict(list))  # T lines
    acks: Records = field(default_factory=lambda: defaultdict(list))  # K lines
    accepts: Records = field(default_factory=lambda: defaultdict(list))  # A lines
    reads: dict[int, tuple[int, float]] = field(default_factory=dict)  # R lines

    @classmethod
    def load(cls, log_dir: Path) -> WorkerLogs:
        """Parse every ``w<pid>.log`` in ``log_dir``."""
        logs = cls()
        for path in log_dir.glob("w*.log"):
            pid = int(path.stem[1:])
            for line in path.read_text(errors="replace").splitlines():
                parts = line.split()
                with contextlib.suppress(ValueError, IndexError):
                    if parts[0] == "T":
                        logs.arrivals[int(parts[1])].append((float(parts[2]), pid))
                    elif parts[0] == "K":
                        logs.acks[int(parts[1])].append((float(parts[2]), pid))
                    elif parts[0] == "A":
                        logs.accepts[int(parts[1])].append((float(parts[2]), pid))
                    elif parts[0] == "R" and parts[1] != "-":
                        logs.reads[int(parts[1])] = (pid, float(parts[3]))
        for records in (*logs.arrivals.values(), *logs.acks.values(), *logs.accepts.values()):
            records.sort()
        return logs

    @staticmethod
    def holder(records: Records, port: int, since: float, until: float) -> int | None:
        """The worker that recorded the connection from ``port`` opened in that window.

        Client ports are reused over a long run; the window (the connection's life as
        the client saw it) tells one connection from a later one on the same port.
        """
        for t, pid in records.get(port, ()):
            if since - 0.002 <= t <= until + 0.05:
                return pid
        return None


LOST = ("never reached a worker", "reached a dying worker, not re-routed")


def classify(attempts: list[Attempt], logs: WorkerLogs, killed: set[int]) -> dict[str, Any]:
    """Sort failed requests by where they were lost (see the module docstring)."""
    where: Counter[str] = Counter()
    on_live: list[dict[str, Any]] = []
    lost: list[dict[str, Any]] = []
    for a in attempts:
        if a.outcome == OK:
            continue
        pid: int | None = None
        if a.outcome.startswith("connect_"):
            category = "connect failed"
        elif a.rid in logs.reads:
            category, pid = "request read by a worker", logs.reads[a.rid][0]
        elif (pid := logs.holder(logs.acks, a.port, a.t_open, a.t_end)) is not None:
            category = "connection held by a worker"
        elif (pid := logs.holder(logs.arrivals, a.port, a.t_open, a.t_end)) is not None:
            # The descriptor reached a worker that died before acknowledging it: the
            # primary still held its copy and should have handed it to another worker.
            category = LOST[1]
        else:
            category = LOST[0]
        where[category] += 1
        if category in LOST:
            lost.append({**_describe(a), "category": category, "worker_pid": pid})
        elif pid is not None and pid not in killed:
            on_live.append({**_describe(a), "worker_pid": pid, "category": category})
    # The method's own check: a successful new connection must have left both records.
    fresh_ok = [a for a in attempts if a.outcome == OK and not a.reused]

    def found(records: Records) -> float | None:
        if not fresh_ok:
            return None
        hits = sum(
            1 for a in fresh_ok if logs.holder(records, a.port, a.t_open, a.t_end) is not None
        )
        return 100.0 * hits / len(fresh_ok)

    return {
        "by_category": dict(where),
        "lost_before_worker": len(lost),
        "lost_examples": lost[:20],
        "failed_on_live_worker": len(on_live),
        "failed_on_live_worker_examples": on_live[:20],
        "arrival_records_found_pct": found(logs.arrivals),
        "ack_records_found_pct": found(logs.acks),
        "accept_records_found_pct": found(logs.accepts),
    }


def _describe(a: Attempt) -> dict[str, Any]:
    return {
        "rid": a.rid,
        "keepalive": a.keepalive,
        "reused": a.reused,
        "port": a.port,
        "outcome": a.outcome,
        "t_start": a.t_start,
        "elapsed_ms": round(1000 * (a.t_end - a.t_start), 2),
    }


def summarize(attempts: list[Attempt], t0: float, duration: float) -> dict[str, Any]:
    """Counts, success share, outcomes and a per-second series."""
    total = len(attempts)
    ok = sum(1 for a in attempts if a.outcome == OK)
    per_second: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for a in attempts:
        second = int(a.t_end - t0)
        per_second[second][0] += 1
        per_second[second][1] += a.outcome == OK
    seconds = range(int(duration) + 1)
    return {
        "requests": total,
        "ok": ok,
        "failed": total - ok,
        "success_pct": 100.0 * ok / total if total else 0.0,
        "requests_per_s": total / duration if duration else 0.0,
        "keepalive_requests": sum(1 for a in attempts if a.keepalive),
        "fresh_requests": sum(1 for a in attempts if not a.keepalive),
        "outcomes": dict(Counter(a.outcome for a in attempts if a.outcome != OK)),
        "per_second": {
            "t": list(seconds),
            "requests": [per_second[s][0] for s in seconds],
            "ok": [per_second[s][1] for s in seconds],
        },
    }


# --------------------------------------------------------------------------- phases


def run_chaos(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Phase 1: constant load, a worker SIGKILLed every ``--kill-every`` seconds."""
    log_dir = workdir / "chaos"
    log_dir.mkdir()
    rng = random.Random(args.seed)
    server = ClusterServer(
        "supervised",
        args.workers,
        log_dir,
        ["--restart-delay", "0.05", "--restart-backoff", str(args.restart_backoff)],
    )
    kills: list[dict[str, Any]] = []
    try:
        server.start()
        load = LoadGenerator(server.port, args.keepalive_clients, args.fresh_clients)
        t0 = time.time()
        load.start()
        deadline = t0 + args.duration
        next_kill = t0 + args.kill_every
        while next_kill < deadline - 0.5:
            time.sleep(max(0.0, next_kill - time.time()))
            live = server.listening()
            if len(live) >= args.min_alive:
                wid = rng.choice(sorted(live))
                with contextlib.suppress(ProcessLookupError):
                    os.kill(live[wid], signal.SIGKILL)
                    kills.append({"t": time.time(), "id": wid, "pid": live[wid]})
            next_kill += args.kill_every
        time.sleep(max(0.0, deadline - time.time()))
        attempts = load.stop()
        elapsed = time.time() - t0
        # Every slot should be back: wait for the last replacement to listen.
        server.wait_for(lambda: len(server.live) >= args.workers, 10.0)
        stats = server.stats()
        events = list(server.events)
    finally:
        primary_exit_s = server.stop()
    logs = WorkerLogs.load(log_dir)
    killed = {k["pid"] for k in kills}
    result = summarize(attempts, t0, elapsed)
    result.update(
        duration_s=elapsed,
        stale_reconnects=load.stale_reconnects,
        kills=len(kills),
        kill_times=[k["t"] - t0 for k in kills],
        loss=classify(attempts, logs, killed),
        recovery=recoveries(kills, events),
        workers_at_end=len(stats) if stats is not None else None,
        stats_at_end=stats,
        give_ups=sum(1 for e in events if e["ev"] == "give_up"),
        primary_exit_s=primary_exit_s,
    )
    return result


def recoveries(kills: list[dict[str, Any]], events: list[dict[str, Any]]) -> dict[str, Any]:
    """For each kill: did a replacement start, and how long until it listened."""
    exit_t = {e["id"]: e["t"] for e in events if e["ev"] == "exit"}
    exit_sig = {e["id"]: e.get("signal") for e in events if e["ev"] == "exit"}
    replaced_by = {e["old"]: e["new"] for e in events if e["ev"] == "restart"}
    listened = {e["id"]: e["t"] for e in events if e["ev"] == "listening"}
    times, missing = [], []
    for k in kills:
        new = replaced_by.get(k["id"])
        if new is None or new not in listened:
            missing.append(k["id"])
            continue
        times.append(listened[new] - k["t"])
    seen_sigkill = sum(1 for k in kills if exit_sig.get(k["id"]) == "SIGKILL")
    return {
        "replaced": len(times),
        "not_replaced": missing,
        "exits_seen_as_sigkill": seen_sigkill,
        "exit_detect_ms_median": _median_ms(
            [exit_t[k["id"]] - k["t"] for k in kills if k["id"] in exit_t]
        ),
        "to_listening_ms_median": _median_ms(times),
        "to_listening_ms_max": 1000 * max(times) if times else None,
    }


def _median_ms(values: list[float]) -> float | None:
    return 1000 * statistics.median(values) if values else None


def run_reload(
    args: argparse.Namespace, workdir: Path, mode: str, client: str, wrk: str | None
) -> dict[str, Any]:
    """A reload twice during ``--reload-duration`` seconds of load, by ``wrk`` or Python."""
    log_dir = workdir / f"reload-{mode}-{client}"
    log_dir.mkdir()
    server = ClusterServer(mode, args.workers, log_dir, [])
    sig = signal.SIGHUP if mode == "supervised" else signal.SIGUSR2
    duration = args.reload_duration
    reloads: list[dict[str, Any]] = []
    result: dict[str, Any] = {"mode": mode, "client": client}
    wrk_proc: subprocess.Popen[str] | None = None
    load: LoadGenerator | None = None
    try:
        server.start()
        t0 = time.time()
        if client == "wrk":
            assert wrk is not None
            script = workdir / "chaos_report.lua"
            script.write_text(WRK_SCRIPT)
            wrk_proc = subprocess.Popen(
                [wrk, "-t2", "-c32", f"-d{duration}s", "--timeout", "5s", "-s", str(script)]
                + [f"http://{HOST}:{server.port}/"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        else:
            load = LoadGenerator(server.port, args.keepalive_clients, args.fresh_clients)
            load.start()
        # The first reload early in the run, the second once the first is over (or at
        # half time); each waits for its last old worker to exit, even past the run.
        at = t0 + 0.15 * duration
        for _ in range(2):
            time.sleep(max(0.0, at - time.time()))
            old = server.listening()
            t_sig = time.time()
            server.signal(sig)
            done = server.wait_for(
                lambda old=old: (
                    not (set(old) & set(server.live)) and len(server.live) >= args.workers
                ),
                30.0,
            )
            t_done = time.time()
            reloads.append(
                {
                    "t": t_sig - t0,
                    "took_s": t_done - t_sig if done else None,
                    "under_load": done and t_done <= t0 + duration,
                }
            )
            at = max(t0 + 0.5 * duration, time.time() + 0.2)
        if wrk_proc is not None:
            out, _ = wrk_proc.communicate(timeout=duration + 30)
            result.update(_parse_wrk(out))
        else:
            assert load is not None
            time.sleep(max(0.0, t0 + duration - time.time()))
            attempts = load.stop()
            elapsed = time.time() - t0
            result.update(summarize(attempts, t0, elapsed))
            result["stale_reconnects"] = load.stale_reconnects
            exited = {e["pid"] for e in server.events if e["ev"] == "exit"}
            result["loss"] = classify(attempts, WorkerLogs.load(log_dir), exited)
            result["errors_total"] = result["failed"]
        events = list(server.events)
    finally:
        if wrk_proc is not None and wrk_proc.poll() is None:
            wrk_proc.kill()
            wrk_proc.wait()
        if load is not None:
            load.stop()
        result["primary_exit_s"] = server.stop()
    result["reloads"] = reloads
    result["unplanned_exits"] = sum(
        1 for e in events if e["ev"] == "exit" and not e["planned"] and mode == "supervised"
    )
    return result


def _parse_wrk(out: str) -> dict[str, Any]:
    for line in out.splitlines():
        if line.startswith("CHAOS-JSON "):
            data = json.loads(line[len("CHAOS-JSON ") :])
            errors = data["errors"]
            return {
                "requests": data["requests"],
                "requests_per_s": data["requests"] / (data["duration_us"] / 1e6),
                "errors": errors,
                "errors_total": sum(errors.values()),
                "p99_ms": data["p99_us"] / 1000,
                "max_ms": data["max_us"] / 1000,
            }
    raise RuntimeError(f"wrk printed no report:\n{out}")


def ensure_wrk() -> str | None:
    """The path of ``wrk``, installing it with apt-get when missing (None if impossible)."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print("wrk is not installed (apt-get install -y wrk): skipping the wrk runs")
        return None
    print("wrk not found: installing it with apt-get", flush=True)
    subprocess.run(
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk",
        shell=True,
        check=False,
    )
    return shutil.which("wrk")


# --------------------------------------------------------------------------- report


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "FAIL")


def report(results: dict[str, Any]) -> str:
    """The summary tables."""
    out = chaos_report(results) if "chaos" in results else []
    if results["reloads"]:
        out += reload_report(results)
    out += _hostile.report_lines(results)
    return "\n".join(out)


def chaos_report(results: dict[str, Any]) -> list[str]:
    """Phase 1's tables."""
    chaos = results["chaos"]
    loss = chaos["loss"]
    rec = chaos["recovery"]
    out = [
        f"Phase 1: {chaos['duration_s']:.0f} s of load, {chaos['kills']} workers SIGKILLed "
        f"({chaos['requests']:,} requests, {chaos['requests_per_s']:,.0f}/s; "
        f"{chaos['keepalive_requests']:,} keep-alive, {chaos['fresh_requests']:,} fresh connections)",
        "",
        format_table(
            ["check", "value", "goal", "verdict"],
            [
                [
                    "successful requests %",
                    f"{chaos['success_pct']:.3f}",
                    ">= 99.9",
                    _verdict(chaos["success_pct"] >= 99.9),
                ],
                [
                    "accepted, lost before a worker took them",
                    loss["lost_before_worker"],
                    "0",
                    _verdict(loss["lost_before_worker"] == 0),
                ],
                [
                    "failed on a worker that was not killed",
                    loss["failed_on_live_worker"],
                    "0",
                    _verdict(loss["failed_on_live_worker"] == 0),
                ],
                [
                    "killed workers replaced",
                    f"{rec['replaced']}/{chaos['kills']}",
                    "all",
                    _verdict(rec["replaced"] == chaos["kills"]),
                ],
                [
                    "workers alive at the end",
                    chaos["workers_at_end"],
                    str(results["settings"]["workers"]),
                    _verdict(chaos["workers_at_end"] == results["settings"]["workers"]),
                ],
                [
                    "primary exits on SIGTERM (s)",
                    "hung" if chaos["primary_exit_s"] is None else f"{chaos['primary_exit_s']:.2f}",
                    "< 8",
                    _verdict(chaos["primary_exit_s"] is not None),
                ],
            ],
        ),
        "",
        "Failed requests by where they were lost:",
        format_table(
            ["where", "requests"],
            sorted(loss["by_category"].items(), key=lambda kv: -kv[1]) or [["(none)", 0]],
        ),
        "",
        "Failed requests by outcome: "
        + (", ".join(f"{k} {v}" for k, v in sorted(chaos["outcomes"].items())) or "none"),
        f"Kill to replacement listening: median {_ms(rec['to_listening_ms_median'])}, "
        f"max {_ms(rec['to_listening_ms_max'])}; exit seen by the primary after median "
        f"{_ms(rec['exit_detect_ms_median'])}. Stale keep-alive connections re-opened: "
        f"{chaos['stale_reconnects']}. Records found for successful new connections: "
        f"arrival {_pct(loss['arrival_records_found_pct'])}, "
        f"acknowledgement {_pct(loss['ack_records_found_pct'])}, "
        f"accept {_pct(loss['accept_records_found_pct'])}.",
        "",
    ]
    return out


def reload_report(results: dict[str, Any]) -> list[str]:
    """The reload runs' table."""
    rows = []
    for r in results["reloads"]:
        errors = r.get("errors") or r.get("outcomes") or {}
        detail = ", ".join(f"{k} {v}" for k, v in sorted(errors.items()) if v) or "-"
        took = ", ".join(_took(x) for x in r["reloads"])
        goal = r["mode"] == "supervised"
        rows.append(
            [
                "pycluster SIGHUP" if goal else "naive start-new-kill-old",
                r["client"],
                r["requests"],
                r["errors_total"],
                detail,
                took,
                _verdict(r["errors_total"] == 0) if goal else "(comparison)",
            ]
        )
    out = [
        "Phases 2 and 3: two reloads under load",
        format_table(
            ["reload", "load", "requests", "errors", "error kinds", "reload s", "goal 0"], rows
        ),
    ]
    out.append("  (reload s: * = finished after the load had stopped)")
    for r in results["reloads"]:
        if "loss" in r and r["errors_total"]:
            cats = ", ".join(f"{k} {v}" for k, v in r["loss"]["by_category"].items())
            out.append(f"  {r['mode']} / python: lost where: {cats}")
    return out


def _took(reload: dict[str, Any]) -> str:
    """How long one reload took; '*' marks one that ended after the load had stopped."""
    if reload["took_s"] is None:
        return "never"
    return f"{reload['took_s']:.2f}" + ("" if reload["under_load"] else "*")


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} %"


def plot(results: dict[str, Any], path: Path) -> bool:
    """Success share and throughput per second with kill markers; reload errors."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plot")
        return False
    panels = [name for name in ("chaos", "reloads") if results.get(name)]
    if not panels:
        return False
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(10, 4.5 * len(panels)),
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 2][: len(panels)]},
        constrained_layout=True,
    )
    for name, ax in zip(panels, axes[:, 0], strict=True):
        if name == "chaos":
            _plot_chaos(results["chaos"], ax)
        else:
            _plot_reloads(results["reloads"], ax)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_chaos(chaos: dict[str, Any], ax: Any) -> None:
    series = chaos["per_second"]
    t = series["t"][:-1]  # the last second is partial
    reqs, oks = series["requests"][:-1], series["ok"][:-1]
    share = [100.0 * o / r if r else float("nan") for o, r in zip(oks, reqs, strict=True)]
    ax.plot(t, share, color="tab:green", marker=".", label="successful requests (%)")
    ax.set_ylabel("successful requests in that second (%)")
    ax.set_xlabel("seconds")
    low = min([v for v in share if v == v] + [99.8])  # NaN != NaN: skip empty seconds
    ax.set_ylim(max(0.0, low - 0.1), 100.05)
    ax.axhline(99.9, color="tab:green", linestyle=":", linewidth=1, label="99.9 %")
    for i, kt in enumerate(chaos["kill_times"]):
        ax.axvline(
            kt, color="tab:red", alpha=0.35, linewidth=1, label="SIGKILL" if i == 0 else None
        )
    tx = ax.twinx()
    tx.plot(t, reqs, color="tab:blue", alpha=0.5, label="requests/s")
    tx.set_ylabel("requests/s")
    tx.set_ylim(0, max(reqs + [1]) * 1.3)
    mine, theirs = ax.get_legend_handles_labels(), tx.get_legend_handles_labels()
    ax.legend(mine[0] + theirs[0], mine[1] + theirs[1], loc="lower left", fontsize=8)
    ax.set_title(
        f"{chaos['kills']} workers SIGKILLed under load: {chaos['success_pct']:.3f} % ok, "
        f"{chaos['loss']['lost_before_worker']} lost before a worker took them"
    )


def _plot_reloads(reloads: list[dict[str, Any]], ax: Any) -> None:
    labels, values, colors = [], [], []
    for r in reloads:
        ours = r["mode"] == "supervised"
        name = "pycluster SIGHUP" if ours else "naive kill-old"
        labels.append(f"{name}\n({r['client']}, {r['requests']:,} req)")
        values.append(r["errors_total"])
        colors.append("tab:green" if ours else "tab:gray")
    bars = ax.bar(labels, values, color=colors)
    ax.bar_label(bars)
    ax.set_ylabel("failed requests during two reloads")
    ax.set_title("Reload under load")
    ax.set_ylim(0, max(values + [1]) * 1.25)


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="15 s of chaos, 8 s reload runs")
    parser.add_argument("--duration", type=float, help="seconds of chaos (default 60)")
    parser.add_argument("--kill-every", type=float, default=2.0)
    parser.add_argument("--reload-duration", type=int, help="seconds per reload run (default 10)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--min-alive",
        type=int,
        default=1,
        help="skip a kill while fewer workers listen (default 1: always kill)",
    )
    parser.add_argument(
        "--restart-backoff", type=float, default=2.0, help="pycluster's default: 2.0"
    )
    parser.add_argument("--keepalive-clients", type=int, default=8)
    parser.add_argument("--fresh-clients", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--phases",
        default="chaos,reload,naive,burst,hostile",
        help="which of chaos,reload,naive,burst,hostile to run (default: all)",
    )
    parser.add_argument(
        "--clients", default="wrk,python", help="load for the reload runs: wrk,python"
    )
    parser.add_argument("--no-save", action="store_true", help="don't write bench/results")
    args = parser.parse_args()
    if args.duration is None:
        args.duration = 15.0 if args.quick else 60.0
    if args.reload_duration is None:
        args.reload_duration = 8 if args.quick else 10
    return args


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    """A temporary directory for the workers' logs."""
    with tempfile.TemporaryDirectory(prefix="pycluster-chaos-") as tmp:
        yield Path(tmp)


def main() -> None:
    """Run every phase, print the report, save JSON and the plot."""
    args = parse_args()
    results: dict[str, Any] = {
        "settings": {
            "workers": args.workers,
            "duration_s": args.duration,
            "kill_every_s": args.kill_every,
            "reload_duration_s": args.reload_duration,
            "keepalive_clients": args.keepalive_clients,
            "fresh_clients": args.fresh_clients,
            "seed": args.seed,
            "restart": "on-failure",
            "restart_delay": 0.05,
            "restart_backoff": args.restart_backoff,
            "min_alive": args.min_alive,
            "quick": args.quick,
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "reloads": [],
    }
    with workspace() as work:
        phases = args.phases.split(",")
        if "chaos" in phases:
            print(
                f"phase 1: {args.duration:.0f} s of load, SIGKILL every {args.kill_every} s",
                flush=True,
            )
            results["chaos"] = run_chaos(args, work)
        modes = [m for p, m in (("reload", "supervised"), ("naive", "naive")) if p in phases]
        clients = args.clients.split(",")
        wrk = ensure_wrk() if modes and "wrk" in clients else None
        for mode in modes:
            for client in clients:
                if client == "wrk" and wrk is None:
                    continue
                print(f"reload: {mode} under {client} load", flush=True)
                results["reloads"].append(run_reload(args, work, mode, client, wrk))
        if "burst" in phases:
            print(
                f"phase 4: {_hostile.BURSTS} bursts of {_hostile.CLIENTS} connections", flush=True
            )
            results["burst"] = _hostile.run_burst(work)
        if "hostile" in phases:
            print("phase 5: a hostile worker under load", flush=True)
            results["hostile"] = _hostile.run_hostile(work)
    print()
    print(report(results))
    if not args.no_save:
        RESULTS_DIR.mkdir(exist_ok=True)
        path = RESULTS_DIR / "chaos.json"
        path.write_text(json.dumps(results, indent=1) + "\n")
        print(f"\nsaved {path}")
        png = RESULTS_DIR / "chaos.png"
        if plot(results, png):
            print(f"saved {png}")


if __name__ == "__main__":
    main()
