"""The smallest end-to-end check: fork, online, message round trip, disconnect, exit."""

from __future__ import annotations

from tests.conftest import Cluster

ECHO = """
import json
import pycluster as cluster

def emit(**kw):
    print(json.dumps(kw), flush=True)

if cluster.is_primary:
    worker = cluster.fork()
    worker.on("online", lambda: worker.send({"n": 1}))
    worker.on("message", lambda msg, handle: (emit(event="message", msg=msg), worker.disconnect()))
    worker.on("disconnect", lambda: emit(event="disconnect", planned=worker.exited_after_disconnect))
    worker.on("exit", lambda code, sig: emit(event="exit", code=code, signal=sig))
    cluster.run()
    emit(event="done", workers=len(cluster.workers))
else:
    cluster.worker.on("message", lambda msg, handle: cluster.worker.send({"echo": msg}))
    cluster.worker.wait_disconnected()
"""


def test_echo_round_trip(cluster_env: Cluster) -> None:
    result = cluster_env.run(ECHO)
    assert result.returncode == 0, result.stderr
    assert result.events() == [
        {"event": "message", "msg": {"echo": {"n": 1}}},
        {"event": "disconnect", "planned": True},
        {"event": "exit", "code": 0, "signal": None},
        {"event": "done", "workers": 0},
    ]
