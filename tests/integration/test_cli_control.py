"""Controlling a running cluster: status, reload, scale, stop, signals, metrics, permissions."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import tempfile
import time
import urllib.request

import pytest

from tests.conftest import Cluster, Command, Commands, free_port
from tests.integration.test_cli_run import THREADING_HTTP, pids_answering


def start(cluster_env: Cluster, commands: Commands, *options: str) -> tuple[Command, str, int]:
    """A 2-worker ``pycluster run`` of an http.server program; returns it, its socket, port."""
    cluster_env.write("server.py", THREADING_HTTP)
    control = str(cluster_env.tmp / "run" / "control.sock")
    if "--control" in options:
        control = options[options.index("--control") + 1]
    else:
        options = ("--control", control, *options)
    port = free_port()
    command = commands.start("run", "-w", "2", *options, "server.py", str(port))
    command.wait_line("ready: 2 worker(s)")
    return command, control, port


def status(commands: Commands, control: str) -> dict[str, object]:
    """``pycluster status --json``, parsed."""
    code, output = commands.run("status", "--json", "--control", control)
    assert code == 0, output
    answer: dict[str, object] = json.loads(output)
    return answer


def worker_pids(answer: dict[str, object]) -> set[int]:
    """Pids of the workers that listen."""
    workers = answer["workers"]
    assert isinstance(workers, list)
    return {w["pid"] for w in workers if w["state"] == "listening"}


def test_status_reload_scale_stop(cluster_env: Cluster, commands: Commands) -> None:
    command, control, port = start(cluster_env, commands)
    code, table = commands.run("status", "--control", control)
    assert code == 0
    lines = table.splitlines()
    assert "policy rr" in lines[0] and f"127.0.0.1:{port}" in lines[0]
    assert lines[1].split() == [
        "ID", "SLOT", "PID", "STATE", "UPTIME", "CONNECTIONS", "RESTARTS", "MEMORY"
    ]  # fmt: skip
    assert [line.split()[3] for line in lines[2:]] == ["listening", "listening"]
    assert commands.run("status", "--check", "--control", control)[0] == 0
    before = worker_pids(status(commands, control))
    served = pids_answering(port, want=2)
    assert {int(p) for p in served} == before

    code, output = commands.run("reload", "--control", control)
    assert code == 0 and "reloaded 2 worker(s)" in output
    after = worker_pids(status(commands, control))
    assert len(after) == 2 and not after & before

    code, output = commands.run("scale", "3", "--control", control)
    assert code == 0 and "scaled to 3 worker(s)" in output
    answer = status(commands, control)
    assert answer["primary"]["workers"] == 3  # type: ignore[index]
    # `scale` answers once the new worker is alive (online, as cluster.scale() does);
    # it listens a moment later.
    deadline = time.monotonic() + 10
    while len(worker_pids(answer)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
        answer = status(commands, control)
    assert len(worker_pids(answer)) == 3
    code, output = commands.run("scale", "1", "--control", control)
    assert code == 0
    assert len(worker_pids(status(commands, control))) == 1

    code, output = commands.run("stop", "--wait", "--control", control)
    assert code == 0 and "stopped" in output
    code, log = command.finish()
    assert code == 0, log
    assert not os.path.exists(control)  # the primary removed its socket
    code, output = commands.run("status", "--control", control)
    assert code == 1 and "no cluster answers" in output


def test_signals_reload_and_scale(cluster_env: Cluster, commands: Commands) -> None:
    command, control, _port = start(cluster_env, commands)
    before = worker_pids(status(commands, control))
    command.proc.send_signal(signal.SIGHUP)
    command.wait_line("reload done")
    assert not worker_pids(status(commands, control)) & before
    command.proc.send_signal(signal.SIGTTIN)
    command.wait_line("started in slot 2")
    command.proc.send_signal(signal.SIGINT)
    code, output = command.finish()
    assert code == 0, output
    assert "SIGINT: stopping gracefully" in output


def test_status_watch_follows_the_cluster(cluster_env: Cluster, commands: Commands) -> None:
    pytest.importorskip("rich")
    command, control, _port = start(cluster_env, commands)
    watch = commands.start("status", "--watch", "--interval", "0.2", "--control", control)
    watch.wait_line("watching ")
    command.proc.send_signal(signal.SIGTERM)
    assert command.finish()[0] == 0
    code, output = watch.finish()
    assert code == 0, output
    assert "the cluster has stopped" in output
    assert "pycluster run server.py" in output and "STATE" in output  # the last table it drew


def test_metrics(cluster_env: Cluster, commands: Commands) -> None:
    pytest.importorskip("prometheus_client")
    metrics_port = free_port()
    command, _control, port = start(cluster_env, commands, "--metrics", f"127.0.0.1:{metrics_port}")
    pids_answering(port, want=2)
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples["pycluster_workers"] == 2
    assert samples["pycluster_queue_length"] == 0
    conns = [v for k, v in samples.items() if k.startswith("pycluster_worker_connections_total{")]
    assert len(conns) == 2 and sum(conns) >= 2
    rss = [v for k, v in samples.items() if k.startswith("pycluster_worker_resident_memory")]
    assert len(rss) == 2 and all(v > 1_000_000 for v in rss)
    assert any(k.startswith('pycluster_worker_restarts_total{pid="') for k in samples)
    assert any(k.startswith("pycluster_worker_uptime_seconds{") for k in samples)
    command.proc.send_signal(signal.SIGTERM)
    assert command.finish()[0] == 0


# Another user's client: the system's Python (ours may sit where that user can't read).
CLIENT_AS_OTHER_USER = """
import json, socket, sys
sock = socket.socket(socket.AF_UNIX)
try:
    sock.connect(sys.argv[1])
except PermissionError:
    print("connect: permission denied")
    sys.exit(0)
sock.sendall(json.dumps({"cmd": "stop"}).encode() + b"\\n")
print(sock.makefile().readline().strip())
"""


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
@pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="needs /usr/bin/python3")
def test_only_the_owner_may_control(cluster_env: Cluster, commands: Commands) -> None:
    # A directory the other user can reach (pytest's own are private to root).
    top = tempfile.mkdtemp(prefix="pycluster-test-")
    try:
        control = os.path.join(top, "run", "control.sock")
        command, _, _port = start(cluster_env, commands, "--control", control)
        assert stat.S_IMODE(os.stat(control).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(control)).st_mode) == 0o700
        os.chmod(top, 0o755)
        client = ["/usr/bin/python3", "-c", CLIENT_AS_OTHER_USER, control]
        nobody = 65534
        # The file system keeps another user out...
        code, output = commands.run(argv=client, user=nobody)
        assert code == 0 and "connect: permission denied" in output, output
        # ...and so does the primary, should the modes be opened up.
        os.chmod(os.path.dirname(control), 0o755)
        os.chmod(control, 0o666)
        code, output = commands.run(argv=client, user=nobody)
        assert json.loads(output) == {"ok": False, "error": "permission denied: not the owner"}
        assert "refused pid" in command.wait_line("control socket: refused")[0]
        assert command.proc.poll() is None  # not stopped
        command.proc.send_signal(signal.SIGTERM)
        assert command.finish()[0] == 0
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_clients_find_the_cluster_by_themselves(cluster_env: Cluster, commands: Commands) -> None:
    cluster_env.write("server.py", THREADING_HTTP)
    runtime_dir = cluster_env.tmp / "xdg"
    runtime_dir.mkdir(mode=0o700)
    env = {"XDG_RUNTIME_DIR": str(runtime_dir)}
    first = commands.start("run", "-w", "1", "--name", "blue", "server.py", "0", env=env)
    first.wait_line("ready: ")
    assert (runtime_dir / "pycluster" / "blue.sock").exists()
    code, table = commands.run("status", env=env)  # the only one: no option needed
    assert code == 0 and table.startswith("blue: pycluster run server.py")
    second = commands.start("run", "-w", "1", "--name", "green", "server.py", "0", env=env)
    second.wait_line("ready: ")
    code, output = commands.run("status", env=env)
    assert code == 1 and "several clusters run (blue, green)" in output
    code, table = commands.run("status", "--name", "green", env=env)
    assert code == 0 and table.startswith("green: ")
    # A name can't be taken twice while its cluster runs.
    code, output = commands.run("run", "-w", "1", "--name", "blue", "server.py", "0", env=env)
    assert code == 1 and "another cluster already answers" in output
    for command in (first, second):
        command.proc.send_signal(signal.SIGTERM)
        assert command.finish()[0] == 0
