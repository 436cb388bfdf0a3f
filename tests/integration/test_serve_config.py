"""``pycluster serve`` configuration: -c FILE, $PYCLUSTER_*, --env, --env-file, --pid, logs,
--uds, --preload, and the messages of a start that cannot work."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
from pathlib import Path

import pytest

from pycluster._cli import CliError
from pycluster._cli.main import build_parser, parse
from tests.conftest import Cluster, Commands, free_port, get_over_unix_socket
from tests.integration.test_cli_serve import request, serve, stop

pytest.importorskip("uvicorn")

ENV_APP = """
import logging, os

log = logging.getLogger("envapp")

def app(environ, start_response):
    log.warning("handling %s", environ["PATH_INFO"])
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{os.environ.get('GREETING')} {os.environ.get('FROM_FILE')}".encode()]
"""


def parsed(argv: list[str], monkeypatch: pytest.MonkeyPatch, **env: str) -> argparse.Namespace:
    for key in [k for k in os.environ if k.startswith("PYCLUSTER_")] + ["WEB_CONCURRENCY"]:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return parse(build_parser(), argv)


def test_command_line_beats_environment_beats_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "serve.toml"
    config.write_text(
        'app = "fromfile:app"\nworkers = 3\nbind = ["127.0.0.1:9001", "unix:/tmp/x.sock"]\n'
        'limit-request-body = "1M"\nproxy-headers = false\nreload_dir = ["src"]\n'
    )
    ns = parsed(["serve", "-c", str(config)], monkeypatch)
    assert (ns.app, ns.workers, ns.limit_request_body, ns.proxy_headers) == (
        "fromfile:app",
        3,
        1 << 20,
        False,
    )
    assert [b.get("port", b.get("path")) for b in ns.bind] == [9001, "/tmp/x.sock"]
    assert ns.reload_dir == ["src"]
    ns = parsed(
        ["serve", "-c", str(config)],
        monkeypatch,
        PYCLUSTER_WORKERS="2",
        PYCLUSTER_BIND="127.0.0.1:9002",
        PYCLUSTER_PROXY_HEADERS="yes",
    )
    assert (ns.workers, ns.proxy_headers) == (2, True)
    assert [b["port"] for b in ns.bind] == [9002]
    ns = parsed(
        ["serve", "-c", str(config), "-w", "1", "-b", "127.0.0.1:9003", "cli:app"],
        monkeypatch,
        PYCLUSTER_WORKERS="2",
        PYCLUSTER_BIND="127.0.0.1:9002",
    )
    assert (ns.app, ns.workers, [b["port"] for b in ns.bind]) == ("cli:app", 1, [9003])
    # The conventional variables count as environment too.
    ns = parsed(["serve", "-c", str(config)], monkeypatch, WEB_CONCURRENCY="5")
    assert ns.workers == 5


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("wokers = 2\n", "unknown option 'wokers'"),
        ("workers = 'many'\n", "workers: must be a positive integer"),
        ("policy = 'fast'\n", "policy: must be one of rr, none, reuseport"),
        ("workers = [\n", "not valid TOML"),
    ],
)
def test_a_bad_config_file_is_a_usage_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    content: str,
    message: str,
) -> None:
    config = tmp_path / "serve.toml"
    config.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        parsed(["serve", "-c", str(config), "app:app"], monkeypatch)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "usage: pycluster serve" in err, err


def test_unknown_options_are_named_as_such(commands: Commands) -> None:
    code, output = commands.run("serve", "--certfle", "cert.pem", "app:app")
    assert code == 2, output
    assert "usage: pycluster serve" in output
    assert "unknown option: --certfle (did you mean --certfile?)" in output
    assert "MODULE:APP" not in output.splitlines()[-1]
    code, output = commands.run("status", "--nosuch")
    assert code == 2 and "unknown option: --nosuch" in output, output


def test_help_groups_the_options_as_gunicorn_does(commands: Commands) -> None:
    code, output = commands.run("serve", "--help")
    assert code == 0
    titles = [line.rstrip(":") for line in output.splitlines() if line and line.endswith(":")]
    for title in ("server socket", "worker processes", "TLS (HTTPS)", "security", "logging"):
        assert title in titles, titles
    assert "development" in titles and "config file" in titles
    for option in ("--ssl-certfile", "--reload-dir", "--access-logfile", "--forwarded-allow-ips"):
        assert option in output


def test_config_file_env_pid_and_logs(cluster_env: Cluster, commands: Commands) -> None:
    cluster_env.write("envapp.py", ENV_APP)
    port = free_port()
    tmp = cluster_env.tmp
    (tmp / "app.env").write_text("# for the app\nFROM_FILE=file-value\nGREETING=not-this\n")
    (tmp / "logging.json").write_text(
        json.dumps(
            {
                "version": 1,
                "formatters": {"who": {"format": "%(who)s|%(name)s|%(message)s"}},
                "handlers": {
                    "file": {
                        "class": "logging.FileHandler",
                        "filename": str(tmp / "app.log"),
                        "formatter": "who",
                    }
                },
                "loggers": {"envapp": {"handlers": ["file"], "level": "INFO"}},
            }
        )
    )
    (tmp / "serve.toml").write_text(
        f'app = "envapp:app"\nworkers = 2\nbind = ["127.0.0.1:{port}"]\n'
        f'access-logfile = "{tmp / "access.log"}"\npid = "{tmp / "app.pid"}"\n'
        f'env-file = "app.env"\nenv = ["GREETING=hello"]\nlog-config = "logging.json"\n'
    )
    control = str(tmp / "run" / "control.sock")
    command = commands.start("serve", "--control", control, "-c", "serve.toml")
    command.wait_line("ready: ")
    assert (tmp / "app.pid").read_text().strip() == str(command.proc.pid)
    assert request(port, path="/one") == (200, "hello file-value")
    assert request(port, path="/two") == (200, "hello file-value")
    command.proc.send_signal(signal.SIGTERM)
    code, output = command.finish()
    assert code == 0 and "Traceback" not in output, output
    assert not (tmp / "app.pid").exists()
    access = (tmp / "access.log").read_text().splitlines()
    assert len(access) == 2 and '"GET /one HTTP/1.1" 200' in access[0], access
    assert "GET /one" not in output  # access lines go to the file only
    # The application's own logger logs to its file, once per request, and never also
    # through pycluster's handler; %(who)s is there for the user's formats.
    app_lines = (tmp / "app.log").read_text().splitlines()
    assert sorted(app_lines)[0].startswith("worker ") and len(app_lines) == 2, app_lines
    assert "handling /one" not in output


def test_access_log_to_standard_output(cluster_env: Cluster, commands: Commands) -> None:
    cluster_env.write("envapp.py", ENV_APP)
    port = free_port()
    command = serve(
        commands,
        cluster_env,
        "envapp:app",
        *("-w", "1", "--host", "127.0.0.1", "--port", str(port), "--access-logfile", "-"),
    )
    request(port, path="/logged")
    command.wait_line('"GET /logged HTTP/1.1" 200')
    stop(command)


DJANGO_SETTINGS = """
SECRET_KEY = "test-only"
DEBUG = True
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "djapp"
INSTALLED_APPS = []
MIDDLEWARE = []
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"djapp": {"handlers": ["console"], "level": "INFO"}},
}
"""

DJANGO_APP = """
import logging, os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djsettings")
from django.core.wsgi import get_wsgi_application
from django.http import HttpResponse
from django.urls import path

log = logging.getLogger("djapp")

def index(request):
    log.info("django view ran for %s", request.path)
    return HttpResponse("django ok")

def bridged(request):
    # A sync view calling async code (channels' group_send does): asgiref refuses
    # to run where an event loop is running in the thread.
    from asgiref.sync import async_to_sync
    async def answer():
        return "bridged ok"
    return HttpResponse(async_to_sync(answer)())

urlpatterns = [path("", index), path("bridged", bridged)]
application = get_wsgi_application()
"""


def test_django_views_log_once_and_may_call_async_code(
    cluster_env: Cluster, commands: Commands
) -> None:
    pytest.importorskip("django")
    cluster_env.write("djsettings.py", DJANGO_SETTINGS)
    cluster_env.write("djapp.py", DJANGO_APP)
    port = free_port()
    command = serve(
        commands, cluster_env, "djapp:application", "-w", "1", "-b", f"127.0.0.1:{port}"
    )
    assert request(port) == (200, "django ok")
    command.wait_line("django view ran for /")
    # Inline on the worker's loop (--threads auto starts so), as in a thread.
    assert request(port, path="/bridged") == (200, "bridged ok")
    stop(command)
    assert command.output.count("django view ran for /") == 1, command.output


def test_a_port_in_use_is_one_line_before_any_fork(commands: Commands) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output = commands.run(
            "serve", "--no-control", "-w", "3", "-b", f"127.0.0.1:{port}", "json:loads"
        )
    assert code == 2, output
    assert f"cannot listen on 127.0.0.1:{port}: the address is already in use" in output
    assert "Traceback" not in output and "started in slot" not in output, output
    assert len(output.strip().splitlines()) == 1, output


BROKEN_APP = """
import os
value = 1 / 0
"""


def test_an_import_error_is_reported_once_for_all_workers(
    cluster_env: Cluster, commands: Commands
) -> None:
    cluster_env.write("broken.py", BROKEN_APP)
    code, output = commands.run("serve", "--no-control", "-w", "3", "broken:app")
    assert code == 4, output
    errors = [line for line in output.splitlines() if "cannot load the application" in line]
    assert len(errors) == 1, output
    assert "ZeroDivisionError: division by zero (" in errors[0] and "broken.py, line 3" in errors[0]
    assert output.count("Traceback") == 1, output
    assert "pycluster/_cli" not in output  # the application's frames, not ours


def test_preload_fails_before_any_fork(cluster_env: Cluster, commands: Commands) -> None:
    cluster_env.write("broken.py", BROKEN_APP)
    code, output = commands.run("serve", "--no-control", "-w", "3", "--preload", "broken:app")
    assert code == 4, output
    assert "cannot load the application broken:app: ZeroDivisionError" in output
    assert "started in slot" not in output, output


def test_preload_and_uds(cluster_env: Cluster, commands: Commands) -> None:
    cluster_env.write("envapp.py", ENV_APP)
    path = cluster_env.tmp / "app.sock"
    command = serve(
        commands,
        cluster_env,
        "envapp:app",
        *("-w", "1", "--uds", str(path), "--preload", "--env", "GREETING=hi"),
    )
    assert "preloaded envapp:app: WSGI application" in command.output
    data = get_over_unix_socket(path)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and body == b"hi None", data
    stop(command)


def test_gunicorn_and_uvicorn_spellings(monkeypatch: pytest.MonkeyPatch) -> None:
    ns = parsed(
        ["serve", "--graceful-timeout", "7", "-t", "30", "-u", "0", "-p", "app.pid"]
        + ["--timeout-keep-alive", "2", "--ssl-cert-reqs", "1", "--no-access-log", "a:b"],
        monkeypatch,
    )
    assert (ns.setting_shutdown_timeout, ns.setting_timeout, ns.setting_uid) == (7.0, 30.0, 0)
    assert (ns.pid, ns.keep_alive, ns.cert_reqs, ns.access_log) == (
        "app.pid",
        2.0,
        "optional",
        False,
    )


def test_threads_is_auto_by_default_and_takes_a_count_or_auto(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert parsed(["serve", "a:b"], monkeypatch).threads is None  # auto
    assert parsed(["serve", "--threads", "4", "a:b"], monkeypatch).threads == 4
    assert parsed(["serve", "--threads", "AUTO", "a:b"], monkeypatch).threads is None
    assert parsed(["serve", "a:b"], monkeypatch, PYCLUSTER_THREADS="1").threads == 1
    config = tmp_path / "serve.toml"
    config.write_text('threads = "auto"\n')
    assert parsed(["serve", "-c", str(config), "a:b"], monkeypatch).threads is None
    for wrong in ("0", "many"):
        with pytest.raises(SystemExit):
            parsed(["serve", "--threads", wrong, "a:b"], monkeypatch)
        assert f"must be a positive integer or auto, not {wrong!r}" in capsys.readouterr().err


def test_bad_values_from_the_environment_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parsed(["serve", "app:app"], monkeypatch, PYCLUSTER_RELOAD="perhaps")
    assert "environment PYCLUSTER_RELOAD: must be true or false" in capsys.readouterr().err
    assert issubclass(CliError, Exception)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--log-config", "missing.json"), "--log-config missing.json"),
        (("--log-config", "bad.toml"), "--log-config bad.toml"),
        (("--env-file", "missing.env"), "--env-file missing.env: no such file"),
        (("--access-logfile", "no/such/dir/access.log"), "No such file or directory"),
        (("--pid", "no/such/dir/app.pid"), "--pid"),
        (("--keyfile", "key.pem"), "--keyfile and --ca-certs need --certfile"),
        (("--env", "NOT A PAIR"), "must be KEY=VALUE"),
    ],
)
def test_bad_files_and_values_are_one_line_before_any_fork(
    cluster_env: Cluster, commands: Commands, options: tuple[str, str], message: str
) -> None:
    cluster_env.write("envapp.py", ENV_APP)
    cluster_env.write("bad.toml", "version = 1\nhandlers = 3\n")
    code, output = commands.run(
        "serve", "--no-control", "-w", "2", "-b", f"127.0.0.1:{free_port()}", *options, "envapp:app"
    )
    assert code == 2, output
    assert message in output, output
    assert "Traceback" not in output and "started in slot" not in output, output


@pytest.mark.parametrize("kind", ["datagram", "unbound"])
def test_an_inherited_socket_that_cannot_serve_http_is_one_line(
    cluster_env: Cluster, commands: Commands, kind: str
) -> None:
    cluster_env.write("envapp.py", ENV_APP)
    sock_type = socket.SOCK_DGRAM if kind == "datagram" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, sock_type) as given:
        fd = given.fileno()
        code, output = commands.run(
            "serve", "--no-control", "-w", "3", "--fd", str(fd), "envapp:app", pass_fds=(fd,)
        )
    assert code == 2, output
    expected = "not a stream" if kind == "datagram" else "not bound to an address"
    assert f"fd://{fd}" in output and expected in output, output
    assert "Traceback" not in output and "started in slot" not in output, output
