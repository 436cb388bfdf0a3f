"""Settings: validation naming the key, defaults, the default program, the policy variable.

``validate`` and ``_program`` are tested in-process; what a user sees through
``setup_primary()`` and ``PYCLUSTER_SCHED_POLICY`` is tested in real primary
programs (no worker is forked: the settings are fixed before any fork).
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pycluster import _settings
from tests.conftest import Cluster

# -- validate() -------------------------------------------------------------------------------


def test_unknown_key_is_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="'workers'"):
        _settings.validate({"workers": 4})
    with pytest.raises(TypeError, match="'execArgv'"):
        _settings.validate({"exec": "x.py", "execArgv": []})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("exec", 5),
        ("exec", None),
        ("args", "--flag"),
        ("args", ["ok", 1]),
        ("args", None),
        ("exec_argv", b"-u"),
        ("exec_argv", [Path("x")]),
        ("executable", Path(sys.executable)),
        ("cwd", 5),
        ("serialization", 1),
        ("silent", 1),
        ("silent", "yes"),
        ("stdio", "pipe"),
        ("stdio", ["pipe", "pipe"]),
        ("stdio", ["inherit", 1.5, "inherit"]),
        ("stdio", ["inherit", True, "inherit"]),
        ("uid", "root"),
        ("uid", True),
        ("gid", 1.0),
        ("restart", True),
        ("restart_delay", "1"),
        ("restart_backoff", None),
        ("restart_delay_max", [30]),
        ("stable_after", True),
        ("max_restarts", 1.5),
        ("restart_window", "60"),
        ("timeout", "5"),
        ("timeout", True),
        ("max_requests", 10.0),
        ("max_requests_jitter", None),
        ("max_memory", "1G"),
        ("shutdown_timeout", None),
        ("handoff_window", 2.5),
        ("handoff_batch_scheduling", "yes"),
    ],
)
def test_wrong_type_is_type_error_naming_the_key(key: str, value: Any) -> None:
    with pytest.raises(TypeError, match=f"'{key}'"):
        _settings.validate({key: value})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("serialization", "pickle"),
        ("serialization", "JSON"),
        ("stdio", ["inherit", "pipe", "devnull"]),
        ("uid", -1),
        ("gid", -5),
        ("restart", "sometimes"),
        ("restart_delay", -0.1),
        ("restart_backoff", 0.5),
        ("restart_delay_max", -1),
        ("stable_after", -1),
        ("max_restarts", -1),
        ("restart_window", -60),
        ("timeout", 0),
        ("max_requests", 0),
        ("max_requests_jitter", -1),
        ("max_memory", 0),
        ("shutdown_timeout", -1.0),
        ("handoff_window", 0),
    ],
)
def test_wrong_value_is_value_error_naming_the_key(key: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"'{key}'"):
        _settings.validate({key: value})


def test_valid_values_are_normalized(tmp_path: Path) -> None:
    log = io.StringIO()  # anything with fileno() is accepted; not called here
    out = _settings.validate(
        {
            "args": ("a", "b"),
            "cwd": tmp_path,
            "stdio": ("pipe", 1, log),
            "serialization": "advanced",
            "timeout": 2,
            "max_memory": 1 << 30,
            "uid": 0,
            "restart": "on-failure",
        }
    )
    assert out["args"] == ["a", "b"]
    assert out["cwd"] == str(tmp_path)
    assert out["stdio"] == ("pipe", 1, log)
    assert out["serialization"] == "advanced"
    assert out["timeout"] == 2


def test_none_clears_optional_settings() -> None:
    keys = ("cwd", "stdio", "uid", "gid", "timeout", "max_requests", "max_memory")
    assert _settings.validate(dict.fromkeys(keys)) == dict.fromkeys(keys)


def test_defaults() -> None:
    d = _settings.defaults()
    assert d["args"] == sys.argv[1:]
    assert d["executable"] == sys.executable
    assert {k: d[k] for k in d if k not in ("exec", "args", "exec_argv", "executable")} == {
        "cwd": None,
        "serialization": "json",
        "silent": False,
        "stdio": None,
        "uid": None,
        "gid": None,
        "restart": "never",
        "restart_delay": 0.1,
        "restart_backoff": 2.0,
        "restart_delay_max": 30.0,
        "stable_after": 10.0,
        "max_restarts": 10,
        "restart_window": 60.0,
        "timeout": None,
        "max_requests": None,
        "max_requests_jitter": 0,
        "max_memory": None,
        "start_timeout": None,
        "max_message_size": 64 << 20,
        "shutdown_timeout": 30.0,
        "handoff_window": 8,
        "handoff_batch_scheduling": True,
    }
    # Every default passes its own validation.
    assert _settings.validate(d) == d


# -- the default program ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("orig_argv", "argv", "exec_", "exec_argv"),
    [
        (["py", "app.py"], ["app.py"], "ABS:app.py", []),
        (["py", "app.py", "-m", "x"], ["app.py", "-m", "x"], "ABS:app.py", []),
        (
            ["py", "-u", "-X", "dev", "srv/app.py", "a"],
            ["srv/app.py", "a"],
            "ABS:srv/app.py",
            ["-u", "-X", "dev"],
        ),
        (["py", "-Werror", "app.py"], ["app.py"], "ABS:app.py", ["-Werror"]),
        (["py", "-m", "pkg.mod", "a", "b"], ["/x/pkg/mod.py", "a", "b"], "-m pkg.mod", []),
        (["py", "-O", "-mpkg", "-c", "x"], ["/x/pkg/__main__.py", "-c", "x"], "-m pkg", ["-O"]),
        (["py", "-X", "dev", "-m", "pkg"], ["/x/pkg/__main__.py"], "-m pkg", ["-X", "dev"]),
        (["py", "-c", "print(1)"], ["-c"], "-c print(1)", []),
        (["py", "-B", "-c", "code", "-m", "y"], ["-c", "-m", "y"], "-c code", ["-B"]),
    ],
)
def test_program_forms(
    orig_argv: list[str],
    argv: list[str],
    exec_: str,
    exec_argv: list[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "orig_argv", orig_argv)
    monkeypatch.setattr(sys, "argv", argv)
    if exec_.startswith("ABS:"):
        exec_ = str(tmp_path / exec_[4:])
    assert _settings.default_exec() == exec_
    assert _settings.default_exec_argv() == exec_argv
    assert _settings.defaults()["args"] == argv[1:]
    # What fork() will run is the program itself again.
    words = _settings.split_exec(exec_)
    assert words == (exec_.split(" ", 1) if exec_.startswith("-") else [exec_])


@pytest.mark.parametrize(
    ("orig_argv", "argv", "exec_", "exec_argv"),
    [
        (["py", "-um", "pkg"], ["/x/pkg/__main__.py"], "-m pkg", ["-u"]),
        (["py", "-cprint(1)"], ["-c"], "-c print(1)", []),
    ],
    ids=["clustered-flags-m", "attached-c"],
)
def test_program_compact_option_forms(
    orig_argv: list[str],
    argv: list[str],
    exec_: str,
    exec_argv: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``python -um pkg`` and ``python -cCODE`` are valid command lines too."""
    monkeypatch.setattr(sys, "orig_argv", orig_argv)
    monkeypatch.setattr(sys, "argv", argv)
    assert (_settings.default_exec(), _settings.default_exec_argv()) == (exec_, exec_argv)


# -- through setup_primary() in a real primary -----------------------------------------------

SETUP = """
import json, sys
import pycluster as cluster

def emit(**kw):
    print(json.dumps(kw, default=str), flush=True)

emit(event="before", settings=dict(cluster.settings))
for bad in ({"bogus": 1}, {"silent": "yes"}, {"serialization": "xml"}, {"timeout": -1}):
    try:
        cluster.setup_primary(**bad)
    except (TypeError, ValueError) as exc:
        emit(event="refused", kind=type(exc).__name__, message=str(exc))
emit(event="after_refusals", settings=dict(cluster.settings))

cluster.on("setup", lambda s: emit(event="setup", settings=dict(s)))
cluster.setup_primary(silent=True)
cluster.setup_primary(args=["x"], cwd=None)
emit(event="settings", settings=dict(cluster.settings))
try:
    cluster.settings["silent"] = False
except TypeError:
    emit(event="read_only")
cluster.run()
"""


def test_setup_primary_in_a_real_primary(cluster_env: Cluster) -> None:
    result = cluster_env.run(SETUP, "one", "two", python_args=("-u", "-X", "utf8"))
    assert result.returncode == 0, result.stderr
    events = result.events()
    assert events[0] == {"event": "before", "settings": {}}
    refused = [(e["kind"], e["message"]) for e in events if e["event"] == "refused"]
    expected = [
        ("TypeError", "bogus"),
        ("TypeError", "silent"),
        ("ValueError", "serialization"),
        ("ValueError", "timeout"),
    ]
    assert len(refused) == len(expected)
    for (kind, message), (want_kind, key) in zip(refused, expected, strict=True):
        assert kind == want_kind and f"'{key}'" in str(message)
    # A refused call changes nothing.
    assert events[len(refused) + 1] == {"event": "after_refusals", "settings": {}}
    settings = next(e for e in events if e["event"] == "settings")["settings"]
    assert isinstance(settings, dict)
    assert settings["exec"] == str(cluster_env.tmp / "main.py")
    assert settings["exec_argv"] == ["-u", "-X", "utf8"]
    assert settings["executable"] == sys.executable
    assert settings["silent"] is True  # merged: the second call kept the first's value
    assert settings["args"] == ["x"]
    # 'setup' comes after the calls, once per call, with that call's snapshot.
    setups = [e["settings"] for e in events if e["event"] == "setup"]
    assert len(setups) == 2
    assert setups[0]["silent"] is True and setups[0]["args"] == ["one", "two"]  # type: ignore[index]
    assert setups[1]["args"] == ["x"]  # type: ignore[index]
    kinds = [e["event"] for e in events]
    assert kinds.index("setup") > kinds.index("read_only")  # on the loop, never inside the call
    assert {"event": "read_only"} in events


@pytest.mark.parametrize(
    "command", [["-B", "-m", "mypkg.app"], ["-Bm", "mypkg.app"], ["-Bmmypkg.app"]]
)
def test_default_exec_of_a_module_primary(cluster_env: Cluster, command: list[str]) -> None:
    """Started with ``python -m`` (in any spelling), workers run ``-m module`` too."""
    pkg = cluster_env.tmp / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    cluster_env.write(
        "mypkg/app.py",
        """
        import json, sys
        import pycluster as cluster

        def emit(**kw):
            # One write per line: workers share this stdout.
            sys.stdout.write(json.dumps(kw) + "\\n")
            sys.stdout.flush()

        if cluster.is_primary:
            cluster.setup_primary()
            s = cluster.settings
            emit(role="primary", exec=s["exec"], args=s["args"], exec_argv=s["exec_argv"])
            cluster.fork()
            cluster.run()
        else:
            emit(role="worker", module=__spec__.name, args=sys.argv[1:],
                 no_bytecode=sys.flags.dont_write_bytecode)
        """,
    )
    proc = subprocess.Popen(
        [sys.executable, *command, "--port", "1"],
        cwd=cluster_env.tmp,
        env=cluster_env.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    cluster_env.procs.append(proc)  # reaped with the rest if anything hangs
    result = cluster_env.finish(proc, timeout=20)
    assert result.returncode == 0, result.stderr
    assert sorted(result.events(), key=lambda e: str(e["role"])) == [
        {"role": "primary", "exec": "-m mypkg.app", "args": ["--port", "1"], "exec_argv": ["-B"]},
        {"role": "worker", "module": "mypkg.app", "args": ["--port", "1"], "no_bytecode": 1},
    ]


# -- PYCLUSTER_SCHED_POLICY ------------------------------------------------------------------

POLICY = """
import json, sys
import pycluster as cluster

def emit(**kw):
    # One write per line: workers share this stdout.
    sys.stdout.write(json.dumps(kw) + "\\n")
    sys.stdout.flush()

emit(event="import", policy=cluster.scheduling_policy)
if "assign" in sys.argv:
    cluster.scheduling_policy = cluster.SCHED_RR
try:
    cluster.setup_primary()
except ValueError as exc:
    emit(event="error", message=str(exc))
    sys.exit(3)
emit(event="frozen", policy=cluster.scheduling_policy)
cluster.scheduling_policy = cluster.SCHED_NONE if cluster.scheduling_policy == cluster.SCHED_RR else cluster.SCHED_RR
emit(event="late", policy=cluster.scheduling_policy)
"""


def run_policy(cluster_env: Cluster, value: str | None, *args: str) -> list[dict[str, object]]:
    env = {} if value is None else {"PYCLUSTER_SCHED_POLICY": value}
    result = cluster_env.run(POLICY, *args, env=env, timeout=20)
    assert result.returncode in (0, 3), result.stderr
    return result.events()


@pytest.mark.parametrize("value", ["fifo", "RoundRobin", "2"])
def test_invalid_policy_variable_raises_at_the_freeze(cluster_env: Cluster, value: str) -> None:
    events = run_policy(cluster_env, value)
    assert events[0]["event"] == "import"  # importing is fine
    assert events[1]["event"] == "error"
    message = str(events[1]["message"])
    assert "PYCLUSTER_SCHED_POLICY" in message
    assert "'rr'" in message and "'none'" in message
    assert repr(value) in message


def test_policy_variable_and_assignments(cluster_env: Cluster) -> None:
    # Default: round-robin; a later assignment has no effect.
    assert run_policy(cluster_env, None) == [
        {"event": "import", "policy": 2},
        {"event": "frozen", "policy": 2},
        {"event": "late", "policy": 2},
    ]
    # The variable sets the policy from import on.
    assert run_policy(cluster_env, "none") == [
        {"event": "import", "policy": 1},
        {"event": "frozen", "policy": 1},
        {"event": "late", "policy": 1},
    ]
    # An assignment before the freeze wins over the variable.
    assert run_policy(cluster_env, "none", "assign") == [
        {"event": "import", "policy": 1},
        {"event": "frozen", "policy": 2},
        {"event": "late", "policy": 2},
    ]


def test_max_message_size_takes_a_size_on_the_command_line() -> None:
    from pycluster._settings import BY_NAME

    assert BY_NAME["max_message_size"].from_text("1M") == 1 << 20
    assert BY_NAME["max_message_size"].cli
    with pytest.raises(ValueError, match="max_message_size"):
        BY_NAME["max_message_size"].from_text("0")
