"""Logging for the command line: one format for the primary and the workers.

Every line says who wrote it (``primary`` or ``worker ID``) and its pid, so the
interleaved output of a cluster reads as one log.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)-7s [%(who)s pid %(process)d] %(name)s: %(message)s"
LEVELS = ("critical", "error", "warning", "info", "debug")


class _Who(logging.Filter):
    def __init__(self, who: str) -> None:
        super().__init__()
        self.who = who

    def filter(self, record: logging.LogRecord) -> bool:
        record.who = self.who
        return True


def configure(level: str, who: str) -> None:
    """Send every log record at ``level`` and above to stderr, tagged with ``who``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, "%Y-%m-%d %H:%M:%S"))
    handler.addFilter(_Who(who))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
