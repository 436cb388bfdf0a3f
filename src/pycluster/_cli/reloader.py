"""``pycluster serve --reload``: watch source files (watchfiles) and say when they change.

The primary reacts with a rolling reload of every worker at once: new workers start
with the new code while the old ones keep serving, and the old ones are retired only
once the new ones listen. New code that cannot start leaves the old workers serving.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pycluster._cli import EXIT_USAGE, CliError

#: Short, so that a saved file is served within about a second; watchfiles' own
#: default (1.6 s) is made for batches of changes, such as a checkout.
DEBOUNCE_MS = 200
STEP_MS = 50
DEFAULT_INCLUDE = ("*.py",)


class SourceWatcher:
    """Watches directories for changes of the files a glob list selects."""

    def __init__(self, dirs: list[str], include: list[str], exclude: list[str]) -> None:
        try:
            import watchfiles
        except ImportError:
            raise CliError(
                "--reload needs watchfiles: pip install 'pycluster[serve]'", EXIT_USAGE
            ) from None
        self.dirs = [os.path.abspath(d) for d in dirs]
        for directory in self.dirs:
            if not os.path.isdir(directory):
                raise CliError(f"--reload-dir {directory}: no such directory", EXIT_USAGE)
        self.include = [*DEFAULT_INCLUDE, *include]
        self.exclude = list(exclude)
        default_filter = watchfiles.DefaultFilter()

        def wanted(change: Any, path: str) -> bool:
            name = os.path.basename(path)
            if not default_filter(change, path):  # __pycache__, .git, swap files, ...
                return False
            if any(fnmatch.fnmatch(name, pattern) for pattern in self.exclude):
                return False
            return any(fnmatch.fnmatch(name, pattern) for pattern in self.include)

        self._filter = wanted
        # watchfiles logs each batch at INFO; the primary says what changed itself.
        logging.getLogger("watchfiles").setLevel(logging.WARNING)

    def describe(self) -> str:
        """The globs, for the log."""
        text = ", ".join(self.include)
        return text + (f"; not {', '.join(self.exclude)}" if self.exclude else "")

    async def changes(self) -> AsyncIterator[str]:
        """Yield a short description of each batch of changes, until cancelled."""
        import watchfiles

        async for batch in watchfiles.awatch(
            *self.dirs,
            watch_filter=self._filter,
            debounce=DEBOUNCE_MS,
            step=STEP_MS,
            yield_on_timeout=False,
        ):
            paths = sorted({self._short(path) for _change, path in batch})
            more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
            yield ", ".join(paths[:3]) + more

    def _short(self, path: str) -> str:
        for directory in self.dirs:
            try:
                return str(Path(path).relative_to(directory))
            except ValueError:
                continue
        return path
