"""Run a real server program under ``pycluster run``, talk to it, stop it, check the stop.

Every program in ``programs/`` follows one convention so that one harness checks
them all: its first argument is the port; ``/`` (or the line ``pid``) answers the
worker's pid; ``/slow`` (or the line ``slow``) touches ``slow-PID`` in the working
directory, then answers ``slow done PID`` half a second later; the program writes
``cleanup-PID`` from its shutdown hook. The test's working directory is the
cluster's, so those files are where the test looks.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.conftest import Command, Commands, pid_alive, tagged_pids

PROGRAMS = Path(__file__).parent / "programs"
POLICIES = ["rr", "none"]
#: From SIGTERM to the primary's exit. Idle, stops take 0.6 s (programs with their own
#: signal handler) to 3.5 s (others: a second for connections to end, a second for the
#: program, then SIGINT); the bound leaves room for a busy shared machine.
STOP_WITHIN = 8.0
#: Passed to ``pycluster run`` so that a stop that hangs fails in 12 s, not 30 s: a
#: worker killed at that deadline exits by a signal, which fails the test by itself.
SHUTDOWN_TIMEOUT = "12"
LISTENING = re.compile(r"worker \d+ \(pid (\d+)\) listening on ")
EXITED = re.compile(r"worker \d+ \(pid (\d+)\) exited \(([^)]*)\)")


@dataclass
class Running:
    """A ``pycluster run`` cluster that is up: its command, port and worker pids."""

    command: Command
    port: int
    workers: set[int]
    cwd: Path
    tag: str
    policy: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def describe(self) -> str:
        """The cluster's output so far, for failure messages."""
        return f"policy {self.policy}; output:\n{self.command.output}"


def start(
    commands: Commands,
    policy: str,
    port: int,
    *program: str,
    workers: int = 2,
    options: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    subcommand: str = "run",
) -> Running:
    """``pycluster run -w N --policy POLICY [OPTIONS] PROGRAM...``, once every worker listens.

    ``subcommand`` "serve": ``PROGRAM...`` is serve's options and application.
    """
    command = commands.start(
        subcommand, "-w", str(workers), "--policy", policy,
        "--shutdown-timeout", SHUTDOWN_TIMEOUT, "--no-control", *options, *program, env=env,
    )  # fmt: skip
    command.wait_line(f"ready: {workers} worker(s)", timeout=30)
    # ") listening on": pycluster's line, not a server library's own "listening on".
    lines = command.wait_line(f") listening on 127.0.0.1:{port}", count=workers)
    pids = set()
    for line in lines:
        match = LISTENING.search(line)
        assert match, line
        pids.add(int(match.group(1)))
    assert len(pids) == workers, command.output
    return Running(command, port, pids, commands.cluster.tmp, commands.cluster.tag, policy)


def start_serve(
    commands: Commands, policy: str, port: int, app: str, *options: str, workers: int = 2
) -> Running:
    """``pycluster serve`` of ``app`` (``module:attribute`` of ``programs/``) on ``port``."""
    return start(
        commands,
        policy,
        port,
        *("--app-dir", str(PROGRAMS), "-b", f"127.0.0.1:{port}", *options, app),
        workers=workers,
        subcommand="serve",
    )


def program(name: str) -> str:
    """The path of a program file in ``programs/``."""
    return str(PROGRAMS / name)


# -- clients ------------------------------------------------------------------------------------
def http_get(url: str, timeout: float = 10) -> str:
    """GET on a new connection that is closed after the answer; the body, status 200."""
    response = httpx.get(url, timeout=timeout, headers={"Connection": "close"})
    assert response.status_code == 200, (url, response.status_code, response.text)
    return response.text


def line_request(port: int, line: bytes, timeout: float = 10) -> bytes:
    """Send one line on a new TCP connection and read one line back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(line)
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


def pid_of(answer: bytes) -> int:
    """The pid a line server put first in its answer (``PID rest``)."""
    first = (answer.split() or [b""])[0]
    assert first.isdigit(), f"not an answer of a line server: {answer!r}"
    return int(first)


def pids_seen(ask: Callable[[], int], want: set[int], rounds: int = 30, width: int = 4) -> set[int]:
    """Pids that answered ``ask()`` run ``width`` at a time, until every pid of ``want`` did.

    Under round-robin the first round is enough. On a shared socket the kernel picks
    the worker: concurrent connections give each worker its chance, so rounds go on
    until both were seen (or ``rounds`` ran out, and the caller's assertion says so).
    """
    seen: set[int] = set()
    with ThreadPoolExecutor(width) as pool:
        for _ in range(rounds):
            seen.update(pool.map(lambda _: ask(), range(width)))
            if want <= seen:
                break
    return seen


def ws_connect(url: str) -> ClientConnection:
    """A WebSocket client connection (the ``websockets`` library's sync client)."""
    return connect(url, open_timeout=10, close_timeout=5)


def ws_exchange(ws: ClientConnection, message: str) -> str:
    """Send one text message and return the answer."""
    ws.send(message)
    answer = ws.recv(timeout=10)
    assert isinstance(answer, str)
    return answer


def wait_ws_closed(ws: ClientConnection, timeout: float) -> str:
    """Wait until the server ends the connection; how it ended (close code, or a reason)."""
    try:
        message = ws.recv(timeout=timeout)
    except ConnectionClosed as exc:
        return f"closed {exc.rcvd.code if exc.rcvd else 'without a close frame'}"
    except TimeoutError:
        return f"still open {timeout} s after SIGTERM"
    return f"got a message instead of a close: {message!r}"


# -- the stop -----------------------------------------------------------------------------------
@dataclass
class Stop:
    """What a SIGTERM to the primary led to."""

    code: int
    output: str
    seconds: float
    in_flight: str
    in_flight_pid: int
    ws_end: str | None = None
    exits: dict[int, str] = field(default_factory=dict)


def wait_file(pattern: str, where: Path, timeout: float = 10) -> Path:
    """Wait until a file matching ``pattern`` exists in ``where``; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(where.glob(pattern))
        if found:
            return found[0]
        time.sleep(0.02)
    pytest.fail(f"no file {pattern} in {where} after {timeout} s")


@contextmanager
def in_flight(work: Callable[[], str]) -> Iterator[Future[str]]:
    """Run ``work`` (a slow request) in a thread; yields its future."""
    pool = ThreadPoolExecutor(1)
    try:
        yield pool.submit(work)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def stop_during(
    run: Running,
    slow: Callable[[], str],
    ws: ClientConnection | None = None,
    underway: Callable[[], int] | None = None,
) -> Stop:
    """SIGTERM the primary while ``slow()`` is being answered (and ``ws`` is open).

    ``underway()`` waits until the server works on ``slow()`` and returns the pid that
    does; by default it waits for the program's ``slow-PID`` file.
    """
    with in_flight(slow) as answer:
        pid = underway() if underway else int(wait_file("slow-*", run.cwd).name.split("-")[1])
        started = time.monotonic()
        run.command.proc.send_signal(signal.SIGTERM)
        try:
            text = answer.result(timeout=15)
        except Exception as exc:  # the failure is the finding: keep it for the assertion
            text = f"{type(exc).__name__}: {exc}"
        ws_end = wait_ws_closed(ws, timeout=15) if ws is not None else None
        try:
            run.command.proc.wait(20)
        except Exception:
            pass
        seconds = time.monotonic() - started
    code, output = run.command.finish(timeout=5)
    exits = {int(pid): how for pid, how in EXITED.findall(output)}
    return Stop(code, output, seconds, text, pid, ws_end, exits)


def check_stop(
    run: Running,
    stop: Stop,
    cleanup: bool = True,
    ws_close: int | None = None,
    drains: bool = True,
) -> None:
    """The stop was graceful: in-flight work done, hooks run, quick, nothing left behind.

    ``ws_close``: the close code the server's own shutdown sends an open WebSocket
    (``None``: the server has no graceful WebSocket close; the connection just ends).
    ``drains``: whether the server's own stop finishes a request in progress (if not,
    the request must end, answered or cut, rather than hang).
    """
    context = f"policy {run.policy}; stop took {stop.seconds:.1f} s; output:\n{stop.output}"
    if drains:
        assert stop.in_flight == f"slow done {stop.in_flight_pid}", context
    else:
        assert stop.in_flight == f"slow done {stop.in_flight_pid}" or "Error" in stop.in_flight, (
            context
        )
    if stop.ws_end is not None:
        assert stop.ws_end.startswith("closed"), f"WebSocket at SIGTERM: {stop.ws_end}; {context}"
        if ws_close is not None:
            assert stop.ws_end == f"closed {ws_close}", (
                f"WebSocket at SIGTERM: {stop.ws_end}; {context}"
            )
    assert stop.code == 0, context
    assert "Traceback" not in stop.output, context
    assert {pid: stop.exits.get(pid) for pid in run.workers} == dict.fromkeys(
        run.workers, "code 0"
    ), context
    assert stop.seconds < STOP_WITHIN, context
    if cleanup:
        missing = [pid for pid in run.workers if not (run.cwd / f"cleanup-{pid}").exists()]
        assert not missing, f"no cleanup hook ran in worker(s) {missing}; {context}"
    assert_nothing_left(run)


def assert_nothing_left(run: Running) -> None:
    """No process of the cluster is alive any more (workers, or anything they started)."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        left = tagged_pids(run.tag) + [pid for pid in run.workers if pid_alive(pid)]
        if not left:
            return
        time.sleep(0.05)
    pytest.fail(f"processes left behind: {sorted(set(left))}; {run.describe()}")


def echo_body() -> bytes:
    """A request body big enough to cross several socket buffers, and not all alike."""
    return os.urandom(64 * 1024) + bytes(range(256)) * 256


def connection_owner(client: socket.socket, pids: set[int], timeout: float = 10) -> int:
    """The pid among ``pids`` whose descriptors hold the server end of ``client``.

    For servers that cannot say who they are (``python -m http.server``): the
    server end is found in ``/proc/net/tcp`` and its inode among each worker's
    descriptors.
    """
    here, there = client.getsockname(), client.getpeername()
    server_end = (_proc_address(there), _proc_address(here))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        inode = _tcp_inode(*server_end)
        if inode:
            link = f"socket:[{inode}]"
            for pid in pids:
                try:
                    fds = os.listdir(f"/proc/{pid}/fd")
                except OSError:
                    continue
                for fd in fds:
                    try:
                        if os.readlink(f"/proc/{pid}/fd/{fd}") == link:
                            return pid
                    except OSError:
                        continue
        time.sleep(0.01)
    pytest.fail(f"no process of {sorted(pids)} holds the server end of {here} -> {there}")


def _proc_address(address: tuple[str, int]) -> str:
    """An IPv4 address as ``/proc/net/tcp`` writes it (host byte order, hex)."""
    packed = socket.inet_aton(address[0])
    return f"{int.from_bytes(packed, sys.byteorder):08X}:{address[1]:04X}"


def _tcp_inode(local: str, remote: str) -> str | None:
    with open("/proc/net/tcp") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[2] == remote:
                return fields[9]
    return None
