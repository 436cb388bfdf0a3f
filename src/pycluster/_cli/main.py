"""``pycluster``: the argument parser and the sub-commands.

The cluster options of ``run`` and ``serve`` come from ``pycluster._settings.OPTIONS``
(every setting of ``setup_primary()`` that makes sense on a command line), so a
setting, its default, its check and its help are written once.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Callable
from typing import Any

from pycluster import _settings
from pycluster._cli import EXIT_USAGE, CliError, logs, serveconf

DESCRIPTION = """\
Run a Python server in several worker processes that share its port.

  pycluster run   [options] SCRIPT [ARGS...]   an unchanged program (http.server,
                                               socketserver, asyncio, plain sockets)
  pycluster serve [options] MODULE:APP         a WSGI or ASGI application (Flask,
                                               Django, FastAPI, Starlette, ...)

While it runs, from another terminal of the same user:

  pycluster status [--watch]    one line per worker (live with --watch)
  pycluster reload              replace every worker, one at a time, no request lost
  pycluster scale N             start or retire workers until N run
  pycluster stop                stop gracefully

`pycluster COMMAND --help` tells more about each command.
"""

RUN_EPILOG = """\
examples:
  pycluster run -w 4 server.py --port 8000
  pycluster run -w 2 -m http.server 8000
  pycluster run --policy none --restart always app.py

Every stream server the program opens (socketserver, http.server, asyncio
start_server/create_server, or a plain socket bind() + listen()) is shared by the
workers. With --bind, the program's first server listens there instead of on its own
address (its second on the second --bind, ...).
"""

SERVE_EPILOG = """\
examples:
  pycluster serve -w 4 -b 0.0.0.0:8000 myproject.wsgi:application
  pycluster serve -b unix:/run/app.sock --interface asgi main:app
  pycluster serve --restart on-failure --max-requests 10000 --timeout 30 app:app

Needs the 'serve' extra: pip install 'pycluster[serve]' (uvicorn, httptools, a2wsgi).
"""


def default_workers() -> int:
    """``WEB_CONCURRENCY`` if set, else the CPUs this process may run on."""
    raw = os.environ.get("WEB_CONCURRENCY", "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise CliError(f"WEB_CONCURRENCY must be a positive integer, not {raw!r}", EXIT_USAGE)
        return int(raw)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return int(text)


def _threads(text: str) -> int | None:
    """``--threads``: a positive count, or ``auto`` (None)."""
    if text.strip().lower() == "auto":
        return None
    try:
        return _positive(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must be a positive integer or auto, not {text!r}"
        ) from None


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, not {text!r}")
    return int(text)


def _bind(text: str) -> dict[str, Any]:
    from pycluster._cli import binds

    try:
        return binds.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _setting_type(option: _settings.Option) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return option.from_text(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = option.name
    return parse


#: Where the command line's default differs from the library's: a server started
#: from a shell should get a crashed worker back; a library keeps Node's semantics.
CLI_DEFAULTS: dict[str, Any] = {"restart": "on-failure", "start_timeout": 60.0}


def _control_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("finding the running cluster")
    group.add_argument(
        "--control",
        metavar="PATH",
        help="control socket of the cluster (default: the only one this user runs)",
    )
    group.add_argument("--name", help="the cluster's --name, to pick one of several")


def _cluster_options(
    parser: argparse.ArgumentParser,
    groups: dict[str, Any] | None = None,
    aliases: dict[str, tuple[str, ...]] | None = None,
) -> None:
    """The options ``run`` and ``serve`` share, placed in ``groups`` (by kind) if given.

    ``aliases``: more spellings of settings' options (gunicorn's and uvicorn's).
    """
    if groups is None:
        cluster_group = parser.add_argument_group("cluster")
        groups = {
            "socket": cluster_group,
            "workers": cluster_group,
            "mechanics": cluster_group,
            "logging": cluster_group,
            "worker settings": parser.add_argument_group(
                "workers", "where, as whom and how workers run"
            ),
            "supervision": parser.add_argument_group(
                "keeping workers alive", "settings of cluster.setup_primary(), see docs"
            ),
        }
    groups["workers"].add_argument(
        "-w",
        "--workers",
        type=_positive,
        metavar="N",
        help="worker processes (default: $WEB_CONCURRENCY, else the number of CPUs)",
    )
    groups["socket"].add_argument(
        "-b",
        "--bind",
        type=_bind,
        action=serveconf.ReplaceAppend,
        default=[],
        metavar="ADDR",
        help="listen on HOST:PORT, [IPV6]:PORT, :PORT (all interfaces), PORT (127.0.0.1), "
        "unix:PATH or fd://N; "
        "repeatable (default for serve: 127.0.0.1:8000, or the sockets systemd passes)",
    )
    groups["socket"].add_argument(
        "--policy",
        choices=("rr", "none", "reuseport"),
        help="rr: the primary accepts and hands each connection to the next free worker; "
        "none: workers accept on one shared socket; reuseport: the kernel balances "
        "(default: $PYCLUSTER_SCHED_POLICY, else rr)",
    )
    mechanics = groups["mechanics"]
    mechanics.add_argument(
        "--name",
        help="name of this cluster, for its control socket and `pycluster status --name`",
    )
    mechanics.add_argument(
        "--control",
        metavar="PATH",
        help="control socket path (default: $XDG_RUNTIME_DIR/pycluster/NAME.sock, "
        "else /tmp/pycluster-UID/NAME.sock)",
    )
    mechanics.add_argument("--no-control", action="store_true", help="do not open a control socket")
    mechanics.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics there (needs prometheus-client)",
    )
    groups["logging"].add_argument(
        "--log-level", choices=logs.LEVELS, default="info", help="default: %(default)s"
    )
    for option in _settings.OPTIONS:
        if not option.cli:
            continue
        default = CLI_DEFAULTS.get(option.name, option.default())
        shown = "none" if default is None else default
        if option.name in _WORKER_OPTIONS:
            where = groups["worker settings"]
        elif option.name in _LIFETIME_OPTIONS and "lifetime" in groups:
            where = groups["lifetime"]
        else:
            where = groups["supervision"]
        where.add_argument(
            "--" + option.name.replace("_", "-"),
            *(aliases or {}).get(option.name, ()),
            dest=f"setting_{option.name}",
            type=_setting_type(option),
            metavar=option.metavar,
            help=f"{option.help} (default: {shown})",
        )


_WORKER_OPTIONS = frozenset({"cwd", "uid", "gid", "serialization"})
#: Settings that bound a worker's life: with the worker options of ``serve``, as gunicorn.
_LIFETIME_OPTIONS = frozenset(
    {"timeout", "max_requests", "max_requests_jitter", "max_memory", "shutdown_timeout"}
)


def settings_from(ns: argparse.Namespace) -> dict[str, Any]:
    """The ``setup_primary()`` settings the options ask for (CLI defaults included)."""
    out: dict[str, Any] = dict(CLI_DEFAULTS)
    for option in _settings.OPTIONS:
        value = getattr(ns, f"setting_{option.name}", None)
        if option.cli and value is not None:
            out[option.name] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(
        prog="pycluster",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser(
        "run",
        help="run an unchanged Python program in N workers sharing its port",
        description="Run an unchanged Python server program in N workers sharing its port.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("-m", dest="module", metavar="MODULE", help="run a module, as python -m")
    run.add_argument("script", nargs="?", metavar="SCRIPT", help="the program to run")
    run.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="its arguments")
    _cluster_options(run)
    run.set_defaults(handler=_cmd_cluster)
    parser.set_defaults(run_parser=run)

    serve = _serve_parser(sub)
    parser.set_defaults(serve_parser=serve)

    status = sub.add_parser(
        "status",
        help="show the workers of a running cluster",
        description="Show one line per worker of a running cluster.",
    )
    status.add_argument("--watch", action="store_true", help="a live table, refreshed")
    status.add_argument(
        "--interval", type=float, default=1.0, metavar="S", help="refresh period (default: 1)"
    )
    status.add_argument("--json", action="store_true", help="print the raw status as JSON")
    status.add_argument(
        "--check",
        action="store_true",
        help="print nothing; exit 0 if every worker listens (for readiness probes), else 1",
    )
    _control_options(status)
    status.set_defaults(handler=_cmd_control, request="status")

    reload = sub.add_parser(
        "reload",
        help="replace every worker without dropping a connection",
        description="Rolling reload: start a new worker, wait until it listens, retire an "
        "old one; repeat. Waits until done.",
    )
    reload.add_argument(
        "--batch", type=_positive, default=1, metavar="N", help="workers replaced at a time"
    )
    _control_options(reload)
    reload.set_defaults(handler=_cmd_control, request="reload")

    scale = sub.add_parser(
        "scale",
        help="start or retire workers until N run",
        description="Start workers, or retire them gracefully, until N run.",
    )
    scale.add_argument("n", type=_count, metavar="N")
    _control_options(scale)
    scale.set_defaults(handler=_cmd_control, request="scale")

    stop = sub.add_parser(
        "stop",
        help="stop the cluster gracefully",
        description="Stop gracefully: workers finish their requests, then exit.",
    )
    stop.add_argument("--wait", action="store_true", help="wait until the primary has exited")
    _control_options(stop)
    stop.set_defaults(handler=_cmd_control, request="stop")
    return parser


#: gunicorn's and uvicorn's spellings of settings, accepted by ``serve``.
SERVE_ALIASES: dict[str, tuple[str, ...]] = {
    "timeout": ("-t",),
    "shutdown_timeout": ("--graceful-timeout", "--timeout-graceful-shutdown"),
    "uid": ("-u", "--user"),
    "gid": ("-g", "--group"),
}


def _serve_parser(sub: Any) -> argparse.ArgumentParser:
    """``pycluster serve``, its options grouped as gunicorn's documentation groups them."""
    serve: argparse.ArgumentParser = sub.add_parser(
        "serve",
        usage="%(prog)s [options] MODULE:APP",
        help="serve a WSGI or ASGI application in N workers",
        description="Serve a WSGI or ASGI application with N workers (uvicorn's HTTP).",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "app",
        nargs="?",
        metavar="MODULE:APP",
        help="the application, as module:attribute (or `app` in the config file)",
    )
    config = serve.add_argument_group(
        "config file",
        "every long option also comes from $PYCLUSTER_<OPTION> (PYCLUSTER_WORKERS=4)\n"
        "or from a TOML file of long option names (workers = 4); the command line\n"
        "wins over the environment, which wins over the file",
    )
    config.add_argument(
        "-c", "--config", metavar="FILE", help="TOML file of options (keys: long option names)"
    )
    socket_group = serve.add_argument_group("server socket")
    workers = serve.add_argument_group("worker processes")
    tls = serve.add_argument_group("TLS (HTTPS)")
    security = serve.add_argument_group("security")
    logging_group = serve.add_argument_group("logging")
    development = serve.add_argument_group("development")
    app = serve.add_argument_group("application")
    mechanics = serve.add_argument_group("server mechanics")
    supervision = serve.add_argument_group(
        "keeping workers alive", "settings of cluster.setup_primary(), see docs"
    )
    _cluster_options(
        serve,
        {
            "socket": socket_group,
            "workers": workers,
            "lifetime": workers,
            "mechanics": mechanics,
            "logging": logging_group,
            "worker settings": mechanics,
            "supervision": supervision,
        },
        SERVE_ALIASES,
    )
    socket_group.add_argument(
        "--uds", metavar="PATH", help="listen on this Unix socket (as -b unix:PATH)"
    )
    socket_group.add_argument(
        "--host", metavar="HOST", help="with --port, as uvicorn: -b HOST:PORT (default: 127.0.0.1)"
    )
    socket_group.add_argument(
        "--port", type=_count, metavar="PORT", help="with --host, as uvicorn (default: 8000)"
    )
    socket_group.add_argument(
        "--fd", type=_count, metavar="N", help="listen on inherited descriptor N (as -b fd://N)"
    )
    socket_group.add_argument(
        "--backlog", type=_positive, default=2048, metavar="N", help="default: 2048"
    )
    workers.add_argument(
        "--threads",
        type=_threads,
        default=None,
        metavar="N",
        help="WSGI apps: requests run in a pool of N threads per worker (gunicorn's gthread); "
        "1 runs them inline on the event loop, one at a time (gunicorn's sync); auto runs "
        "them inline until the app waits (on I/O, a sleep, a lock), then in a pool of 10 "
        "(default: auto)",
    )
    workers.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop (default: auto: uvloop if installed)",
    )
    workers.add_argument(
        "--http",
        choices=("auto", "h11", "httptools"),
        default="auto",
        help="HTTP parser (default: auto: httptools if installed); h11 serves through "
        "uvicorn's h11 protocol (and a2wsgi for WSGI apps) instead of pycluster's own "
        "HTTP/1.1 servers",
    )
    workers.add_argument(
        "--keep-alive",
        "--timeout-keep-alive",
        dest="keep_alive",
        type=float,
        default=5.0,
        metavar="S",
        help="close idle keep-alive connections after S seconds (default: 5)",
    )
    workers.add_argument(
        "--limit-concurrency",
        type=_positive,
        metavar="N",
        help="answer 503 beyond N connections per worker (default: none)",
    )
    tls.add_argument(
        "--certfile", "--ssl-certfile", dest="certfile", metavar="FILE", help="PEM certificate"
    )
    tls.add_argument(
        "--keyfile",
        "--ssl-keyfile",
        dest="keyfile",
        metavar="FILE",
        help="PEM private key (default: in --certfile)",
    )
    tls.add_argument(
        "--keyfile-password",
        "--ssl-keyfile-password",
        dest="keyfile_password",
        metavar="TEXT",
        help="password of an encrypted key (better: $PYCLUSTER_KEYFILE_PASSWORD)",
    )
    tls.add_argument(
        "--ca-certs",
        "--ssl-ca-certs",
        dest="ca_certs",
        metavar="FILE",
        help="CA certificates that client certificates are checked against",
    )
    tls.add_argument(
        "--cert-reqs",
        "--ssl-cert-reqs",
        dest="cert_reqs",
        type=_cert_reqs,
        default="none",
        metavar="{none,optional,required}",
        help="client certificates (uvicorn's and gunicorn's 0, 1, 2 too; default: none)",
    )
    tls.add_argument(
        "--ciphers",
        "--ssl-ciphers",
        dest="ciphers",
        metavar="LIST",
        help="OpenSSL cipher list (default: Python's)",
    )
    security.add_argument(
        "--proxy-headers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="trust X-Forwarded-For and X-Forwarded-Proto from --forwarded-allow-ips (default: on)",
    )
    security.add_argument(
        "--forwarded-allow-ips",
        default="127.0.0.1,::1,unix",
        metavar="IPS",
        help="comma-separated proxies trusted: addresses, networks (10.0.0.0/8), 'unix' "
        "for Unix-socket peers, or '*' (default: $FORWARDED_ALLOW_IPS, else "
        "127.0.0.1,::1,unix)",
    )
    security.add_argument(
        "--limit-request-body",
        type=_size,
        metavar="SIZE",
        help="answer 413 to request bodies larger than this (bytes, or 10M; default: none)",
    )
    logging_group.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="log every request to the log (default: off)",
    )
    logging_group.add_argument(
        "--access-logfile",
        metavar="FILE",
        help="log every request to FILE ('-': standard output)",
    )
    logging_group.add_argument(
        "--log-config",
        metavar="FILE",
        help="logging.config dictConfig in JSON or TOML (.json, .toml), else fileConfig (.ini)",
    )
    mechanics.add_argument(
        "-p", "--pid", metavar="FILE", help="write the primary's pid to FILE (removed at exit)"
    )
    development.add_argument(
        "--reload",
        action="store_true",
        help="replace the workers when a source file changes (needs watchfiles)",
    )
    development.add_argument(
        "--reload-dir",
        action=serveconf.ReplaceAppend,
        default=[],
        metavar="DIR",
        help="watch DIR (repeatable; default: --app-dir)",
    )
    development.add_argument(
        "--reload-include",
        action=serveconf.ReplaceAppend,
        default=[],
        metavar="GLOB",
        help="more file names that trigger a reload (repeatable; *.py always does)",
    )
    development.add_argument(
        "--reload-exclude",
        action=serveconf.ReplaceAppend,
        default=[],
        metavar="GLOB",
        help="file names that never do (repeatable; hidden files, editors' swap files "
        "and __pycache__ never do)",
    )
    app.add_argument(
        "--interface",
        choices=("auto", "wsgi", "asgi"),
        default="auto",
        help="WSGI or ASGI (default: auto, from the callable's signature)",
    )
    app.add_argument(
        "--factory", action="store_true", help="APP is a function that returns the app"
    )
    app.add_argument(
        "--app-dir",
        dest="app_dir",
        default=".",
        metavar="DIR",
        help="look for MODULE here (default: .)",
    )
    app.add_argument(
        "--lifespan",
        choices=("auto", "on", "off"),
        default="auto",
        help="ASGI lifespan events (default: auto)",
    )
    app.add_argument("--root-path", default="", metavar="PATH", help="ASGI root_path")
    app.add_argument(
        "-e",
        "--env",
        action=serveconf.ReplaceAppend,
        type=serveconf.parse_env_pair,
        default=[],
        metavar="KEY=VALUE",
        help="set an environment variable for the application (repeatable)",
    )
    app.add_argument(
        "--env-file",
        metavar="FILE",
        help="environment variables from a .env file (not overriding those already set)",
    )
    app.add_argument(
        "--preload",
        action="store_true",
        help="import the application once in the primary before starting workers, so "
        "that a broken one fails at once (workers still import it themselves)",
    )
    serve.set_defaults(handler=_cmd_cluster)
    return serve


def _cert_reqs(text: str) -> str:
    words = {"0": "none", "1": "optional", "2": "required"}
    word = words.get(text.strip(), text.strip().lower())
    if word not in serveconf.CERT_REQS:
        raise argparse.ArgumentTypeError(f"must be none, optional or required, not {text!r}")
    return word


def _size(text: str) -> int | None:
    try:
        return _settings.parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_cluster(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from pycluster._cli import primary

    if ns.command == "run":
        if ns.module is not None and ns.script is not None:
            ns.args = [ns.script, *ns.args]
            ns.script = None
        if ns.module is None and ns.script is None:
            parser.error("run needs a SCRIPT (or -m MODULE)")
    else:
        serve_parser = parser.get_default("serve_parser")
        if ns.app is None:
            serve_parser.error("serve needs MODULE:APP (or `app` in the -c config file)")
        if ":" not in ns.app:
            serve_parser.error(
                f"the application must be MODULE:APP, as in myapp:app, not {ns.app!r}"
            )
        if ns.uds is not None:
            ns.bind = [*ns.bind, {"kind": "unix", "path": os.path.abspath(ns.uds)}]
        if ns.host is not None or ns.port is not None:
            host = "127.0.0.1" if ns.host is None else ns.host
            port = 8000 if ns.port is None else ns.port
            ns.bind = [*ns.bind, {"kind": "tcp", "host": host, "port": port}]
        if ns.fd is not None:
            ns.bind = [*ns.bind, {"kind": "fd", "fd": ns.fd}]
        if ns.keyfile_password is None:
            ns.keyfile_password = os.environ.get(serveconf.PASSWORD_ENV)
    if ns.workers is None:
        ns.workers = default_workers()
    ns.settings = settings_from(ns)
    return primary.main(ns)


def _cmd_control(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from pycluster._cli import control

    return control.client_main(ns)


def split_module_args(
    run: argparse.ArgumentParser, argv: list[str]
) -> tuple[list[str], list[str] | None]:
    """Split ``run ... -m MODULE ARGS`` so that ARGS belong to the module, as with ``python -m``.

    Returns pycluster's part (ending with ``-m MODULE``) and the module's arguments,
    or ``argv`` and None when no ``-m`` comes before the script.
    """
    i = 1  # argv[0] is "run"
    while i < len(argv):
        token = argv[i]
        if token == "--" or not token.startswith("-") or token == "-":
            return argv, None  # a script: what follows is its own
        if token.startswith("-m") and not token.startswith("--"):
            if len(token) > 2:
                return [*argv[:i], "-m", token[2:]], argv[i + 1 :]
            if i + 1 < len(argv):
                return argv[: i + 2], argv[i + 2 :]
            return argv, None  # argparse says -m needs a MODULE
        name = token.split("=", 1)[0]
        action = run._option_string_actions.get(name)
        if action is None and name.startswith("--"):
            # argparse takes unambiguous abbreviations (--work for --workers).
            found = {id(a): a for o, a in run._option_string_actions.items() if o.startswith(name)}
            action = next(iter(found.values())) if len(found) == 1 else None
        takes_value = action is not None and action.nargs != 0 and "=" not in token
        i += 2 if takes_value else 1
    return argv, None


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[command]
            return found
    return parser


def _reject_extras(parser: argparse.ArgumentParser, command: str, extras: list[str]) -> None:
    """Name unknown options as such, with the command's own usage line (exits 2)."""
    sub = _subparser(parser, command)
    unknown = [word for word in extras if word.startswith("-") and word != "-"]
    if not unknown:
        sub.error(f"unexpected argument(s): {' '.join(extras)}")
    known = [o for o in sub._option_string_actions if o.startswith("--")]
    described = []
    for word in unknown:
        name = word.split("=", 1)[0]
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        described.append(f"{name} (did you mean {close[0]}?)" if close else name)
    sub.error(f"unknown option{'s' if len(unknown) > 1 else ''}: {', '.join(described)}")


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; for ``serve``, with options from $PYCLUSTER_* and ``-c FILE`` under it."""
    ns, extras = parser.parse_known_args(argv)
    if extras:
        _reject_extras(parser, ns.command, extras)
    if ns.command != "serve":
        return ns
    serve = _subparser(parser, "serve")
    try:
        defaults = serveconf.layered_defaults(serve, ns.config, os.environ)
    except CliError as exc:
        serve.error(str(exc))
    if not defaults:
        return ns
    serve.set_defaults(**defaults)
    ns, extras = parser.parse_known_args(argv)
    return ns


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the command."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    module_args: list[str] | None = None
    if argv and argv[0] == "run":
        argv, module_args = split_module_args(parser.get_default("run_parser"), argv)
    ns = parse(parser, argv)
    if module_args is not None:
        ns.args = [*ns.args, *module_args]
    try:
        code: int = ns.handler(ns, parser)
    except CliError as exc:
        print(f"pycluster: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    return code
