"""Logging for the command line: one format for the primary and the workers.

Every line says who wrote it (``primary`` or ``worker ID``) and its pid, so the
interleaved output of a cluster reads as one log. ``%(who)s`` is an attribute of
every record, so a ``--log-config`` of the user's may use it too.

The handler pycluster puts on the root logger skips a record that a stream or file
handler of the application's own (Django's ``console``, say) already wrote on its
way up, so an application that configures its logging never sees its lines twice.
"""

from __future__ import annotations

import json
import logging
import logging.config
import sys
from pathlib import Path
from typing import Any

FORMAT = "%(asctime)s %(levelname)-7s [%(who)s pid %(process)d] %(name)s: %(message)s"
ACCESS_FORMAT = "%(asctime)s [%(who)s pid %(process)d] %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
LEVELS = ("critical", "error", "warning", "info", "debug")

_who = "?"
_factory_installed = False


def _install_record_factory() -> None:
    global _factory_installed
    if _factory_installed:
        return
    _factory_installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.who = _who
        return record

    logging.setLogRecordFactory(factory)


class _NotWrittenYet(logging.Filter):
    """Passes a record unless a stream handler below the root logger already wrote it."""

    def filter(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = logging.getLogger(record.name)
        root = logging.getLogger()
        while logger is not None and logger is not root:
            for handler in logger.handlers:
                if (
                    isinstance(handler, logging.StreamHandler)
                    and record.levelno >= handler.level
                    and handler.filter(record)
                ):
                    return False
            if not logger.propagate:
                return True  # did not come from there: someone logged to the root itself
            logger = logger.parent
        return True


def configure(level: str, who: str, log_config: str | None = None) -> None:
    """Send every log record at ``level`` and above to stderr, tagged with ``who``.

    With ``log_config`` (a dictConfig in JSON or TOML, or a fileConfig file), that
    configuration is applied on top; ``ValueError`` names a file that cannot be used.
    """
    global _who
    _who = who
    _install_record_factory()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    handler.addFilter(_NotWrittenYet())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    if log_config is not None:
        apply_config_file(log_config)


def apply_config_file(path: str) -> None:
    """Apply a logging configuration file: ``.json``/``.toml`` dictConfig, else fileConfig."""
    suffix = Path(path).suffix.lower()
    try:
        if suffix in (".json", ".toml"):
            data = _read_dict(path, suffix)
            data.setdefault("version", 1)
            data.setdefault("disable_existing_loggers", False)
            logging.config.dictConfig(data)
        else:
            if not Path(path).is_file():
                raise OSError(f"{path}: no such file")
            logging.config.fileConfig(path, disable_existing_loggers=False)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, ImportError) as exc:
        raise ValueError(f"--log-config {path}: {exc}") from None


def _read_dict(path: str, suffix: str) -> dict[str, Any]:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise OSError(exc.strerror or str(exc)) from None
    if suffix == ".json":
        data = json.loads(raw)
    else:
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            import tomli as tomllib
        data = tomllib.loads(raw.decode())
    if not isinstance(data, dict):
        raise ValueError("must hold a table (a dictConfig)")
    return data


def access_log_to(path: str) -> None:
    """Write uvicorn's access log lines to ``path`` (``-``: standard output) only."""
    handler: logging.Handler
    if path == "-":
        handler = logging.StreamHandler(sys.stdout)
    else:
        handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter(ACCESS_FORMAT, DATE_FORMAT))
    access = logging.getLogger("uvicorn.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False
