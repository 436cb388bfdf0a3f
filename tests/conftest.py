"""Shared fixtures: run real cluster programs, and reap every process they started.

Every program a test starts carries a unique tag in its environment, inherited by
its workers (and theirs). After each test, whatever still runs with that tag is
killed and reaped, even when the test failed, so no test leaks processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

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
            proc.kill()
            out, err = proc.communicate()
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


def free_port() -> int:
    """A TCP port that is free right now on 127.0.0.1."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
