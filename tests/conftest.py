"""Shared fixtures: run real cluster programs, and reap every process they started.

Every program a test starts carries a unique tag in its environment, inherited by
its workers (and theirs). After each test, whatever still runs with that tag is
killed and reaped, even when the test failed, so no test leaks processes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

TAG_VAR = "PYCLUSTER_TEST_TAG"


def tagged_pids(tag: str) -> list[int]:
    """PIDs of live processes whose environment carries ``tag``."""
    needle = f"{TAG_VAR}={tag}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class Result:
    """What a finished cluster program printed and how it ended."""

    returncode: int
    stdout: str
    stderr: str
    pid: int

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    def events(self) -> list[dict[str, object]]:
        """Lines that are JSON objects (programs print events with ``emit``)."""
        out = []
        for line in self.lines:
            line = line.strip()
            if line.startswith("{"):
                out.append(json.loads(line))
        return out


@dataclass
class Cluster:
    """Starts programs in a temporary directory, tagged for reaping."""

    tmp: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def write(self, name: str, code: str) -> Path:
        """Write a program file (dedented) and return its path."""
        path = self.tmp / name
        path.write_text(textwrap.dedent(code))
        return path

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env[TAG_VAR] = self.tag
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("PYCLUSTER_SCHED_POLICY", None)
        if extra:
            env.update(extra)
        return env

    def start(
        self,
        code: str,
        *args: str,
        env: dict[str, str] | None = None,
        name: str = "main.py",
        python_args: tuple[str, ...] = (),
    ) -> subprocess.Popen[str]:
        """Start a program (the primary) in the background, output piped."""
        path = self.write(name, code)
        proc = subprocess.Popen(
            [sys.executable, *python_args, str(path), *args],
            cwd=self.tmp,
            env=self.env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def run(
        self,
        code: str,
        *args: str,
        env: dict[str, str] | None = None,
        timeout: float = 30,
        name: str = "main.py",
        python_args: tuple[str, ...] = (),
    ) -> Result:
        """Run a program to completion and return its output."""
        proc = self.start(code, *args, env=env, name=name, python_args=python_args)
        return self.finish(proc, timeout)

    def finish(self, proc: subprocess.Popen[str], timeout: float = 30) -> Result:
        """Wait for a started program; on timeout kill it and fail with its output."""
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # Kill the workers too: they hold the output pipes open.
            proc.kill()
            for pid in tagged_pids(self.tag):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                out, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                out, err = "", ""
            pytest.fail(f"program did not finish in {timeout} s\nstdout:\n{out}\nstderr:\n{err}")
        return Result(proc.returncode, out, err, proc.pid)

    def reap(self) -> None:
        """Kill and reap everything this test started."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            pids = tagged_pids(self.tag)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        for proc in self.procs:
            try:
                proc.communicate(timeout=5)
            except (subprocess.TimeoutExpired, ValueError):
                pass


@pytest.fixture
def cluster_env(tmp_path: Path) -> Iterator[Cluster]:
    """A place to run cluster programs; every process they start is reaped afterwards."""
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.reap()


def get_over_unix_socket(path: Path | str) -> bytes:
    """The whole answer to ``GET /`` (``Connection: close``) over a Unix socket."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def make_cert(directory: Path, name: str = "server") -> tuple[Any, Path, Path]:
    """A certificate authority made for this test, and a certificate it signed for
    127.0.0.1 and localhost, written as ``NAME-cert.pem`` and ``NAME-key.pem`` in
    ``directory``: ``(ca, cert, key)``. Skips the test without ``trustme``."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return ca, cert, key


#: The event loops a test of asyncio servers runs on: ``pytest.mark.parametrize("loop",
#: LOOPS)``; uvloop's case skips where it is not installed.
LOOPS = [
    "asyncio",
    pytest.param(
        "uvloop",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("uvloop") is None, reason="uvloop is not installed"
        ),
    ),
]


def free_port() -> int:
    """A TCP port that is free right now on 127.0.0.1."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveProgram:
    """A started program the test talks to while it runs.

    Threads drain its stdout and stderr as they come, so a test can wait for an
    event line while the program keeps running, and the pipes never fill up.
    """

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        import threading

        self.proc = proc
        self.pid = proc.pid
        self._cond = threading.Condition()
        self._out: list[str] = []
        self._err: list[bytes] = []
        self._pumps = [
            threading.Thread(target=self._pump, args=(proc.stdout, True), daemon=True),
            threading.Thread(target=self._pump, args=(proc.stderr, False), daemon=True),
        ]
        for t in self._pumps:
            t.start()

    def _pump(self, stream: object, is_out: bool) -> None:
        fd = stream.fileno()  # type: ignore[attr-defined]
        partial = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            with self._cond:
                if is_out:
                    partial += chunk
                    *done, partial = partial.split(b"\n")
                    self._out.extend(line.decode(errors="replace") for line in done)
                else:
                    self._err.append(chunk)
                self._cond.notify_all()
        with self._cond:
            if partial:
                self._out.append(partial.decode(errors="replace"))
            self._cond.notify_all()

    @property
    def stdout(self) -> str:
        with self._cond:
            return "\n".join(self._out)

    @property
    def stderr(self) -> str:
        with self._cond:
            return b"".join(self._err).decode(errors="replace")

    def wait_for_stderr(self, text: str, timeout: float = 10) -> str:
        """Wait until ``text`` is on stderr; return stderr. Log lines come on stderr and
        events on stdout: the two pipes race, so an event does not mean its log line
        has been read yet."""
        deadline = time.monotonic() + timeout
        while text not in (err := self.stderr):
            assert time.monotonic() < deadline, f"{text!r} not on stderr in {timeout} s:\n{err}"
            time.sleep(0.05)
        return err

    def events(self) -> list[dict[str, object]]:
        """The JSON-object lines printed so far."""
        with self._cond:
            lines = list(self._out)
        return [json.loads(s) for s in (x.strip() for x in lines) if s.startswith("{")]

    def wait_for(
        self, count: int = 1, timeout: float = 10, **match: object
    ) -> list[dict[str, object]]:
        """Wait until ``count`` events carry every ``key=value`` of ``match``; return them all.

        A value of ``...`` only asks for the key to be there.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [e for e in self.events() if _matches(e, match)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._pumps_alive()):
                    break
                self._cond.wait(min(left, 0.1))
        pytest.fail(
            f"no {count} event(s) matching {match} in {timeout} s\n"
            f"stdout:\n{self.stdout}\nstderr:\n{self.stderr}\n"
            f"processes:\n{process_tree(self.pid)}"
        )

    def wait_line(self, text: str, count: int = 1, timeout: float = 10) -> list[str]:
        """Wait until ``text`` occurs ``count`` times in the output; return its lines."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [line for line in self._out if text in line]
                # Lines of processes sharing the pipe may interleave: count occurrences.
                if sum(line.count(text) for line in found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._pumps_alive()):
                    break
                self._cond.wait(min(left, 0.1))
        pytest.fail(
            f"no {count} line(s) with {text!r} in {timeout} s\n"
            f"stdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        )

    def _pumps_alive(self) -> bool:
        return any(t.is_alive() for t in self._pumps)

    def finish(self, timeout: float = 15) -> Result:
        """Wait for the program (and every process sharing its output) to end."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(
                f"program did not finish in {timeout} s\n"
                f"stdout:\n{self.stdout}\nstderr:\n{self.stderr}"
            )
        for t in self._pumps:
            t.join(timeout)
        return Result(self.proc.returncode, self.stdout, self.stderr, self.pid)

    def close(self) -> None:
        """Reap the process and close its pipes (its output's writers must be gone)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for t in self._pumps:
            t.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def exchange_until_closed(port: int, data: bytes) -> bytes:
    """Send ``data`` on a new connection; everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def check_head_limit(port: int, path: bytes) -> None:
    """``pycluster serve``: a GET of ``path`` with a 60 KB cookie is served (200); one
    with headers past 64 KiB is a 431, not a worker's memory growing."""
    request = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n"
    cookie = b"Cookie: " + b"c" * 60_000 + b"\r\n"
    data = exchange_until_closed(port, request + cookie + b"Connection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 "), data[:200]
    endless = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 1000) for i in range(70))
    data = exchange_until_closed(port, request + endless + b"\r\n")
    assert data.startswith(b"HTTP/1.1 431 "), data[:200]


def post_after_100_continue(port: int, path: str, body: bytes) -> bytes:
    """POST ``body`` with ``Expect: 100-continue``, sent only once the server said 100
    (which must come first, alone); the rest of what the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n".encode()
            + b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def process_tree(root: int) -> str:
    """``root`` and its descendants: pid, state, kernel wait channel, command line.

    Put into the failure message of a wait that timed out, so that a program stalled
    somewhere says where (a state ``S`` with its wait channel, ``R`` spinning, ``Z``).
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    lines, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0].decode()
            with open(f"/proc/{pid}/wchan") as f:
                wchan = f.read() or "-"
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        threads = len(os.listdir(f"/proc/{pid}/task")) if os.path.isdir(f"/proc/{pid}/task") else 0
        lines.append(f"  {pid} {state} wchan={wchan} threads={threads} {cmd}")
        todo.extend(children.get(pid, []))
    return "\n".join(lines) or "  (gone)"


def _matches(event: dict[str, object], match: dict[str, object]) -> bool:
    return all(k in event and (v is ... or event[k] == v) for k, v in match.items())


class Live:
    """Starts programs as ``LiveProgram``s, tagged like ``Cluster``'s, reaped after the test."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.programs: list[LiveProgram] = []

    def start(
        self, code: str, *args: str, env: dict[str, str] | None = None, name: str = "main.py"
    ) -> LiveProgram:
        """Write ``code`` to ``name`` and start it with ``args``."""
        path = self.cluster.write(name, code)
        return self.exec([sys.executable, str(path), *args], env=env)

    def exec(self, argv: list[str], env: dict[str, str] | None = None) -> LiveProgram:
        """Start ``argv`` in the test's directory with the test's tag."""
        proc = subprocess.Popen(
            argv,
            cwd=self.cluster.tmp,
            env=self.cluster.env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        program = LiveProgram(proc)
        self.programs.append(program)
        return program


@pytest.fixture
def live(cluster_env: Cluster) -> Iterator[Live]:
    """Start programs and talk to them while they run; everything is reaped afterwards."""
    starter = Live(cluster_env)
    try:
        yield starter
    finally:
        for program in starter.programs:
            if program.proc.poll() is None:
                program.proc.kill()
        cluster_env.reap()  # workers hold the output pipes too: end them before closing
        for program in starter.programs:
            program.close()


class Command:
    """A command-line program (``python -m pycluster ...``) a test talks to while it runs.

    Its stdout and stderr are merged (the CLI logs to stderr) and read as they come by
    a thread, so the test can wait for a log line while the program keeps running.
    """

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        import threading

        self.proc = proc
        self._cond = threading.Condition()
        self._lines: list[str] = []
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        partial = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            with self._cond:
                if not chunk:
                    if partial:
                        self._lines.append(partial.decode(errors="replace"))
                    self._cond.notify_all()
                    return
                partial += chunk
                *done, partial = partial.split(b"\n")
                self._lines.extend(line.decode(errors="replace") for line in done)
                self._cond.notify_all()

    @property
    def output(self) -> str:
        """Everything it printed so far."""
        with self._cond:
            return "\n".join(self._lines)

    def wait_line(self, text: str, timeout: float = 15, count: int = 1) -> list[str]:
        """Wait until ``count`` lines contain ``text``; return those lines."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [line for line in self._lines if text in line]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or not self._pump.is_alive():
                    break
                self._cond.wait(min(left, 0.1))
        pytest.fail(f"no {count} line(s) with {text!r} in {timeout} s; output:\n{self.output}")

    def finish(self, timeout: float = 20) -> tuple[int, str]:
        """Wait for the program to end; returns its status and its whole output."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"program did not finish in {timeout} s; output:\n{self.output}")
        self._pump.join(timeout)
        return self.proc.returncode, self.output

    def close(self) -> None:
        """Reap the process and close its pipe."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._pump.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Commands:
    """Starts ``python -m pycluster ...`` (or any argv) tagged like ``Cluster``'s programs."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.started: list[Command] = []

    def start(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        pass_fds: tuple[int, ...] = (),
        argv: list[str] | None = None,
        user: int | None = None,
    ) -> Command:
        """Start ``python -m pycluster ARGS`` (or ``argv``) in the test's directory."""
        proc = subprocess.Popen(
            argv or [sys.executable, "-m", "pycluster", *args],
            cwd=self.cluster.tmp,
            env=self.cluster.env(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=pass_fds,
            start_new_session=True,
            user=user,
        )
        command = Command(proc)
        self.started.append(command)
        return command

    def run(self, *args: str, timeout: float = 20, **kwargs: object) -> tuple[int, str]:
        """Run a command to completion: its status and output."""
        return self.start(*args, **kwargs).finish(timeout)  # type: ignore[arg-type]


@pytest.fixture
def commands(cluster_env: Cluster) -> Iterator[Commands]:
    """Run command-line programs; every process they start is reaped afterwards."""
    starter = Commands(cluster_env)
    try:
        yield starter
    finally:
        for command in starter.started:
            if command.proc.poll() is None:
                command.proc.kill()
        cluster_env.reap()
        for command in starter.started:
            command.close()
