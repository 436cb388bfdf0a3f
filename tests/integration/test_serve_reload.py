"""``pycluster serve --reload``: a changed source file is served soon, by a rolling reload."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.conftest import Cluster, Commands, free_port
from tests.integration.test_cli_serve import request, serve, stop

pytest.importorskip("uvicorn")
pytest.importorskip("watchfiles")

VERSIONED_APP = """
from helper import VERSION

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = VERSION.encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
"""


def write_version(cluster_env: Cluster, text: str, name: str = "helper.py") -> None:
    path = cluster_env.write(name, text)
    # Some file systems keep whole-second times: make the change visible to pollers too.
    now = time.time()
    os.utime(path, (now, now))


def wait_for_answer(port: int, expected: str, timeout: float = 20) -> float:
    """Seconds until every worker answers ``expected`` (two in a row per worker)."""
    started = time.monotonic()
    streak = 0
    while streak < 4:
        if time.monotonic() - started > timeout:
            pytest.fail(f"{expected!r} not served within {timeout} s")
        try:
            status, body = request(port)
        except OSError:
            streak = 0
            continue
        streak = streak + 1 if (status, body) == (200, expected) else 0
    return time.monotonic() - started


def test_a_changed_module_is_served_after_a_rolling_reload(
    cluster_env: Cluster, commands: Commands
) -> None:
    write_version(cluster_env, "VERSION = 'one'\n")
    cluster_env.write("versioned.py", VERSIONED_APP)
    port = free_port()
    command = serve(
        commands,
        cluster_env,
        "versioned:app",
        *("-w", "2", "-b", f"127.0.0.1:{port}", "--reload", "--reload-dir", str(cluster_env.tmp)),
    )
    command.wait_line(f"watching {cluster_env.tmp} for changes (*.py)")
    assert request(port) == (200, "one")
    write_version(cluster_env, "VERSION = 'two'\n")
    took = wait_for_answer(port, "two")
    command.wait_line("reload done")
    print(f"the change was served after {took:.2f} s")  # the goal: within 2 s
    assert "helper.py changed: reloading" in command.output
    # Files that are not sources (by default only *.py are) do not reload.
    cluster_env.write("notes.txt", "nothing to do with the code\n")
    time.sleep(1.0)
    assert command.output.count("changed: reloading") == 1
    stop(command)


def test_broken_code_leaves_the_old_workers_serving(
    cluster_env: Cluster, commands: Commands
) -> None:
    write_version(cluster_env, "VERSION = 'good'\n")
    cluster_env.write("versioned.py", VERSIONED_APP)
    port = free_port()
    command = serve(
        commands,
        cluster_env,
        "versioned:app",
        *("-w", "1", "-b", f"127.0.0.1:{port}", "--reload", "--reload-include", "*.cfg"),
    )
    command.wait_line("watching ")
    write_version(cluster_env, "VERSION = (\n")  # a syntax error
    command.wait_line("reload failed")
    assert request(port) == (200, "good")
    # Said once by the primary: one line, and the application's traceback.
    errors = command.wait_line("cannot load the application versioned:app: SyntaxError")
    assert len(errors) == 1 and "helper.py, line 1" in errors[0], command.output
    assert command.output.count("Traceback") == 1, command.output
    # A file --reload-include names reloads too; the fixed code is then served.
    write_version(cluster_env, "VERSION = 'fixed'\n")
    wait_for_answer(port, "fixed")
    cluster_env.write("settings.cfg", "[x]\n")
    command.wait_line("settings.cfg changed: reloading")
    command.wait_line("reload done", count=2)
    command.proc.send_signal(signal.SIGTERM)
    code, output = command.finish()
    assert code == 0 and output.count("Traceback") == 1, output


def test_an_app_broken_at_start_waits_for_the_fix(cluster_env: Cluster, commands: Commands) -> None:
    write_version(cluster_env, "VERSION = (\n")  # broken from the start
    cluster_env.write("versioned.py", VERSIONED_APP)
    port = free_port()
    control = str(cluster_env.tmp / "run" / "control.sock")
    command = commands.start(
        *("serve", "--control", control, "-w", "2", "-b", f"127.0.0.1:{port}", "--reload"),
        "versioned:app",
    )
    command.wait_line("waiting for a change of the sources")
    assert command.output.count("cannot load the application") == 1, command.output
    assert command.proc.poll() is None  # the primary waits, with its watcher
    write_version(cluster_env, "VERSION = 'repaired'\n")
    command.wait_line("changed: starting the workers again")
    wait_for_answer(port, "repaired")
    command.wait_line("listening on", count=2)
    command.proc.send_signal(signal.SIGTERM)
    code, output = command.finish()
    assert code == 0, output


def test_a_missing_reload_dir_is_one_line_before_any_fork(
    cluster_env: Cluster, commands: Commands
) -> None:
    cluster_env.write("versioned.py", VERSIONED_APP)
    code, output = commands.run(
        *("serve", "--no-control", "-w", "2", "-b", f"127.0.0.1:{free_port()}", "--reload"),
        *("--reload-dir", "nowhere", "versioned:app"),
    )
    assert code == 2, output
    assert "--reload-dir" in output and "nowhere: no such directory" in output
    assert "started in slot" not in output and "Traceback" not in output, output
