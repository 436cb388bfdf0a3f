"""The examples that need no server port run as they are and say what they should.

Each example is started from ``examples/`` exactly as its docstring says, must end
by itself, and its output is checked. Lines from different processes may come in
any order, so only each process's own lines are compared in order.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.conftest import Live, Result

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(live: Live, name: str, *args: str) -> Result:
    """Run ``examples/<name>`` to completion; it must end by itself and succeed.

    Output is buffered as for any program writing to a pipe (the fixture's
    ``PYTHONUNBUFFERED`` is switched off), so each process writes whole lines.
    """
    argv = [sys.executable, str(EXAMPLES / name), *args]
    result = live.exec(argv, env={"PYTHONUNBUFFERED": ""}).finish(timeout=20)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result


def test_message_echo(live: Live) -> None:
    result = run_example(live, "message_echo.py")
    assert result.lines == ["primary got back: 'hi there'"]


def test_is_dead(live: Live) -> None:
    result = run_example(live, "is_dead.py")
    lines = result.lines
    primary = [line for line in lines if line.startswith(("Primary ", "worker is dead"))]
    assert primary[0].startswith("Primary ")
    # Both forks are reported before either exit.
    assert primary[1:] == ["worker is dead: False"] * 2 + ["worker is dead: True"] * 2
    assert len([line for line in lines if line.startswith("Current process ")]) == 2


def test_disconnect_timeout(live: Live) -> None:
    result = run_example(live, "disconnect_timeout.py")
    primary = [line for line in result.lines if line.startswith("primary:")]
    assert primary == [
        "primary: worker 1 is working; asking it to shut down",
        "primary: worker 1 disconnected in time; kill timer cancelled",
        "primary: worker 1 exited with status 0",
    ]
    worker = [line for line in result.lines if line.startswith("worker 1:")]
    assert worker[0] == "worker 1: finishing the job in hand"
    assert worker[1].startswith("worker 1: done after ")


def test_exited_after_disconnect(live: Live) -> None:
    result = run_example(live, "exited_after_disconnect.py")
    assert sorted(result.lines) == [
        "Oh, it was just voluntary – no need to worry",
        "worker 2 exited on its own (1): worth a restart",
    ]


def test_setup_primary_with_another_worker_program(live: Live) -> None:
    result = run_example(live, "setup_primary.py")
    # Both workers are silent (settings merge), so only the primary prints.
    assert sorted(result.lines) == [
        "[worker 1] I am worker #1, set up to use https",
        "[worker 2] I am worker #2, set up to use http",
    ]


def test_worker_program_by_itself(live: Live) -> None:
    result = run_example(live, "worker_program.py", "--use", "http")
    assert result.lines == ["not started by a primary: run setup_primary.py instead"]


def test_worker_id(live: Live) -> None:
    result = run_example(live, "worker_id.py")
    assert sorted(result.lines) == ["I am primary", "I am worker #1", "I am worker #2"]
