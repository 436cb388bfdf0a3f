"""``pycluster``: the argument parser and the sub-commands.

The cluster options of ``run`` and ``serve`` come from ``pycluster._settings.OPTIONS``
(every setting of ``setup_primary()`` that makes sense on a command line), so a
setting, its default, its check and its help are written once.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from pycluster import _settings
from pycluster._cli import EXIT_USAGE, CliError, logs

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


def _cluster_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster")
    group.add_argument(
        "-w",
        "--workers",
        type=_positive,
        metavar="N",
        help="worker processes (default: $WEB_CONCURRENCY, else the number of CPUs)",
    )
    group.add_argument(
        "-b",
        "--bind",
        type=_bind,
        action="append",
        default=[],
        metavar="ADDR",
        help="listen on HOST:PORT, [IPV6]:PORT, :PORT (all interfaces), PORT (127.0.0.1), "
        "unix:PATH or fd://N; "
        "repeatable (default for serve: 127.0.0.1:8000, or the sockets systemd passes)",
    )
    group.add_argument(
        "--policy",
        choices=("rr", "none", "reuseport"),
        help="rr: the primary accepts and hands each connection to the next free worker; "
        "none: workers accept on one shared socket; reuseport: the kernel balances "
        "(default: $PYCLUSTER_SCHED_POLICY, else rr)",
    )
    group.add_argument(
        "--name",
        help="name of this cluster, for its control socket and `pycluster status --name`",
    )
    group.add_argument(
        "--control",
        metavar="PATH",
        help="control socket path (default: $XDG_RUNTIME_DIR/pycluster/NAME.sock, "
        "else /tmp/pycluster-UID/NAME.sock)",
    )
    group.add_argument("--no-control", action="store_true", help="do not open a control socket")
    group.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics there (needs prometheus-client)",
    )
    group.add_argument(
        "--log-level", choices=logs.LEVELS, default="info", help="default: %(default)s"
    )
    workers = parser.add_argument_group("workers", "where, as whom and how workers run")
    supervision = parser.add_argument_group(
        "keeping workers alive", "settings of cluster.setup_primary(), see docs"
    )
    for option in _settings.OPTIONS:
        if not option.cli:
            continue
        default = CLI_DEFAULTS.get(option.name, option.default())
        shown = "none" if default is None else default
        where = workers if option.name in _WORKER_OPTIONS else supervision
        where.add_argument(
            "--" + option.name.replace("_", "-"),
            dest=f"setting_{option.name}",
            type=_setting_type(option),
            metavar=option.metavar,
            help=f"{option.help} (default: {shown})",
        )


_WORKER_OPTIONS = frozenset({"cwd", "uid", "gid", "serialization"})


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

    serve = sub.add_parser(
        "serve",
        help="serve a WSGI or ASGI application in N workers",
        description="Serve a WSGI or ASGI application with N workers (uvicorn's HTTP).",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("app", metavar="MODULE:APP", help="the application, as module:attribute")
    app = serve.add_argument_group("application")
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
        "--app-dir", default=".", metavar="DIR", help="look for MODULE here (default: .)"
    )
    app.add_argument(
        "--lifespan",
        choices=("auto", "on", "off"),
        default="auto",
        help="ASGI lifespan events (default: auto)",
    )
    app.add_argument(
        "--threads",
        type=_positive,
        default=10,
        metavar="N",
        help="threads per worker running a WSGI app (default: 10)",
    )
    http = serve.add_argument_group("HTTP")
    http.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop (default: auto: uvloop if installed)",
    )
    http.add_argument(
        "--http",
        choices=("auto", "h11", "httptools"),
        default="auto",
        help="HTTP parser (default: auto: httptools if installed)",
    )
    http.add_argument(
        "--keep-alive",
        type=float,
        default=5.0,
        metavar="S",
        help="close idle keep-alive connections after S seconds (default: 5)",
    )
    http.add_argument(
        "--limit-request-body",
        type=_size,
        metavar="SIZE",
        help="answer 413 to request bodies larger than this (bytes, or 10M; default: none)",
    )
    http.add_argument(
        "--limit-concurrency",
        type=_positive,
        metavar="N",
        help="answer 503 beyond N connections per worker (default: none)",
    )
    http.add_argument("--backlog", type=_positive, default=2048, metavar="N", help="default: 2048")
    http.add_argument("--access-log", action="store_true", help="log every request")
    http.add_argument("--root-path", default="", metavar="PATH", help="ASGI root_path")
    http.add_argument(
        "--proxy-headers",
        action="store_true",
        help="trust X-Forwarded-For/-Proto from --forwarded-allow-ips",
    )
    http.add_argument(
        "--forwarded-allow-ips",
        default="127.0.0.1",
        metavar="IPS",
        help="comma-separated proxies to trust (default: 127.0.0.1)",
    )
    _cluster_options(serve)
    serve.set_defaults(handler=_cmd_cluster)

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
    elif ":" not in ns.app:
        parser.error(f"the application must be MODULE:APP, as in myapp:app, not {ns.app!r}")
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


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the command."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    module_args: list[str] | None = None
    if argv and argv[0] == "run":
        argv, module_args = split_module_args(parser.get_default("run_parser"), argv)
    ns = parser.parse_args(argv)
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
