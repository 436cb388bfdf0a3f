"""The one definition of every setting: defaults, validation, help text.

``setup_primary()`` validates through it and the command line builds its options
from it, so a setting is described exactly once.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Check = Callable[[str, Any], Any]


@dataclass(frozen=True)
class Option:
    """A setting of ``setup_primary()``: its default, its validator and its help."""

    name: str
    default: Callable[[], Any]
    check: Check
    help: str
    cli: bool = True
    metavar: str | None = None
    #: How the command line turns its text into a value (default: from ``check``).
    parse: Callable[[str], Any] | None = None

    def from_text(self, text: str) -> Any:
        """The value of ``--option TEXT``, checked; raises ``ValueError`` naming the setting."""
        parse = self.parse or _PARSERS.get(self.check, str)
        try:
            value = parse(text)
        except ValueError as exc:
            raise ValueError(f"setting {self.name!r}: {exc}") from None
        try:
            return self.check(self.name, value)
        except TypeError as exc:
            raise ValueError(str(exc)) from None


def _type_error(key: str, expected: str, value: Any) -> TypeError:
    return TypeError(f"setting {key!r} must be {expected}, not {type(value).__name__}")


def _str(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _type_error(key, "a str", value)
    return value


def _opt_path(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise _type_error(key, "a path or None", value)
    path = os.fspath(value)
    return path if isinstance(path, str) else os.fsdecode(path)


def _str_list(key: str, value: Any) -> list[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise _type_error(key, "a list of str", value)
    for item in value:
        if not isinstance(item, str):
            raise TypeError(f"setting {key!r} must be a list of str, found {type(item).__name__}")
    return list(value)


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _type_error(key, "a bool", value)
    return value


def _choice(*allowed: str) -> Check:
    def check(key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise _type_error(key, "a str", value)
        if value not in allowed:
            raise ValueError(
                f"setting {key!r} must be one of {', '.join(map(repr, allowed))}, not {value!r}"
            )
        return value

    return check


_PARSERS: dict[Check, Callable[[str], Any]] = {}
_NONE_WORDS = ("none", "off", "")


def _parse_number(integer: bool, optional: bool) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if optional and text.strip().lower() in _NONE_WORDS:
            return None
        try:
            return int(text) if integer else float(text)
        except ValueError:
            kind = "an integer" if integer else "a number"
            raise ValueError(
                f"{text!r} is not {kind}" + (" (or 'none')" if optional else "")
            ) from None

    return parse


def parse_size(text: str) -> int | None:
    """A size in bytes: ``1048576``, ``512K``, ``256M``, ``2G`` (powers of 1024), or none."""
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    if raw.lower() in _NONE_WORDS:
        return None
    scale = 1
    if raw[-1:] in ("K", "M", "G", "T"):
        scale = 1024 ** ("KMGT".index(raw[-1]) + 1)
        raw = raw[:-1]
    try:
        return int(float(raw) * scale)
    except ValueError:
        raise ValueError(f"{text!r} is not a size (bytes, or with K, M, G)") from None


def _parse_id(database: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if text.isdigit():
            return int(text)
        import grp
        import pwd

        try:
            if database == "user":
                return pwd.getpwnam(text).pw_uid
            return grp.getgrnam(text).gr_gid
        except KeyError:
            raise ValueError(f"no {database} named {text!r}") from None

    return parse


def _opt_id(key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(key, "an int or None", value)
    if value < 0:
        raise ValueError(f"setting {key!r} must not be negative, not {value}")
    return value


def _number(minimum: float, *, optional: bool = False, integer: bool = False) -> Check:
    def check(key: str, value: Any) -> Any:
        if value is None and optional:
            return None
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            expected = "an int" if integer else "a number"
            raise _type_error(key, expected + (" or None" if optional else ""), value)
        if float(value) < minimum:
            raise ValueError(f"setting {key!r} must be at least {minimum}, not {value}")
        return value

    _PARSERS[check] = _parse_number(integer, optional)
    return check


_STDIO_WORDS = ("inherit", "pipe", "ignore")


#: The most hand-offs a worker may hold: far below what a hand-off socket's buffer
#: takes (about 270 messages), so a hand-off is never refused for want of room.
MAX_HANDOFF_WINDOW = 64


def _window(key: str, value: Any) -> int:
    number = int(_number(1, integer=True)(key, value))
    if number > MAX_HANDOFF_WINDOW:
        raise ValueError(f"setting {key!r} must be at most {MAX_HANDOFF_WINDOW}, not {value}")
    return number


_PARSERS[_window] = _parse_number(True, False)


def _stdio(key: str, value: Any) -> tuple[Any, Any, Any] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3:
        raise TypeError(
            f"setting {key!r} must be a sequence of three entries (stdin, stdout, stderr)"
        )
    for entry in value:
        if isinstance(entry, str):
            if entry not in _STDIO_WORDS:
                raise ValueError(
                    f"setting {key!r}: {entry!r} is not one of {', '.join(_STDIO_WORDS)}"
                )
        elif isinstance(entry, bool) or not (isinstance(entry, int) or hasattr(entry, "fileno")):
            raise TypeError(
                f"setting {key!r}: entries are 'inherit', 'pipe', 'ignore', a file or a descriptor, "
                f"not {type(entry).__name__}"
            )
    return (value[0], value[1], value[2])


def _program() -> tuple[str, list[str]]:
    """The running program as (exec, interpreter options), however it was started."""
    orig = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    prefix = orig[1 : len(orig) - (len(sys.argv) - 1)] if len(sys.argv) > 1 else orig[1:]
    # Read the interpreter's options as it does (getopt style), so that clustered
    # and attached forms such as `-um pkg`, `-mpkg`, `-cCODE`, `-Wd` are understood.
    i = 0
    while i < len(prefix):
        word = prefix[i]
        if word == "--" or word == "-" or not word.startswith("-"):
            script = prefix[i + 1] if word == "--" and i + 1 < len(prefix) else word
            return _absolute_script(script), prefix[:i]
        if word.startswith("--"):
            i += 2 if word == "--check-hash-based-pycs" else 1
            continue
        for j in range(1, len(word)):
            if word[j] in "cmWX":  # the options that take an argument
                value = word[j + 1 :]
                if word[j] in "cm":
                    if not value and i + 1 < len(prefix):
                        value = prefix[i + 1]
                    return f"-{word[j]} {value}", prefix[:i] + ([word[:j]] if j > 1 else [])
                i += 0 if value else 1  # the argument is the next word
                break
        i += 1
    return sys.argv[0] if sys.argv else "", []


def _absolute_script(path: str) -> str:
    # Since 3.9 __main__.__file__ is absolute, and correct even if the program
    # changed directory after starting; a worker with its own cwd needs that.
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if isinstance(main_file, str) and os.path.basename(main_file) == os.path.basename(path):
        return main_file
    return os.path.abspath(path)


def default_exec() -> str:
    """What a worker runs by default: the main script, or ``-m module``."""
    return _program()[0]


def default_exec_argv() -> list[str]:
    """The interpreter options the primary was started with."""
    return _program()[1]


OPTIONS: tuple[Option, ...] = (
    Option(
        "exec", default_exec, _str, "program a worker runs: a script path or '-m module'", cli=False
    ),
    Option(
        "args", lambda: list(sys.argv[1:]), _str_list, "arguments of the worker program", cli=False
    ),
    Option("exec_argv", default_exec_argv, _str_list, "interpreter options for workers", cli=False),
    Option("executable", lambda: sys.executable, _str, "Python interpreter for workers", cli=False),
    Option("cwd", lambda: None, _opt_path, "working directory of workers", metavar="DIR"),
    Option(
        "serialization",
        lambda: "json",
        _choice("json", "advanced"),
        "message codec: json or advanced",
        metavar="{json,advanced}",
    ),
    Option("silent", lambda: False, _bool, "pipe workers' stdout/stderr to the primary", cli=False),
    Option("stdio", lambda: None, _stdio, "explicit stdio of workers", cli=False),
    Option(
        "uid",
        lambda: None,
        _opt_id,
        "user workers run as (name or id)",
        metavar="USER",
        parse=_parse_id("user"),
    ),
    Option(
        "gid",
        lambda: None,
        _opt_id,
        "group workers run as (name or id)",
        metavar="GROUP",
        parse=_parse_id("group"),
    ),
    Option(
        "restart",
        lambda: "never",
        _choice("never", "on-failure", "always"),
        "replace workers that exit unasked",
        metavar="{never,on-failure,always}",
    ),
    Option(
        "restart_delay",
        lambda: 0.1,
        _number(0.0),
        "seconds before a replacement starts",
        metavar="S",
    ),
    Option(
        "restart_backoff",
        lambda: 2.0,
        _number(1.0),
        "growth of the delay per consecutive failure",
        metavar="X",
    ),
    Option(
        "restart_delay_max", lambda: 30.0, _number(0.0), "cap of the restart delay", metavar="S"
    ),
    Option(
        "stable_after",
        lambda: 10.0,
        _number(0.0),
        "uptime after which the delay resets",
        metavar="S",
    ),
    Option(
        "max_restarts",
        lambda: 10,
        _number(0, integer=True),
        "restarts of one slot allowed in the window",
        metavar="N",
    ),
    Option(
        "restart_window",
        lambda: 60.0,
        _number(0.0),
        "window for max_restarts, seconds",
        metavar="S",
    ),
    Option(
        "timeout",
        lambda: None,
        _number(0.01, optional=True),
        "kill a worker silent this long, seconds",
        metavar="S",
    ),
    Option(
        "max_requests",
        lambda: None,
        _number(1, optional=True, integer=True),
        "recycle a worker after N connections",
        metavar="N",
    ),
    Option(
        "max_requests_jitter",
        lambda: 0,
        _number(0, integer=True),
        "random extra for max_requests",
        metavar="N",
    ),
    Option(
        "max_memory",
        lambda: None,
        _number(1, optional=True, integer=True),
        "recycle a worker above this resident memory (bytes, or 512M, 2G)",
        metavar="SIZE",
        parse=parse_size,
    ),
    Option(
        "start_timeout",
        lambda: None,
        _number(0.01, optional=True),
        "seconds a replacement (reload, recycling) may take to be ready before it is "
        "killed and its predecessor kept",
        metavar="S",
    ),
    Option(
        "max_message_size",
        lambda: 64 << 20,
        _number(1, integer=True),
        "largest IPC message, either way, in bytes (or 512K, 64M); a worker announcing "
        "more is cut off, a larger send() raises ValueError",
        metavar="SIZE",
        parse=parse_size,
    ),
    Option(
        "shutdown_timeout",
        lambda: 30.0,
        _number(0.0),
        "seconds a graceful disconnect may take",
        metavar="S",
    ),
    Option(
        "handoff_window",
        lambda: 8,
        _window,
        "round robin: connections a worker may be handed before it takes one",
        metavar="N",
    ),
    Option(
        "handoff_batch_scheduling",
        lambda: True,
        _bool,
        "round robin, on Linux: the thread that hands connections off runs under "
        "SCHED_BATCH, so a new connection does not preempt a busy worker",
        cli=False,
    ),
)
BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}


def defaults() -> dict[str, Any]:
    """Every setting at its default."""
    return {o.name: o.default() for o in OPTIONS}


def validate(values: Mapping[str, Any]) -> dict[str, Any]:
    """Check and normalize settings; unknown keys and bad values raise, naming the key."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        option = BY_NAME.get(key)
        if option is None:
            raise TypeError(f"unknown setting {key!r}; known settings: {', '.join(BY_NAME)}")
        out[key] = option.check(key, value)
    return out


def split_exec(exec_: str) -> list[str]:
    """The command-line words of an ``exec`` setting (``-m pkg`` and ``-c code`` forms)."""
    if exec_.startswith(("-m ", "-c ")):
        return [exec_[:2], exec_[3:]]
    return [exec_]
