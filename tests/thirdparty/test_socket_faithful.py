"""A worker's listening socket is a real socket that behaves as the program asked.

``programs/socket_probe.py`` records what a program observes of the listening
sockets it makes (type, descriptor, blocking mode and timeout set before ``bind`` or
after ``listen``, addresses, options, inheritability, ``dup``, ``detach``, and the
connections ``accept()`` returns). Run in plain Python and as the only worker of
``pycluster run``, under either policy, the observations must be the same
(API.md, "Limits and edge rules": integrations never alter a program's objects).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Commands, free_port
from tests.thirdparty.harness import POLICIES, line_request, pid_of, program, start


def observations(path: Path, output: str) -> dict[str, Any]:
    """The probe's record, flattened to ``section.key: value``."""
    if not path.exists():
        pytest.fail(f"the probe wrote no observations; output:\n{output}")
    return flatten(json.loads(path.read_text()))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What the probe observes without pycluster."""
    where = tmp_path_factory.mktemp("plain")
    result = subprocess.run(
        [sys.executable, program("socket_probe.py"), str(free_port()), "probe.json"],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    observed = observations(where / "probe.json", result.stdout + result.stderr)
    # The probe itself works: it saw what Python documents.
    assert (
        observed["nonblocking_before_bind.accept_nothing_waiting"]
        == "raised BlockingIOError EAGAIN"
    )
    assert observed["nonblocking_before_bind.accept_with_timeout"] == "raised TimeoutError"
    assert observed["nonblocking_before_bind.accept_blocking_nothing_waiting"] == "blocked"
    assert observed["timeout_before_bind.accept_nothing_waiting"] == "raised TimeoutError"
    assert observed["nonblocking_before_bind.dup.accepted.peer_is_client"] is True
    assert observed["nonblocking_before_bind.accepted_blocking.conn_TCP_NODELAY"] is True
    assert observed["nonblocking_before_bind.accept_after_shutdown"] == "raised OSError EINVAL"
    return observed


@pytest.mark.parametrize("policy", POLICIES)
def test_worker_sees_what_plain_python_sees(
    commands: Commands, plain: dict[str, Any], policy: str
) -> None:
    port = str(free_port())
    code, output = commands.run(
        "run", "-w", "1", "--policy", policy, "--no-control", "--restart", "never",
        program("socket_probe.py"), port, "probe.json", timeout=60,
    )  # fmt: skip
    observed = observations(commands.cluster.tmp / "probe.json", output)
    differences = [
        f"  {key}: plain {plain.get(key, '<missing>')!r}, worker {observed.get(key, '<missing>')!r}"
        for key in sorted(set(plain) | set(observed))
        if plain.get(key, "<missing>") != observed.get(key, "<missing>")
    ]
    assert not differences, (
        f"policy {policy}: a worker's listening socket differs from plain Python's:\n"
        + "\n".join(differences)
    )
    assert code == 0, output


@pytest.mark.parametrize("policy", POLICIES)
def test_a_workers_shutdown_leaves_the_others_serving(commands: Commands, policy: str) -> None:
    """``shutdown(SHUT_RDWR)`` on a worker's listening socket ends that worker's accept()
    only: the port stays open, and the other worker serves every connection after it."""
    port = free_port()
    run = start(commands, policy, port, program("shutdown_listener.py"), str(port))
    stopped = pid_of(line_request(port, b"shutdown\n"))
    run.command.wait_line(f"{stopped} stopped accepting")
    (other,) = run.workers - {stopped}
    answers = [pid_of(line_request(port, b"hello\n")) for _ in range(6)]
    assert answers == [other] * 6, f"answers {answers}, shut down {stopped}; {run.describe()}"
    run.command.proc.send_signal(signal.SIGTERM)
    code, output = run.command.finish()
    assert code == 0, output
