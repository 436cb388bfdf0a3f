"""The seed's ``cluster.worker`` example: each worker prints its id.

``cluster.worker.id`` in a worker is the same id the primary sees as ``worker.id``.
Run it with ``python examples/worker_id.py``.
"""

from __future__ import annotations

import pycluster as cluster

if cluster.is_primary:
    print("I am primary")
    cluster.fork()
    cluster.fork()
    cluster.run()
else:
    print(f"I am worker #{cluster.worker.id}")
