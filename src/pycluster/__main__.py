"""``python -m pycluster``: the command line (see :mod:`pycluster.cli`)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the ``pycluster`` command; returns its exit status."""
    from pycluster.cli.main import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
