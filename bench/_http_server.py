"""Server processes for bench/http.py: start, readiness, HTTP checks, CPU, stop.

A server variant prints ``BENCH-READY`` lines when its workers listen; it is measured
once those lines are there and it answers a GET correctly. The CPU a run used is split
between the server's primary (the process started), its workers (every descendant,
whatever their session) and everything else on the machine, which flags a run that
another program disturbed. ``fresh_connections`` is the client of the fresh-connection
split: a fixed number of new connections, one request each.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from _common import (
    ProcInfo,
    descendants,
    free_port,
    machine_task_cpu_s,
    proc_table,
    stop_process_tree,
)

HOST = "127.0.0.1"
BODY = b"hello world\n"
READY_MARK = "BENCH-READY"
FRESH_PATH = "/fresh"  # as servers/_counts.py: the servers count these requests apart


def _read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """Read one HTTP response (head, body) using its Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the end of the response head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the end of the body")
        body += chunk
    return head, body[:length]


def probe(port: int, timeout: float = 2.0) -> dict[str, bool]:
    """Check the server answers correctly in both modes.

    Returns ``ok`` (200 and the right body), ``closes`` (with ``Connection: close`` the
    server answers ``Connection: close`` and closes the connection, so the close mode
    really opens one connection per request) and ``keeps_alive`` (a second request on
    one connection is answered).
    """
    facts = {"ok": False, "closes": False, "keeps_alive": False}
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(request + b"Connection: close\r\n\r\n")
        head, body = _read_response(sock)
        facts["ok"] = head.startswith(b"HTTP/1.1 200") and body == BODY
        # wrk (like any HTTP/1.1 client) only reconnects when the response says
        # "Connection: close"; a server that closes silently makes it count errors.
        says_close = b"\r\nconnection: close" in head.lower()
        try:
            facts["closes"] = says_close and sock.recv(1) == b""
        except (TimeoutError, ConnectionError):
            facts["closes"] = False
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            for _ in range(2):
                sock.sendall(request + b"\r\n")
                head, body = _read_response(sock)
            facts["keeps_alive"] = head.startswith(b"HTTP/1.1 200") and body == BODY
    except (TimeoutError, ConnectionError):
        facts["keeps_alive"] = False
    return facts


@dataclass
class FreshRun:
    """What the client of the fresh-connection split saw."""

    opened: int = 0  # connections attempted: exactly the number asked for
    answered: int = 0  # of which got ``200 hello world`` and then the server's close
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def fresh_connections(
    port: int, total: int, concurrency: int, timeout: float = 5.0, budget: float = 60.0
) -> FreshRun:
    """Open exactly ``total`` new connections, ``concurrency`` at a time, one request each.

    Each connection sends ``GET /fresh`` with ``Connection: close`` and reads until the
    server closes it. The workers count those requests apart (servers/_counts.py), so
    how the connections were split is read from the workers afterwards, exactly. A
    server that stalls costs at most ``budget`` seconds: no connection is opened after
    that (``opened`` then says how many were).
    """
    request = (
        f"GET {FRESH_PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n"
    ).encode()
    run = FreshRun()

    def fail(reason: str) -> None:
        run.errors[reason] = run.errors.get(reason, 0) + 1

    async def one() -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(request)
            answer = await reader.read()  # until the server closes
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if answer.startswith(b"HTTP/1.1 200") and answer.endswith(BODY):
            run.answered += 1
        else:
            fail("wrong answer")

    deadline = time.monotonic() + budget

    async def lane() -> None:
        while run.opened < total and time.monotonic() < deadline:
            run.opened += 1
            try:
                await asyncio.wait_for(one(), timeout)
            except (OSError, asyncio.TimeoutError) as exc:
                fail(type(exc).__name__)

    async def main() -> None:
        await asyncio.gather(*(lane() for _ in range(max(1, concurrency))))

    started = time.monotonic()
    asyncio.run(main())
    run.seconds = time.monotonic() - started
    return run


@dataclass
class CpuSplit:
    """CPU seconds used during a measurement, by role."""

    primary: float = 0.0
    workers: float = 0.0
    other: float = 0.0
    other_top: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CpuSample:
    """Where the machine's CPU time stood at one moment."""

    table: dict[int, ProcInfo]  # every process then
    machine_s: float  # all tasks, including those that come and go between samples
    own_s: float  # this process (scanning /proc costs CPU too)

    @classmethod
    def take(cls) -> CpuSample:
        """Sample now."""
        return cls(proc_table(), machine_task_cpu_s(), time.process_time())


def cpu_split(
    before: CpuSample, after: CpuSample, leader: int, also_ours_s: float = 0.0
) -> CpuSplit:
    """Split the CPU used between two samples: the server's leader (the primary), its
    descendants (the workers, wherever their session), and everything else.

    "Everything else" is the machine's total less the server, this process and
    ``also_ours_s`` (wrk's CPU, which ended before the second sample), or the sum over the
    other processes seen in both samples if that is larger; the largest of those are
    named, so a disturbed run says who disturbed it.
    """
    workers = descendants(after.table, leader)
    split = CpuSplit()
    named: list[tuple[float, str]] = []
    for pid, now in after.table.items():
        then = before.table.get(pid)
        used = now.cpu_s - (then.cpu_s if then and then.start == now.start else 0.0)
        if pid == leader:
            split.primary += used
        elif pid in workers:
            split.workers += used
        elif pid != os.getpid() and used > 0:
            named.append((used, f"{now.name}[{pid}]"))
    ours = split.primary + split.workers + (after.own_s - before.own_s) + also_ours_s
    split.other = max(sum(u for u, _ in named), after.machine_s - before.machine_s - ours, 0.0)
    split.other_top = [f"{name} {used:.2f}s" for used, name in sorted(named, reverse=True)[:3]]
    return split


def wait_until_quiet(limit_pct: float, max_wait: float) -> float:
    """Wait (at most ``max_wait`` s) until other processes use under ``limit_pct``% CPU.

    The machine has two cores: another benchmark or a test suite running at the same time
    takes CPU from the server or from wrk and skews every ratio. Returns the seconds waited.
    """
    started = time.monotonic()
    while True:
        before = CpuSample.take()
        time.sleep(0.5)
        busy = cpu_split(before, CpuSample.take(), leader=-1).other / 0.5 * 100
        waited = time.monotonic() - started
        if busy < limit_pct or waited >= max_wait:
            if waited > 1:
                print(f"  (waited {waited:.0f} s for other processes to settle)", flush=True)
            return waited


class ServerSpec(Protocol):
    """What it takes to start a server: see ``Variant`` in http.py."""

    @property
    def command(self) -> Callable[[int], list[str]]: ...

    @property
    def env(self) -> dict[str, str]: ...

    @property
    def ready_lines(self) -> int: ...


class Server:
    """A variant's server and every process it starts, from start to a reaped stop.

    It runs in ``cwd`` with ``BENCH_COUNT_DIR`` set: each worker writes its request
    count there when it stops (see servers/_counts.py).
    """

    def __init__(self, variant: ServerSpec, workdir: Path, cwd: Path) -> None:
        self.variant = variant
        self.cwd = cwd
        self.port = free_port(HOST)
        self.count_dir = workdir / "counts"
        self.count_dir.mkdir()
        self.log_path = workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server in its own session, output to a log file (never a full pipe)."""
        cwd = self.cwd
        env = dict(os.environ)
        env.update(self.variant.env)
        env["BENCH_COUNT_DIR"] = str(self.count_dir)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(cwd), os.environ.get("PYTHONPATH", "")) if p
        )
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        # Deferred interrupts: Ctrl-C between the fork and the assignment would leave a
        # server running that stop() does not know about.
        with open(self.log_path, "wb") as log, _interrupts_deferred():
            self.proc = subprocess.Popen(
                self.variant.command(self.port),
                cwd=self.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log_tail(self, lines: int = 15) -> str:
        """The end of the server's output, for error messages."""
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float, answer_within: float = 5.0) -> dict[str, bool]:
        """Wait for the readiness lines, then for a correct answer; returns the probe's facts.

        A server that says it is ready must answer within ``answer_within`` seconds: one
        that never will (say, a listener that silently went away) fails fast.
        """
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        announced: float | None = None
        problem = "no answer yet"
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode} before it was ready:\n"
                    + self.log_tail()
                )
            marks = self.log_path.read_text(errors="replace").count(READY_MARK)
            if marks >= self.variant.ready_lines:
                announced = announced or time.monotonic()
                try:
                    facts = probe(self.port)
                    problem = "wrong answer to GET /"
                except OSError as exc:
                    facts, problem = {"ok": False}, f"GET / fails: {exc}"
                if facts["ok"]:
                    return facts
                if time.monotonic() - announced > answer_within:
                    raise RuntimeError(
                        f"server says it is ready, but {problem} after {answer_within:g} s:\n"
                        + self.log_tail()
                    )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"server not ready after {timeout:g} s ({marks} of "
                    f"{self.variant.ready_lines} ready lines; {problem}):\n" + self.log_tail()
                )
            time.sleep(0.05)

    def stop(self) -> tuple[dict[str, int], dict[str, int]]:
        """Stop the whole group; return each worker's requests, and its ``/fresh`` ones.

        Ctrl-C or SIGTERM arriving meanwhile waits until every process is gone, then
        takes effect: an interrupted stop would leave the workers running.
        """
        with _interrupts_deferred():
            if self.proc is not None:
                stop_process_tree(self.proc, timeout=5.0)
        counts: dict[str, int] = {}
        fresh: dict[str, int] = {}
        for path in sorted(self.count_dir.glob("*.json")):
            record = json.loads(path.read_text())
            # The file's name is the worker's key (``pyc-w1``, ``node-w2``, ``asgi-PID``).
            counts[path.stem] = record["requests"]
            fresh[path.stem] = record.get("fresh", 0)
        return counts, fresh


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the duration, then deliver what arrived."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in dict.fromkeys(caught):
            os.kill(os.getpid(), signum)
