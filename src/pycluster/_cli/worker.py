"""What a worker of ``pycluster run`` / ``serve`` runs: ``python -m pycluster._cli.worker SPEC``.

``SPEC`` is the JSON the primary wrote (see ``cli.primary.worker_spec``).
"""

from __future__ import annotations

import json
import sys

import pycluster as cluster
from pycluster._cli import logs


def main(argv: list[str]) -> int:
    """Run this worker's job; returns its exit status."""
    if cluster.worker is None or len(argv) != 1:
        print(
            "pycluster._cli.worker is started by `pycluster run` or `pycluster serve`",
            file=sys.stderr,
        )
        return 2
    spec = json.loads(argv[0])
    try:
        logs.configure(spec["log_level"], f"worker {cluster.worker.id}", spec.get("log_config"))
    except ValueError as exc:  # the primary applied it already: changed since
        print(f"pycluster: {exc}", file=sys.stderr)
    if spec["kind"] == "run":
        from pycluster._cli import run

        return run.main(spec)
    from pycluster._cli import serve

    return serve.main(spec)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
