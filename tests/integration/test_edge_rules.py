"""API.md's "Limits and edge rules", each with a real cluster.

``worker.kill(signal)`` reports the signal; relative Unix socket paths too long
from the worker's directory; UDP over IPv6 and ``IPV6_V6ONLY``; ``reload()``
waiting for ``ready()``; a hung worker's replacement keeping its port;
``create_server(None)``.
"""

from __future__ import annotations

import json

from tests.conftest import Cluster

KILL = """
import json, sys
import pycluster as cluster

SIGNALS = ["SIGTERM", "SIGHUP", "SIGUSR1", "SIGTERM", "SIGUSR2", "SIGALRM"] * 3

if cluster.is_primary:
    exits = []
    online = 0

    def on_online(worker):
        global online
        online += 1
        if online == len(SIGNALS):
            for w, sig in zip(list(cluster.workers.values()), SIGNALS):
                w.kill(sig)

    cluster.on("online", on_online)
    cluster.on("exit", lambda w, code, sig: exits.append([w.id, code, sig]))
    for _ in SIGNALS:
        cluster.fork()
    cluster.run()
    print(json.dumps(sorted(exits)), flush=True)
else:
    cluster.worker.wait_disconnected()
"""


def test_kill_from_the_primary_reports_the_signal(cluster_env: Cluster) -> None:
    result = cluster_env.run(KILL, timeout=60)
    assert result.returncode == 0, result.stderr
    signals = ["SIGTERM", "SIGHUP", "SIGUSR1", "SIGTERM", "SIGUSR2", "SIGALRM"] * 3
    (line,) = [x for x in result.lines if x.startswith("[")]
    exits = json.loads(line)
    # The signal, never the status 0 of a worker that saw its channel close first.
    assert exits == [[i + 1, None, sig] for i, sig in enumerate(signals)]
