"""The command line's parsing, without processes: binds, settings options, app detection."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from pycluster import _settings
from pycluster._cli import binds, status
from pycluster._cli.main import build_parser, settings_from, split_module_args
from pycluster._cli.serve import detect_interface


@pytest.mark.parametrize(
    ("text", "bind"),
    [
        ("127.0.0.1:8000", {"kind": "tcp", "host": "127.0.0.1", "port": 8000}),
        (":8000", {"kind": "tcp", "host": "0.0.0.0", "port": 8000}),
        ("8000", {"kind": "tcp", "host": "127.0.0.1", "port": 8000}),
        ("[::1]:0", {"kind": "tcp", "host": "::1", "port": 0}),
        ("unix:/run/app.sock", {"kind": "unix", "path": "/run/app.sock"}),
        ("fd://3", {"kind": "fd", "fd": 3}),
    ],
)
def test_bind_forms(text: str, bind: dict[str, Any]) -> None:
    assert binds.parse(text) == bind


@pytest.mark.parametrize("text", ["localhost", "host:port", "1.2.3.4:70000", "unix:", "fd://x"])
def test_bad_binds_name_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"HOST:PORT|unix:|fd://"):
        binds.parse(text)


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def test_every_cli_setting_is_an_option_and_reaches_setup_primary() -> None:
    ns = parse(
        *("serve", "--restart", "always", "--restart-delay", "0.5", "--max-requests", "100"),
        *("--timeout", "none", "--max-memory", "1G", "--uid", "0", "--gid", "root", "app:app"),
    )
    assert settings_from(ns) == {
        "restart": "always",
        "restart_delay": 0.5,
        "max_requests": 100,
        "max_memory": 1 << 30,
        "start_timeout": 60.0,
        "uid": 0,
        "gid": 0,
    }
    defaults = parse("run", "x.py")
    assert settings_from(defaults) == {"restart": "on-failure", "start_timeout": 60.0}
    for option in _settings.OPTIONS:
        assert hasattr(defaults, f"setting_{option.name}") == option.cli


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("serve", "--restart", "sometimes", "a:b"), "must be one of 'never'"),
        (("serve", "--restart-backoff", "0.5", "a:b"), "must be at least 1.0"),
        (("serve", "--max-memory", "lots", "a:b"), "is not a size"),
        (("serve", "--uid", "no-such-user-here", "a:b"), "no user named"),
        (("serve", "-b", "nowhere", "a:b"), "is not an address"),
        (("serve", "-w", "0", "a:b"), "positive integer"),
    ],
)
def test_bad_options_are_usage_errors(
    argv: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(*argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


async def asgi_function(scope: Any, receive: Any, send: Any) -> None:
    """A bare ASGI 3 function."""


class AsgiObject:
    """An ASGI application object (Starlette, FastAPI, Django's ASGIHandler)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None: ...


class Asgi2:
    """An ASGI 2 application: instantiated per scope."""

    def __init__(self, scope: Any) -> None: ...


def wsgi_function(environ: Any, start_response: Any) -> list[bytes]:
    return []


class WsgiObject:
    """A WSGI application object (Flask, Django's WSGIHandler)."""

    def __call__(self, environ: Any, start_response: Any) -> list[bytes]:
        return []


def test_interface_detection() -> None:
    assert detect_interface(asgi_function) == "asgi"
    assert detect_interface(AsgiObject()) == "asgi"
    assert detect_interface(Asgi2) == "asgi"
    assert detect_interface(wsgi_function) == "wsgi"
    assert detect_interface(WsgiObject()) == "wsgi"
    flask = pytest.importorskip("flask")
    assert detect_interface(flask.Flask("x")) == "wsgi"
    starlette = pytest.importorskip("starlette.applications")
    assert detect_interface(starlette.Starlette()) == "asgi"


def test_table_units() -> None:
    assert [status.duration(s) for s in (5, 187, 7500, 270000)] == ["5s", "3m07s", "2h05m", "3d03h"]
    assert [status.size(n) for n in (512, 4096, 41 * 2**20, 3 * 2**30)] == [
        "512B",
        "4K",
        "41.0M",
        "3.0G",
    ]


@pytest.mark.parametrize(
    ("argv", "ours", "module_args"),
    [
        (["run", "-w", "2", "-m", "http.server", "--bind", "::1", "8000"],
         ["run", "-w", "2", "-m", "http.server"], ["--bind", "::1", "8000"]),
        (["run", "-mhttp.server", "-w", "3"], ["run", "-m", "http.server"], ["-w", "3"]),
        (["run", "--work", "2", "-m", "mod", "-x"], ["run", "--work", "2", "-m", "mod"], ["-x"]),
        (["run", "--no-control", "-m", "mod"], ["run", "--no-control", "-m", "mod"], []),
        (["run", "app.py", "-m", "mod"], ["run", "app.py", "-m", "mod"], None),
    ],
)  # fmt: skip
def test_everything_after_dash_m_module_is_the_modules(
    argv: list[str], ours: list[str], module_args: list[str] | None
) -> None:
    run = build_parser().get_default("run_parser")
    assert split_module_args(run, argv) == (ours, module_args)
