"""A worker re-runs the program however it was started, as the settings say.

Covers the three ways a Python program starts (a script path, ``-m``, a
console-script-like entry point), interpreter options, ``sys.executable``, every
``setup_primary()`` setting that shapes a worker (``exec``, ``args``, ``exec_argv``,
``cwd``, ``silent``, ``stdio``, ``uid``/``gid``), ``fork(env)``, and the
``settings`` mapping with its ``'setup'`` event.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cluster, Live

PRELUDE = """\
import json
import os
import sys

import pycluster as cluster


def emit(**kw):
    # One write per line, so lines from the primary and its workers never interleave.
    sys.stdout.write(json.dumps(kw, default=str) + "\\n")
    sys.stdout.flush()


"""


def program(body: str) -> str:
    """A cluster program: the shared prelude (``emit``) followed by ``body``."""
    return PRELUDE + body


def by_side(events: list[dict[str, object]], side: str) -> list[dict[str, object]]:
    """The events one side (``"primary"`` or ``"worker"``) printed."""
    return [e for e in events if e.get("side") == side]


# The worker describes how it was started; the primary shows the settings it used.
REPORT = program("""
if cluster.is_primary:
    cluster.fork()
    emit(side="primary", settings=dict(cluster.settings), executable=sys.executable)
    cluster.run()
else:
    main = sys.modules["__main__"]
    emit(
        side="worker",
        argv=sys.argv,
        orig_argv=sys.orig_argv,
        executable=sys.executable,
        main_spec=getattr(main.__spec__, "name", None),
    )
""")


def test_script_is_rerun_with_its_arguments(cluster_env: Cluster, live: Live) -> None:
    cluster_env.write("main.py", REPORT)
    # Started with a relative path: the worker still finds it (exec is made absolute).
    result = live.exec([sys.executable, "main.py", "alpha", "--beta=1"]).finish()
    assert result.returncode == 0, result.stderr
    script = str(cluster_env.tmp / "main.py")
    [primary] = by_side(result.events(), "primary")
    settings = primary["settings"]
    assert isinstance(settings, dict)
    assert settings["exec"] == script
    assert settings["args"] == ["alpha", "--beta=1"]
    assert settings["exec_argv"] == []
    assert settings["executable"] == sys.executable
    [worker] = by_side(result.events(), "worker")
    assert worker["argv"] == [script, "alpha", "--beta=1"]
    assert worker["orig_argv"] == [sys.executable, script, "alpha", "--beta=1"]
    assert worker["executable"] == sys.executable


@pytest.mark.parametrize(
    ("module", "main_spec"), [("app", "app.__main__"), ("app.tool", "app.tool")]
)
def test_dash_m_program_is_rerun_as_a_module(
    cluster_env: Cluster, live: Live, module: str, main_spec: str
) -> None:
    (cluster_env.tmp / "app").mkdir()
    cluster_env.write("app/__init__.py", "")
    cluster_env.write("app/__main__.py", REPORT)
    cluster_env.write("app/tool.py", REPORT)
    result = live.exec([sys.executable, "-m", module, "x", "y"]).finish()
    assert result.returncode == 0, result.stderr
    [primary] = by_side(result.events(), "primary")
    assert primary["settings"]["exec"] == f"-m {module}"  # type: ignore[index]
    assert primary["settings"]["args"] == ["x", "y"]  # type: ignore[index]
    [worker] = by_side(result.events(), "worker")
    assert worker["orig_argv"] == [sys.executable, "-m", module, "x", "y"]
    assert worker["argv"][1:] == ["x", "y"]  # type: ignore[index]
    assert worker["main_spec"] == main_spec


CONSOLE_PACKAGE = """\
import json
import sys

import pycluster as cluster


def emit(**kw):
    sys.stdout.write(json.dumps(kw, default=str) + "\\n")
    sys.stdout.flush()


def main():
    if cluster.is_primary:
        cluster.fork()
        emit(side="primary", exec=cluster.settings["exec"], args=cluster.settings["args"])
        cluster.run()
    else:
        emit(side="worker", argv=sys.argv, id=cluster.worker.id)
    return 0
"""

CONSOLE_SCRIPT = """\
#!{python}
import sys

from mytool import main

if __name__ == "__main__":
    sys.exit(main())
"""


def test_console_script_entry_point_is_rerun(cluster_env: Cluster, live: Live) -> None:
    (cluster_env.tmp / "lib" / "mytool").mkdir(parents=True)
    (cluster_env.tmp / "bin").mkdir()
    cluster_env.write("lib/mytool/__init__.py", CONSOLE_PACKAGE)
    script = cluster_env.write("bin/mytool", CONSOLE_SCRIPT.format(python=sys.executable))
    script.chmod(0o755)
    # Executed by its path, as a shell runs an installed console script.
    program = live.exec(
        [str(script), "serve", "--fast"], env={"PYTHONPATH": str(cluster_env.tmp / "lib")}
    )
    result = program.finish()
    assert result.returncode == 0, result.stderr
    events = result.events()
    assert by_side(events, "primary") == [
        {"side": "primary", "exec": str(script), "args": ["serve", "--fast"]}
    ]
    assert by_side(events, "worker") == [
        {"side": "worker", "argv": [str(script), "serve", "--fast"], "id": 1}
    ]


OPTIONS = program("""
if cluster.is_primary:
    cluster.fork()
    emit(side="primary", exec_argv=cluster.settings["exec_argv"])
    cluster.run()
else:
    emit(
        side="worker",
        dev_mode=sys.flags.dev_mode,
        optimize=sys.flags.optimize,
        xoptions=sys._xoptions,
        warnoptions=sys.warnoptions,
        orig_argv=sys.orig_argv,
    )
""")


def test_interpreter_options_reach_the_worker(cluster_env: Cluster) -> None:
    options = ("-X", "dev", "-X", "custom=1", "-u", "-W", "ignore::ImportWarning", "-O")
    result = cluster_env.run(OPTIONS, "arg", python_args=options)
    assert result.returncode == 0, result.stderr
    events = result.events()
    assert by_side(events, "primary") == [{"side": "primary", "exec_argv": list(options)}]
    [worker] = by_side(events, "worker")
    assert worker["dev_mode"] is True
    assert worker["optimize"] == 1
    assert worker["xoptions"] == {"dev": True, "custom": "1"}
    assert "ignore::ImportWarning" in worker["warnoptions"]  # type: ignore[operator]
    script = str(cluster_env.tmp / "main.py")
    assert worker["orig_argv"] == [sys.executable, *options, script, "arg"]
    # Development mode shows ResourceWarnings: neither side may leak anything.
    assert "Warning" not in result.stderr, result.stderr


def test_worker_runs_sys_executable_never_a_path_lookup(cluster_env: Cluster) -> None:
    # Whatever "python" on PATH is, the worker must not be it.
    fake = cluster_env.tmp / "fakebin"
    fake.mkdir()
    for name in ("python", "python3", Path(sys.executable).name):
        impostor = fake / name
        impostor.write_text("#!/bin/sh\necho 'wrong interpreter'\nexit 3\n")
        impostor.chmod(0o755)
    result = cluster_env.run(REPORT, env={"PATH": str(fake)})
    assert result.returncode == 0, result.stderr
    assert "wrong interpreter" not in result.stdout
    [worker] = by_side(result.events(), "worker")
    assert worker["executable"] == sys.executable


WORKER_PROGRAM = program("""
emit(side="worker", argv=sys.argv, is_worker=cluster.is_worker, id=cluster.worker.id,
     cwd=os.getcwd(), xoptions=sys._xoptions, dev_mode=sys.flags.dev_mode)
""")

EXEC_ARGS = program("""
if cluster.is_primary:
    worker_program = os.path.abspath("worker_program.py")
    cluster.setup_primary(exec=worker_program, args=["--use", "https"])
    cluster.fork()
    cluster.run()
else:
    emit(side="worker", error="main.py ran in the worker")
""")


def test_exec_and_args_choose_the_worker_program(cluster_env: Cluster) -> None:
    program_path = cluster_env.write("worker_program.py", WORKER_PROGRAM)
    result = cluster_env.run(EXEC_ARGS, "primary-only-arg")
    assert result.returncode == 0, result.stderr
    [worker] = by_side(result.events(), "worker")
    assert worker["argv"] == [str(program_path), "--use", "https"]
    assert worker["is_worker"] is True
    assert worker["id"] == 1


EXEC_ARGV = program("""
if cluster.is_primary:
    cluster.setup_primary(exec="worker_program.py", exec_argv=["-X", "custom=2"])
    cluster.fork()
    cluster.run()
""")


def test_exec_argv_replaces_the_primarys_interpreter_options(cluster_env: Cluster) -> None:
    cluster_env.write("worker_program.py", WORKER_PROGRAM)
    result = cluster_env.run(EXEC_ARGV, python_args=("-X", "dev"))
    assert result.returncode == 0, result.stderr
    [worker] = by_side(result.events(), "worker")
    assert worker["xoptions"] == {"custom": "2"}
    assert worker["dev_mode"] is False


CWD = program("""
from pathlib import Path

if cluster.is_primary:
    os.mkdir("elsewhere")
    cluster.setup_primary(cwd=Path("elsewhere").absolute())
    emit(side="primary", cwd=cluster.settings["cwd"])
    cluster.fork()
    cluster.run()
else:
    emit(side="worker", cwd=os.getcwd())
""")


def test_cwd_sets_the_workers_directory(cluster_env: Cluster) -> None:
    result = cluster_env.run(CWD)
    assert result.returncode == 0, result.stderr
    elsewhere = str(cluster_env.tmp / "elsewhere")
    # The default exec is absolute, so the program is found from the new directory.
    assert result.events() == [
        {"side": "primary", "cwd": elsewhere},
        {"side": "worker", "cwd": elsewhere},
    ]


SILENT = program("""
if cluster.is_primary:
    cluster.setup_primary(silent=True)
    worker = cluster.fork()

    @worker.on("exit")
    def on_exit(code, sig):
        emit(side="primary", code=code, stdout=worker.process.stdout.read().decode(),
             stderr=worker.process.stderr.read().decode())
        worker.process.stdout.close()
        worker.process.stderr.close()

    cluster.run()
else:
    print("worker says hello")
    print("worker complains", file=sys.stderr)
""")


def test_silent_pipes_worker_output_to_the_primary(cluster_env: Cluster) -> None:
    result = cluster_env.run(SILENT)
    assert result.returncode == 0, result.stderr
    assert result.events() == [
        {
            "side": "primary",
            "code": 0,
            "stdout": "worker says hello\n",
            "stderr": "worker complains\n",
        }
    ]
    assert "worker says hello" not in result.lines
    assert "worker complains" not in result.stderr


STDIO = program("""
if cluster.is_primary:
    out = open("worker-out.txt", "w")
    # stdio overrides silent: stdout goes to the file, not to a pipe.
    cluster.setup_primary(silent=True, stdio=["ignore", out, "pipe"])
    worker = cluster.fork()
    out.close()  # the worker has its own copy of the descriptor

    @worker.on("exit")
    def on_exit(code, sig):
        with open("worker-out.txt") as f:
            written = f.read()
        emit(side="primary", code=code, stdout_pipe=worker.process.stdout is not None,
             stderr=worker.process.stderr.read().decode(), file=written)
        worker.process.stderr.close()

    cluster.run()
else:
    print(f"stdin gave {sys.stdin.read()!r}")
    print("to the pipe", file=sys.stderr)
""")


def test_stdio_sets_each_stream(cluster_env: Cluster) -> None:
    result = cluster_env.run(STDIO)
    assert result.returncode == 0, result.stderr
    assert result.events() == [
        {
            "side": "primary",
            "code": 0,
            "stdout_pipe": False,
            "stderr": "to the pipe\n",
            "file": "stdin gave ''\n",
        }
    ]


FORK_ENV = program("""
if cluster.is_primary:
    cluster.fork({"GREETING": "hello", "NUMBER": 5})
    cluster.fork()
    emit(side="primary", greeting=os.environ.get("GREETING"))
    cluster.run()
else:
    emit(side="worker", id=cluster.worker.id, greeting=os.environ.get("GREETING"),
         number=os.environ.get("NUMBER"), inherited=os.environ.get("INHERITED"))
""")


def test_fork_env_adds_to_the_workers_environment(cluster_env: Cluster) -> None:
    result = cluster_env.run(FORK_ENV, env={"INHERITED": "from the primary"})
    assert result.returncode == 0, result.stderr
    events = result.events()
    assert by_side(events, "primary") == [{"side": "primary", "greeting": None}]
    workers = sorted(by_side(events, "worker"), key=lambda e: int(str(e["id"])))
    assert workers == [
        {
            "side": "worker",
            "id": 1,
            "greeting": "hello",
            "number": "5",
            "inherited": "from the primary",
        },
        {
            "side": "worker",
            "id": 2,
            "greeting": None,
            "number": None,
            "inherited": "from the primary",
        },
    ]


UNIQUE_ID = program("""
import subprocess

if cluster.is_primary:
    cluster.fork()
    cluster.run()
else:
    leftovers = sorted(k for k in os.environ if k in ("PYCLUSTER_UNIQUE_ID", "PYCLUSTER_CHANNEL_FD"))
    # A subprocess of the worker is an ordinary program, not a second worker.
    child = subprocess.run(
        [sys.executable, "-c", "import pycluster; print(pycluster.is_primary)"],
        capture_output=True, text=True, check=True,
    )
    emit(side="worker", leftovers=leftovers, child_is_primary=child.stdout.strip())
""")


def test_worker_environment_loses_the_cluster_variables(cluster_env: Cluster) -> None:
    result = cluster_env.run(UNIQUE_ID)
    assert result.returncode == 0, result.stderr
    assert result.events() == [{"side": "worker", "leftovers": [], "child_is_primary": "True"}]


SETTINGS = program("""
emit(before=dict(cluster.settings))
cluster.setup_primary()
emit(after=dict(cluster.settings))
try:
    cluster.settings["exec"] = "other.py"
except TypeError:
    emit(read_only=True)
""")


def test_settings_hold_the_defaults_after_setup(cluster_env: Cluster) -> None:
    result = cluster_env.run(SETTINGS, "one", "two", python_args=("-W", "default"))
    assert result.returncode == 0, result.stderr
    before, after, read_only = result.events()
    assert before == {"before": {}}
    assert read_only == {"read_only": True}
    settings = after["after"]
    assert isinstance(settings, dict)
    assert {k: settings[k] for k in NODE_SETTINGS} == {
        "exec": str(cluster_env.tmp / "main.py"),
        "args": ["one", "two"],
        "exec_argv": ["-W", "default"],
        "executable": sys.executable,
        "cwd": None,
        "serialization": "json",
        "silent": False,
        "stdio": None,
        "uid": None,
        "gid": None,
    }


NODE_SETTINGS = (
    "exec",
    "args",
    "exec_argv",
    "executable",
    "cwd",
    "serialization",
    "silent",
    "stdio",
    "uid",
    "gid",
)

SETUP_EVENT = program("""
delivered = []


@cluster.on("setup")
def on_setup(settings):
    delivered.append(settings["args"])
    emit(event="setup", args=settings["args"], live_args=cluster.settings["args"])


cluster.setup_primary(args=["a"])
emit(event="first call returned", delivered=len(delivered))
cluster.setup_primary(args=["b"])
emit(event="second call returned", delivered=len(delivered))
cluster.run()
""")


def test_setup_event_comes_after_the_call_with_a_snapshot(cluster_env: Cluster) -> None:
    result = cluster_env.run(SETUP_EVENT)
    assert result.returncode == 0, result.stderr
    assert result.events() == [
        {"event": "first call returned", "delivered": 0},
        {"event": "second call returned", "delivered": 0},
        # Each event carries the settings of its own call, not the current ones.
        {"event": "setup", "args": ["a"], "live_args": ["b"]},
        {"event": "setup", "args": ["b"], "live_args": ["b"]},
    ]


IMPLICIT_SETUP = program("""
if cluster.is_primary:
    cluster.on("setup", lambda settings: emit(event="setup", exec=settings["exec"]))
    cluster.on("fork", lambda worker: emit(event="fork"))
    cluster.fork()
    cluster.run()
""")


def test_first_fork_sets_up_implicitly(cluster_env: Cluster) -> None:
    result = cluster_env.run(IMPLICIT_SETUP)
    assert result.returncode == 0, result.stderr
    assert result.events() == [
        {"event": "setup", "exec": str(cluster_env.tmp / "main.py")},
        {"event": "fork"},
    ]


MERGE = program("""
cluster.setup_primary(exec="worker_program.py", args=["--use", "https"], silent=True)
cluster.setup_primary(args=["--use", "http"])
emit(**{k: cluster.settings[k] for k in ("exec", "args", "silent", "serialization")})
""")


def test_later_setup_calls_merge_with_current_values(cluster_env: Cluster) -> None:
    result = cluster_env.run(MERGE)
    assert result.returncode == 0, result.stderr
    assert result.events() == [
        {
            "exec": "worker_program.py",
            "args": ["--use", "http"],
            "silent": True,
            "serialization": "json",
        }
    ]


LATER_FORKS = program("""
if cluster.is_primary:
    cluster.setup_primary(args=["first"])
    cluster.fork()
    cluster.setup_primary(args=["second"], silent=True)
    late = cluster.fork()

    @late.on("exit")
    def on_exit(code, sig):
        emit(side="primary", silent_output=late.process.stdout.read().decode())
        late.process.stdout.close()
        late.process.stderr.close()

    cluster.run()
else:
    emit(side="worker", id=cluster.worker.id, args=sys.argv[1:])
""")


def test_settings_only_affect_later_forks(cluster_env: Cluster) -> None:
    result = cluster_env.run(LATER_FORKS)
    assert result.returncode == 0, result.stderr
    events = result.events()
    # The first worker prints to the shared stdout; the later one is silent.
    assert by_side(events, "worker") == [{"side": "worker", "id": 1, "args": ["first"]}]
    [primary] = by_side(events, "primary")
    silent = json.loads(str(primary["silent_output"]))
    assert silent == {"side": "worker", "id": 2, "args": ["second"]}


# -- user and group: only root may switch -----------------------------------------------

NOBODY = 65534

GID_ONLY = program("""
if cluster.is_primary:
    cluster.setup_primary(gid=65534)
    cluster.fork()
    cluster.run()
else:
    emit(side="worker", uid=os.getuid(), gid=os.getgid(), egid=os.getegid())
""")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can change a worker's group")
def test_gid_sets_the_workers_group(cluster_env: Cluster) -> None:
    result = cluster_env.run(GID_ONLY)
    assert result.returncode == 0, result.stderr
    assert result.events() == [{"side": "worker", "uid": 0, "gid": NOBODY, "egid": NOBODY}]


UID_GID = program("""
if cluster.is_primary:
    here = os.path.dirname(os.path.abspath(__file__))
    cluster.setup_primary(uid=65534, gid=65534, cwd=here, executable=sys.argv[1], args=[])
    worker = cluster.fork({"PYTHONPATH": sys.argv[2]})
    worker.on("message", lambda msg, handle: emit(side="worker", **msg))
    worker.on("exit", lambda code, sig: emit(side="primary", code=code, signal=sig))
    cluster.run()
else:
    cluster.worker.send({"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()})
""")


def _usable_by_others(path: str) -> bool:
    """Whether a user with no special rights can execute ``path`` (every parent searchable)."""
    real = Path(os.path.realpath(path))
    if not real.stat().st_mode & stat.S_IXOTH:
        return False
    return all(parent.stat().st_mode & stat.S_IXOTH for parent in real.parents)


def _interpreter_for_nobody() -> str | None:
    """This Python, or a system one of the same version, if an unprivileged user may run it."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if os.path.exists(candidate) and _usable_by_others(candidate):
            return candidate
    return None


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory every user can read (pytest's own tmp directories are private)."""
    path = Path(tempfile.mkdtemp(prefix="pycluster-uid-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can change a worker's user")
def test_uid_and_gid_set_the_workers_identity(public_dir: Path, live: Live) -> None:
    interpreter = _interpreter_for_nobody()
    if interpreter is None:
        pytest.skip("no Python interpreter that an unprivileged user may execute")
    import pyee

    import pycluster

    # The worker, running as nobody, must be able to import pycluster and pyee.
    import_path = os.pathsep.join(
        str(Path(module.__file__).resolve().parents[1])  # type: ignore[arg-type]
        for module in (pycluster, pyee)
    )
    main = public_dir / "main.py"
    main.write_text(UID_GID)
    main.chmod(0o644)
    result = live.exec([sys.executable, str(main), interpreter, import_path]).finish()
    assert result.returncode == 0, result.stderr
    events = result.events()
    assert by_side(events, "worker") == [
        {"side": "worker", "uid": NOBODY, "gid": NOBODY, "groups": []}
    ]
    assert by_side(events, "primary") == [{"side": "primary", "code": 0, "signal": None}]
