"""``pycluster serve``'s configuration: from options to one checked object, before any fork.

Three sources give options, the stronger first: the command line, the environment
(``PYCLUSTER_<OPTION>``, as ``PYCLUSTER_WORKERS=4`` or ``PYCLUSTER_CERTFILE=...``; and
the conventional ``WEB_CONCURRENCY`` and ``FORWARDED_ALLOW_IPS``), and the ``-c`` TOML
file, whose keys are the long option names (``workers = 4``,
``limit-request-body = "10M"``, ``bind = ["unix:/run/app.sock"]``).

Whatever can fail for every worker alike is checked here, in the primary, so that it
is one line before any fork rather than one traceback per worker: the TLS files, the
access log file, the logging configuration, the env file, the addresses (a port in
use), and with ``--preload`` the application itself.

:class:`ServeConfig` is what the workers get: plain data, sent as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib
import inspect
import os
import socket
import ssl
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pycluster._cli import EXIT_USAGE, CliError, binds

#: A user message a serve worker sends the primary before exiting with EXIT_APP_LOAD:
#: the primary reports it once, however many workers fail alike.
FATAL_CMD = "PYCLUSTER_SERVE_FATAL"
#: How a worker receives the key's password: in its environment, never on its command
#: line (which every user of the machine can read).
PASSWORD_ENV = "PYCLUSTER_KEYFILE_PASSWORD"
#: The words accepted for ``--cert-reqs``, and the ``ssl`` constants they mean.
CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
#: Environment variables other servers read, and the option each stands for.
CONVENTIONAL_ENV = {"WEB_CONCURRENCY": "workers", "FORWARDED_ALLOW_IPS": "forwarded-allow-ips"}
#: ``--threads auto``: the pool a WSGI worker moves to once its application waits.
AUTO_THREADS = 10
#: Most bytes of a request's target and headers that serve's HTTP/1.1 servers read
#: (431 beyond): llhttp sets no limit, and a client sending headers without end would
#: otherwise grow a worker's memory without end. Node's default is 16 KiB; this leaves
#: room for large cookies and tokens.
MAX_HEAD_SIZE = 65536


class HeadTooLarge(Exception):
    """A request's target and headers passed ``MAX_HEAD_SIZE`` (answered 431)."""


def grow_head(size: int, more: int) -> int:
    """``size`` bytes of a request's head so far, plus ``more``; HeadTooLarge past the limit."""
    size += more
    if size > MAX_HEAD_SIZE:
        raise HeadTooLarge(f"request target and headers over {MAX_HEAD_SIZE} bytes")
    return size


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


@dataclasses.dataclass
class ServeConfig:
    """What a worker needs to serve the application: JSON-able, checked by the primary."""

    app: str
    app_dir: str
    interface: str = "auto"
    factory: bool = False
    lifespan: str = "auto"
    threads: int | None = None  # None: auto
    loop: str = "auto"
    http: str = "auto"
    keep_alive: float = 5.0
    limit_request_body: int | None = None
    limit_concurrency: int | None = None
    backlog: int = 2048
    access_log: bool = False
    access_logfile: str | None = None
    root_path: str = ""
    proxy_headers: bool = True
    forwarded_allow_ips: str = "127.0.0.1,::1,unix"
    certfile: str | None = None
    keyfile: str | None = None
    ca_certs: str | None = None
    cert_reqs: str = "none"
    ciphers: str | None = None
    binds: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace, bind_list: list[dict[str, Any]]) -> ServeConfig:
        """The configuration the parsed options describe (paths made absolute)."""
        names = [f.name for f in dataclasses.fields(cls) if f.name not in ("binds", "app_dir")]
        values = {name: getattr(ns, name) for name in names}
        for key in ("certfile", "keyfile", "ca_certs"):
            if values[key] is not None:
                values[key] = os.path.abspath(values[key])
        if values["access_logfile"] not in (None, "-"):
            values["access_logfile"] = os.path.abspath(values["access_logfile"])
        return cls(**values, app_dir=os.path.abspath(ns.app_dir), binds=bind_list)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServeConfig:
        """The configuration as the primary sent it."""
        return cls(**data)

    @property
    def tls(self) -> bool:
        """Whether the workers serve HTTPS."""
        return self.certfile is not None


# -- the application ---------------------------------------------------------------------------
class AppLoadError(Exception):
    """The application named on the command line cannot be loaded."""


def load_app(target: str, app_dir: str, factory: bool) -> Any:
    """Import ``module:attribute`` (attributes may be dotted); call it if ``factory``."""
    module_name, _, attr = target.partition(":")
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise AppLoadError(f"no module {module_name!r} (looked in {app_dir})") from None
        raise
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(f"module {module_name!r} has no attribute {attr!r}") from None
    if factory:
        obj = obj()
    if not callable(obj):
        raise AppLoadError(f"{target} is not callable: {type(obj).__name__}")
    return obj


def detect_interface(app: Any) -> str:
    """``asgi`` for a coroutine callable (or an ASGI 2 class), else ``wsgi``."""
    if inspect.isclass(app):
        return "asgi"  # ASGI 2: instantiated per connection scope
    call = app if inspect.isroutine(app) else getattr(app, "__call__", None)  # noqa: B004
    if inspect.iscoroutinefunction(call):
        return "asgi"
    try:
        params = inspect.signature(call).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "wsgi"
    return "asgi" if len(params) == 3 else "wsgi"


def describe_load_error(target: str, exc: BaseException) -> str:
    """One line for an exception raised while importing the application."""
    if isinstance(exc, AppLoadError):
        return f"cannot load the application: {exc}"
    where = ""
    tb = exc.__traceback__
    while tb is not None:  # the innermost frame: where the application failed
        where = f" ({tb.tb_frame.f_code.co_filename}, line {tb.tb_lineno})"
        tb = tb.tb_next
    if isinstance(exc, SyntaxError):
        where = ""  # its message names the file and line already
    return f"cannot load the application {target}: {type(exc).__name__}: {exc}{where}"


def app_traceback(exc: BaseException) -> str:
    """The traceback of an application that failed to import, without pycluster's frames."""
    import traceback

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith(("<frozen", here))
        and not frame.filename.endswith(os.sep + "importlib" + os.sep + "__init__.py")
    ]
    lines = ["Traceback (most recent call last):\n"] if frames else []
    lines += traceback.format_list(frames)
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines).rstrip("\n")


def preload(config: ServeConfig) -> str:
    """Import the application in the primary (``--preload``); returns its interface.

    Workers are fresh interpreters (the program is run again, not ``os.fork``-ed), so
    this does not share the imported code with them: it makes a broken application
    fail once, here, before any worker starts, and settles the interface for all.
    """
    try:
        app = load_app(config.app, config.app_dir, config.factory)
    except Exception as exc:
        detail = "" if isinstance(exc, AppLoadError) else "\n" + app_traceback(exc)
        raise CliError(describe_load_error(config.app, exc) + detail, 4) from None
    return detect_interface(app) if config.interface == "auto" else config.interface


# -- checks before forking -------------------------------------------------------------------
def tls_context(config: ServeConfig, password: str | None) -> ssl.SSLContext | None:
    """The server's TLS context, or None without ``--certfile``; ``ValueError`` names the fault."""
    if config.certfile is None:
        if config.keyfile is not None or config.ca_certs is not None:
            raise ValueError("--keyfile and --ca-certs need --certfile")
        return None
    for option, path in (("--certfile", config.certfile), ("--keyfile", config.keyfile)):
        if path is not None and not os.path.isfile(path):
            raise ValueError(f"{option} {path}: no such file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(config.certfile, config.keyfile, password)
    except ssl.SSLError as exc:
        raise ValueError(_tls_fault(config, exc)) from None
    if config.ca_certs is not None:
        try:
            context.load_verify_locations(config.ca_certs)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"--ca-certs {config.ca_certs}: {_reason(exc)}") from None
    context.verify_mode = ssl.VerifyMode(CERT_REQS[config.cert_reqs])
    if config.ciphers is not None:
        try:
            context.set_ciphers(config.ciphers)
        except ssl.SSLError:
            raise ValueError(f"--ciphers {config.ciphers!r}: no cipher matches") from None
    return context


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None)
    return str(reason or exc).replace("_", " ").lower()


def _tls_fault(config: ServeConfig, exc: ssl.SSLError) -> str:
    keyfile = config.keyfile or config.certfile
    cert_text = Path(config.certfile or "").read_bytes()
    key_text = Path(keyfile or "").read_bytes()
    if b"-----BEGIN CERTIFICATE-----" not in cert_text:
        return f"--certfile {config.certfile}: not a PEM certificate"
    if b"PRIVATE KEY-----" not in key_text:
        where = "--keyfile" if config.keyfile else "--certfile (no --keyfile given)"
        return f"{where} {keyfile}: no PEM private key in it"
    if b"ENCRYPTED" in key_text and exc.reason in (None, "BAD_DECRYPT", "PEM_LIB", "PEM lib"):
        return f"--keyfile {keyfile}: cannot decrypt the key (wrong or missing --keyfile-password)"
    if exc.reason == "KEY_VALUES_MISMATCH":
        return f"--keyfile {keyfile} does not belong to --certfile {config.certfile}"
    return f"--certfile {config.certfile} / --keyfile {keyfile}: {_reason(exc)}"


def check_writable(option: str, path: str) -> None:
    """Fail now for a file the cluster will append to but cannot (``ValueError``)."""
    try:
        with open(path, "a"):
            pass
    except OSError as exc:
        raise ValueError(f"{option} {path}: {exc.strerror}") from None


def check_binds(bind_list: list[dict[str, Any]]) -> None:
    """Bind each address once and let it go, so a port in use is one line here.

    A worker that still fails to listen (the port taken in between) reports it to
    the primary, which says it once.
    """
    for bind in bind_list:
        if bind["kind"] == "fd":
            _check_stream_fd(bind["fd"])
        elif bind["kind"] == "tcp" and bind["port"] != 0:
            family = socket.AF_INET6 if ":" in bind["host"] else socket.AF_INET
            probe = socket.socket(family, socket.SOCK_STREAM)
            try:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((bind["host"], bind["port"]))
            except OSError as exc:
                raise ValueError(listen_error(bind, exc)) from None
            finally:
                probe.close()
        elif bind["kind"] == "unix" and not os.path.exists(bind["path"]):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.bind(bind["path"])
            except OSError as exc:
                raise ValueError(listen_error(bind, exc)) from None
            else:
                os.unlink(bind["path"])
            finally:
                probe.close()


def _check_stream_fd(fd: int) -> None:
    """An inherited descriptor to serve HTTP on must be a stream socket with an address."""
    probe = socket.socket(fileno=fd)
    try:
        if probe.type != socket.SOCK_STREAM:
            raise ValueError(f"fd://{fd}: descriptor {fd} is not a stream (TCP or Unix) socket")
        name = probe.getsockname()
        unbound = name in ("", b"") or (isinstance(name, tuple) and name[1] == 0)
        if unbound:
            raise ValueError(f"fd://{fd}: socket {fd} is not bound to an address")
    finally:
        probe.detach()  # the descriptor stays open, for the workers


def listen_error(bind: dict[str, Any], exc: OSError) -> str:
    """One line for a failure to listen on ``bind``."""
    where = binds.describe(bind)
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {where}: the address is already in use"
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied (ports below 1024 need root)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: no such address on this machine"
    return f"cannot listen on {where}: {exc.strerror or exc}"


# -- the environment of the application -----------------------------------------------------
def apply_env(pairs: list[str], env_file: str | None) -> None:
    """Set ``--env-file`` (without overriding) then ``--env KEY=VALUE`` in this process.

    Workers inherit the primary's environment, restarts and reloads included.
    """
    if env_file is not None:
        if not os.path.isfile(env_file):
            raise CliError(f"--env-file {env_file}: no such file", EXIT_USAGE)
        try:
            from dotenv import dotenv_values
        except ImportError:
            raise CliError(
                "--env-file needs python-dotenv: pip install 'pycluster[serve]'", EXIT_USAGE
            ) from None
        for key, value in dotenv_values(env_file).items():
            if value is not None:
                os.environ.setdefault(key, value)
    for pair in pairs:
        key, _, value = pair.partition("=")
        os.environ[key] = value


def parse_env_pair(text: str) -> str:
    """``--env KEY=VALUE``: checked, returned as given."""
    key, sep, _ = text.partition("=")
    if not sep or not key or not key.replace("_", "a").isalnum() or key[0].isdigit():
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE, not {text!r}")
    return text


# -- options from a file and from the environment --------------------------------------------
def _load_toml(path: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise CliError(f"config file {path}: {exc.strerror}", EXIT_USAGE) from None
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"config file {path}: not valid TOML: {exc}", EXIT_USAGE) from None


def option_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Long option names (without dashes, underscores too) to their actions; ``app`` too."""
    out: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if not action.option_strings and action.dest == "app":
            out["app"] = action
        for option in action.option_strings:
            if option.startswith("--") and option not in ("--help", "--config"):
                out[option[2:]] = action
                out[option[2:].replace("-", "_")] = action
    return out


def env_name(option: str) -> str:
    """The environment variable that gives ``--option``: ``PYCLUSTER_OPTION``."""
    return "PYCLUSTER_" + option.upper().replace("-", "_")


def layered_defaults(
    parser: argparse.ArgumentParser, config_file: str | None, environ: Mapping[str, str]
) -> dict[str, Any]:
    """Option values from the config file, overridden by the environment, by ``dest``.

    The command line overrides both: the caller makes these the parser's defaults
    and parses again.
    """
    actions = option_actions(parser)
    values: dict[str, Any] = {}
    if config_file is not None:
        for key, value in _load_toml(config_file).items():
            action = actions.get(key)
            if action is None:
                raise CliError(f"config file {config_file}: unknown option {key!r}", EXIT_USAGE)
            values[action.dest] = _convert(action, value, f"config file {config_file}: {key}")
    from_env: dict[str, tuple[str, argparse.Action]] = {}
    for variable, option in CONVENTIONAL_ENV.items():
        if environ.get(variable, "").strip():
            from_env[actions[option].dest] = (variable, actions[option])
    for option, action in actions.items():
        variable = env_name(option)
        if "_" not in option and option != "app" and variable in environ:
            from_env[action.dest] = (variable, action)
    for dest, (variable, action) in from_env.items():
        values[dest] = _convert(action, environ[variable], f"environment {variable}")
    return values


def _convert(action: argparse.Action, value: Any, where: str) -> Any:
    """A value from a file or the environment, checked as the command line would check it."""
    if action.nargs == 0:  # a flag: --reload, --proxy-headers/--no-proxy-headers
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            value = value.strip().lower() in _TRUE
        if not isinstance(value, bool):
            raise CliError(f"{where}: must be true or false, not {value!r}", EXIT_USAGE)
        return value if action.const is not False else not value
    if isinstance(action, ReplaceAppend):
        items = value.split() if isinstance(value, str) else value
        if not isinstance(items, list):
            raise CliError(f"{where}: must be a list, not {value!r}", EXIT_USAGE)
        return [_one(action, item, where) for item in items]
    return _one(action, value, where)


def _one(action: argparse.Action, value: Any, where: str) -> Any:
    if isinstance(value, (dict, list)) or isinstance(value, bool):
        raise CliError(f"{where}: must be a single value, not {value!r}", EXIT_USAGE)
    text = str(value)
    try:
        result = action.type(text) if callable(action.type) else text
    except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
        raise CliError(f"{where}: {exc}", EXIT_USAGE) from None
    if action.choices is not None and result not in action.choices:
        allowed = ", ".join(map(str, action.choices))
        raise CliError(f"{where}: must be one of {allowed}, not {text!r}", EXIT_USAGE)
    return result


class ReplaceAppend(argparse.Action):
    """``append`` whose first use on the command line replaces the default list.

    So ``-b`` on the command line replaces the binds of the config file instead of
    adding to them: the command line wins, as for every other option.
    """

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        given: set[str] = namespace.__dict__.setdefault("_given_lists", set())
        items = list(getattr(namespace, self.dest, None) or []) if self.dest in given else []
        given.add(self.dest)
        items.append(values)
        setattr(namespace, self.dest, items)
