"""``cluster.aio.create_server`` with a protocol class that has ``__slots__``.

pycluster must serve any protocol class a program brings, without assigning
attributes on its instances, and still count the connections: a disconnect waits
for open connections (and no longer than that), and ``max_requests`` recycles a
worker after that many connections.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import sys
import time
from collections import Counter

import pytest

from tests.conftest import Commands, Live, LiveProgram, free_port, pid_alive
from tests.thirdparty.harness import (
    POLICIES,
    STOP_WITHIN,
    in_flight,
    line_request,
    pid_of,
    pids_seen,
    program,
    wait_file,
)
from tests.thirdparty.harness import start as start_cli

REPLACES = re.compile(r"\(pid (\d+)\) replaces worker \d+ \(pid (\d+)\)")


def start(live: Live, policy: str, port: int, max_requests: int) -> tuple[LiveProgram, set[int]]:
    """The program's primary with two listening workers; returns it and their pids."""
    primary = live.exec(
        [sys.executable, program("aio_slots.py"), str(port), str(max_requests)],
        env={"PYCLUSTER_SCHED_POLICY": policy},
    )
    events = primary.wait_for(2, timeout=30, event="listening")
    return primary, {int(str(e["pid"])) for e in events}


def ask(sock: socket.socket, line: bytes) -> bytes:
    """Send a line on an open connection and read the answer line."""
    sock.sendall(line + b"\n")
    answer = b""
    while not answer.endswith(b"\n"):
        chunk = sock.recv(4096)
        assert chunk, f"connection closed; had {answer!r}"
        answer += chunk
    return answer


@pytest.mark.parametrize("policy", POLICIES)
def test_served_and_drained_on_disconnect(live: Live, policy: str) -> None:
    port = free_port()
    primary, workers = start(live, policy, port, max_requests=0)
    seen = pids_seen(lambda: pid_of(line_request(port, b"pid\n")), workers)
    assert seen == workers, f"answered by {seen}, workers {workers}\n{primary.stderr}"

    with socket.create_connection(("127.0.0.1", port), timeout=10) as idle:
        idle_pid = int(ask(idle, b"hello").split()[0])
        with in_flight(lambda: line_request(port, b"slow\n", timeout=20).decode()) as slow:
            slow_pid = int(wait_file("slow-*", live.cluster.tmp).name.split("-")[1])
            primary.proc.send_signal(signal.SIGTERM)  # cluster.run(): disconnect every worker
            assert slow.result(timeout=15) == f"{slow_pid} slow\n"
        # The worker holding the idle connection drains: it still answers there, and
        # it does not exit while the connection is open.
        assert ask(idle, b"still served") == b"%d still served\n" % idle_pid
        time.sleep(0.3)
        assert pid_alive(idle_pid), "the worker exited with a connection still open"
        closed = time.monotonic()
    # Once the last connection is closed, the disconnect completes at once.
    result = primary.finish(timeout=20)
    took = time.monotonic() - closed
    exits = {
        int(str(e["pid"])): (e["code"], e["signal"])
        for e in primary.events()
        if e["event"] == "exit"
    }
    context = f"policy {policy}; took {took:.1f} s\n{result.stdout}\n{result.stderr}"
    assert exits == dict.fromkeys(workers, (0, None)), context
    assert took < STOP_WITHIN, context
    assert result.returncode == 0 and "Traceback" not in result.stderr, context
    for pid in workers:
        assert (live.cluster.tmp / f"cleanup-{pid}").exists(), context


@pytest.mark.parametrize("policy", POLICIES)
def test_worker_disconnect_drains_its_connections(live: Live, policy: str) -> None:
    """``cluster.worker.disconnect()`` in one worker: it takes no new connection, still
    serves the ones it has, and exits once they are closed; the other worker serves on."""
    port = free_port()
    primary, workers = start(live, policy, port, max_requests=0)
    with contextlib.ExitStack() as stack:
        idle = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
        leaving = pid_of(ask(idle, b"hello"))
        (staying,) = workers - {leaving}
        for _ in range(50):  # a second connection to the same worker, to ask it to leave
            other = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
            if pid_of(ask(other, b"hello")) == leaving:
                break
        else:
            pytest.fail(f"no second connection reached worker {leaving}")
        assert ask(other, b"disconnect") == b"%d disconnect\n" % leaving
        # The close goes on in the background: once the other worker has answered a new
        # connection, every new connection is the other worker's.
        deadline = time.monotonic() + 5
        while pid_of(line_request(port, b"pid\n")) != staying and time.monotonic() < deadline:
            time.sleep(0.05)
        answers = {pid_of(line_request(port, b"pid\n")) for _ in range(6)}
        assert answers == {staying}, f"after the disconnect, answered by {answers}"
        assert ask(idle, b"still served") == b"%d still served\n" % leaving
        assert pid_alive(leaving), "the worker exited with connections still open"
        closed = time.monotonic()
    (exit_event,) = primary.wait_for(1, timeout=15, event="exit", pid=leaving)
    took = time.monotonic() - closed
    context = f"policy {policy}; exit {took:.1f} s after the last connection closed\n{primary.stdout}\n{primary.stderr}"
    assert (exit_event["code"], exit_event["signal"]) == (0, None), context
    assert took < STOP_WITHIN, context
    assert (live.cluster.tmp / f"cleanup-{leaving}").exists(), context
    assert pid_of(line_request(port, b"pid\n")) == staying
    primary.proc.send_signal(signal.SIGTERM)
    assert primary.finish(timeout=20).returncode == 0, context


@pytest.mark.parametrize("policy", POLICIES)
def test_max_requests_recycles_after_that_many_connections(live: Live, policy: str) -> None:
    limit = 3
    port = free_port()
    primary, workers = start(live, policy, port, max_requests=limit)
    served: Counter[int] = Counter()
    restarts: list[dict[str, object]] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        served[pid_of(line_request(port, b"pid\n"))] += 1
        time.sleep(0.05)  # the primary checks the counts a few times a second
        restarts = [e for e in primary.events() if e["event"] == "restart"]
        replacements = {int(str(e["new"])) for e in restarts}
        if restarts and replacements & set(served):
            break  # a worker was recycled and its replacement has answered
    context = f"policy {policy}; served {dict(served)}\n{primary.stdout}\n{primary.stderr}"
    assert restarts, f"no worker was recycled after {sum(served.values())} connections; {context}"
    assert replacements & set(served), f"no replacement answered; {context}"
    for event in restarts:
        old = int(str(event["old"]))
        assert old in workers, context
        # Recycled after its limit: not before it was reached.
        assert served[old] >= limit, context
        primary.wait_for(1, timeout=15, event="exit", pid=old)
    exits = [e for e in primary.events() if e["event"] == "exit"]
    assert all((e["code"], e["signal"]) == (0, None) for e in exits), context
    primary.proc.send_signal(signal.SIGTERM)
    result = primary.finish(timeout=20)
    assert result.returncode == 0, context


@pytest.mark.parametrize("policy", POLICIES)
def test_cli_max_requests_recycles_the_same_program(commands: Commands, policy: str) -> None:
    """``pycluster run --max-requests``: the program's workers, recycled by the CLI's primary."""
    limit = 3
    port = free_port()
    run = start_cli(commands, policy, port, program("aio_slots.py"), str(port), "0",
                    options=("--max-requests", str(limit)))  # fmt: skip
    served: Counter[int] = Counter()
    replaced: dict[int, int] = {}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not set(replaced.values()) & set(served):
        served[pid_of(line_request(port, b"pid\n"))] += 1
        time.sleep(0.05)  # the primary checks the counts a few times a second
        replaced = {int(old): int(new) for new, old in REPLACES.findall(run.command.output)}
    context = f"policy {policy}; served {dict(served)}; {run.describe()}"
    assert replaced, f"no worker was recycled; {context}"
    assert set(replaced.values()) & set(served), f"no replacement answered; {context}"
    for old in replaced:
        assert old in run.workers and served[old] >= limit, context
    run.command.proc.send_signal(signal.SIGTERM)
    code, output = run.command.finish()
    assert code == 0 and "Traceback" not in output, f"served {dict(served)}; output:\n{output}"
