"""``python -m pycluster``: the command line (see :mod:`pycluster._cli`)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the ``pycluster`` command; returns its exit status."""
    from pycluster._cli.main import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
