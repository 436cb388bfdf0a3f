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
    return os.fspath(value)  # type: ignore[return-value]


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
        kinds: tuple[type, ...] = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            expected = "an int" if integer else "a number"
            raise _type_error(key, expected + (" or None" if optional else ""), value)
        if value < minimum:
            raise ValueError(f"setting {key!r} must be at least {minimum}, not {value}")
        return value

    return check


_STDIO_WORDS = ("inherit", "pipe", "ignore")


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
    if len(prefix) >= 2 and prefix[-2] in ("-m", "-c"):
        return f"{prefix[-2]} {prefix[-1]}", prefix[:-2]
    if prefix and prefix[-1].startswith("-m") and len(prefix[-1]) > 2:
        return f"-m {prefix[-1][2:]}", prefix[:-1]
    if prefix:
        return _absolute_script(prefix[-1]), prefix[:-1]
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
    ),
    Option("silent", lambda: False, _bool, "pipe workers' stdout/stderr to the primary", cli=False),
    Option("stdio", lambda: None, _stdio, "explicit stdio of workers", cli=False),
    Option("uid", lambda: None, _opt_id, "user id workers run as", metavar="UID"),
    Option("gid", lambda: None, _opt_id, "group id workers run as", metavar="GID"),
    Option(
        "restart",
        lambda: "never",
        _choice("never", "on-failure", "always"),
        "replace workers that exit unasked: never, on-failure, always",
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
        "recycle a worker above this RSS, bytes",
        metavar="BYTES",
    ),
    Option(
        "shutdown_timeout",
        lambda: 30.0,
        _number(0.0),
        "seconds a graceful disconnect may take",
        metavar="S",
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
