"""The primary hands round-robin connections off under SCHED_BATCH; its workers do not run so.

The program reports the scheduling class of the primary's loop thread before and
after a worker listens on a round-robin port, and that of a worker started after
that (it inherits nothing from the primary's switch). The policy a program chose
itself is left alone.
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import Cluster

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux only")

PROGRAM = """
import json, os, sys
import pycluster as cluster

NAMES = {os.SCHED_OTHER: "other", os.SCHED_BATCH: "batch", os.SCHED_IDLE: "idle"}

def policy(pid=0):
    return NAMES.get(os.sched_getscheduler(pid), "?")

if cluster.is_primary:
    mode = sys.argv[1]
    if mode == "off":
        cluster.setup_primary(handoff_batch_scheduling=False)
    elif mode == "idle":
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    report = {"before": policy()}

    def on_listening(worker, address):
        if "after" in report:
            report["later_worker"] = policy(worker.process.pid)
            print(json.dumps(report), flush=True)
            cluster.disconnect()
            return
        report["after"] = policy()
        report["first_worker"] = policy(worker.process.pid)
        cluster.fork()  # started under the primary's new policy, if any

    cluster.on("listening", on_listening)
    cluster.fork()
    cluster.run()
else:
    srv = cluster.create_server(("127.0.0.1", 0))
    cluster.worker.wait_disconnected()
"""


def report_of(cluster_env: Cluster, mode: str) -> dict[str, str]:
    """The scheduling classes the program saw, with the setting or policy ``mode``."""
    result = cluster_env.run(PROGRAM, mode)
    assert result.returncode == 0, result.stderr
    [report] = result.events()
    return report  # type: ignore[return-value]


def test_the_primary_hands_off_under_sched_batch_and_workers_run_normally(
    cluster_env: Cluster,
) -> None:
    report = report_of(cluster_env, "default")
    assert report == {
        "before": "other",
        "after": "batch",
        "first_worker": "other",
        "later_worker": "other",
    }


def test_the_setting_turns_it_off(cluster_env: Cluster) -> None:
    report = report_of(cluster_env, "off")
    assert set(report.values()) == {"other"}, report


def test_a_policy_the_program_chose_is_left_alone(cluster_env: Cluster) -> None:
    report = report_of(cluster_env, "idle")
    assert (report["before"], report["after"]) == ("idle", "idle")
