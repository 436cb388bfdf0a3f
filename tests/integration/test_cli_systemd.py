"""systemd: the example unit of docs/systemd, run with socket activation and notifications.

No systemd here: the test plays its part. It opens the listening socket and passes it
as descriptor 3 with ``LISTEN_PID``/``LISTEN_FDS`` (as ``pycluster-app.socket`` would),
and reads the primary's notifications on an abstract datagram socket named by
``NOTIFY_SOCKET``, running the unit's ``ExecStart`` with our interpreter and app.
"""

from __future__ import annotations

import http.client
import json
import queue
import shlex
import signal
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from pycluster._cli.main import build_parser
from tests.conftest import Cluster, Commands

pytest.importorskip("uvicorn")

UNIT = Path(__file__).resolve().parents[2] / "docs" / "systemd" / "pycluster-app.service"

APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"activated"})
"""

# What systemd does between fork and exec: the socket becomes descriptor 3, and
# LISTEN_PID names the process that will run the service.
ACTIVATE = """
import os, sys
fd = int(sys.argv[1])
os.dup2(fd, 3)
os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = "1"
os.execv(sys.argv[2], sys.argv[2:])
"""


def exec_start(control: str) -> list[str]:
    """The unit's ExecStart, run by this interpreter, with a private control socket."""
    line = next(x for x in UNIT.read_text().splitlines() if x.startswith("ExecStart="))
    argv = shlex.split(line.removeprefix("ExecStart="))
    assert argv[0].endswith("/pycluster") and argv[1] == "serve"
    argv = [sys.executable, "-m", "pycluster", *argv[1:]]
    argv[argv.index("--control") + 1] = control
    argv[argv.index("--workers") + 1] = "2"
    return argv


class Notifications:
    """The datagrams the primary sends to systemd, read as they come (as systemd does)."""

    def __init__(self) -> None:
        self.name = f"pycluster-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)
        self.seen: list[str] = []
        self._inbox: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                self._inbox.put(self.sock.recv(4096).decode())
            except OSError:
                return  # closed at the end of the test

    def wait_for(self, state: str, timeout: float = 15) -> str:
        """The next message that contains ``state`` (watchdog pings are skipped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                message = self._inbox.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.seen.append(message)
            if state in message.split("\n"):
                return message
        pytest.fail(f"no {state} in {timeout} s; got {self.seen}")

    def close(self) -> None:
        """Stop reading."""
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def get(port: int) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_example_unit_with_socket_activation(cluster_env: Cluster, commands: Commands) -> None:
    cluster_env.write("app.py", APP)
    control = str(cluster_env.tmp / "run" / "control.sock")
    notify = Notifications()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    wrapper = cluster_env.write("activate.py", ACTIVATE)
    try:
        argv = [sys.executable, str(wrapper), str(listener.fileno()), *exec_start(control)]
        env = {"NOTIFY_SOCKET": "@" + notify.name, "WATCHDOG_USEC": "300000"}
        primary = commands.start(argv=argv, env=env, pass_fds=(listener.fileno(),))
        ready = notify.wait_for("READY=1")
        assert f"MAINPID={primary.proc.pid}" in ready
        assert "STATUS=2 worker(s) on 127.0.0.1:" in ready
        assert "socket activation: listening on descriptors [3]" in primary.output
        assert get(port) == (200, b"activated")
        notify.wait_for("WATCHDOG=1")

        code, output = commands.run("reload", "--control", control)
        assert code == 0, output
        reloading = notify.wait_for("RELOADING=1")
        assert "MONOTONIC_USEC=" in reloading
        notify.wait_for("READY=1")
        assert get(port) == (200, b"activated")

        primary.proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1")
        code, output = primary.finish()
        assert code == 0, output
    finally:
        listener.close()
        notify.close()


MANIFEST = Path(__file__).resolve().parents[2] / "docs" / "kubernetes" / "deployment.yaml"


def test_kubernetes_manifest_commands_are_valid() -> None:
    # The manifest writes commands as one-line flow sequences: valid JSON too.
    commands = [
        json.loads(line.split(":", 1)[1])
        for line in MANIFEST.read_text().splitlines()
        if line.strip().startswith("command: [")
    ]
    serve, probe = commands
    assert serve[0] == probe[0] == "pycluster"
    parsed = build_parser().parse_args(serve[1:])
    assert parsed.command == "serve" and parsed.app == "app:app"
    assert parsed.setting_max_memory == 512 * 1024 * 1024
    checked = build_parser().parse_args(probe[1:])
    assert checked.check and checked.control == parsed.control
