"""Prometheus metrics of a running cluster (``--metrics HOST:PORT``).

prometheus-client serves them from a thread of the primary; each scrape takes a
snapshot on the primary's loop (where the cluster's state lives), so a scrape never
reads the state while the loop changes it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger("pycluster._cli")

Snapshot = Callable[[], dict[str, Any]]


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``:PORT`` (all interfaces) or ``PORT`` (loopback)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    host = host.strip("[]") or "0.0.0.0"
    if not port.isdigit():
        raise ValueError(f"--metrics needs HOST:PORT, not {text!r}")
    return host, int(port)


class ClusterCollector:
    """Turns the cluster's status into metric families at each scrape."""

    def __init__(self, snapshot: Snapshot, loop: asyncio.AbstractEventLoop) -> None:
        self._snapshot = snapshot
        self._loop = loop

    def _status(self) -> dict[str, Any] | None:
        async def take() -> dict[str, Any]:
            return self._snapshot()

        try:
            return asyncio.run_coroutine_threadsafe(take(), self._loop).result(timeout=5)
        except (concurrent.futures.TimeoutError, RuntimeError):
            return None  # the primary is busy or stopping: an empty scrape, not an error

    def collect(self) -> Iterator[Any]:
        """The metric families (called by prometheus-client for each scrape)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        status = self._status()
        if status is None:
            return
        primary, workers = status["primary"], status["workers"]
        labels = ["worker", "slot", "pid"]

        def family(kind: Any, name: str, doc: str, per_worker: bool = True) -> Any:
            return kind(name, doc, labels=labels if per_worker else None)

        alive = family(GaugeMetricFamily, "pycluster_workers", "live workers", False)
        alive.add_metric([], len(workers))
        yield alive
        target = family(GaugeMetricFamily, "pycluster_workers_target", "workers wanted", False)
        target.add_metric([], primary["workers"])
        yield target
        queued = family(
            GaugeMetricFamily,
            "pycluster_queue_length",
            "connections the primary accepted that wait for a free worker",
            False,
        )
        queued.add_metric([], primary.get("queued", 0))
        yield queued
        conns = family(
            CounterMetricFamily,
            "pycluster_worker_connections",
            "connections handed to (or accepted by) the worker",
        )
        restarts = family(
            CounterMetricFamily, "pycluster_worker_restarts", "restarts of the worker's slot"
        )
        rss = family(GaugeMetricFamily, "pycluster_worker_resident_memory_bytes", "resident memory")
        uptime = family(GaugeMetricFamily, "pycluster_worker_uptime_seconds", "time since start")
        listening = family(
            GaugeMetricFamily, "pycluster_worker_listening", "1 if the worker listens"
        )
        for w in workers:
            key = [str(w["id"]), str(w["slot"]), str(w["pid"])]
            conns.add_metric(key, w.get("connections") or 0)
            restarts.add_metric(key, w.get("restarts") or 0)
            if w.get("rss") is not None:
                rss.add_metric(key, w["rss"])
            uptime.add_metric(key, w.get("uptime") or 0.0)
            listening.add_metric(key, 1 if w["state"] == "listening" else 0)
        yield from (conns, restarts, rss, uptime, listening)


def start(address: str, snapshot: Snapshot, loop: asyncio.AbstractEventLoop) -> Any:
    """Serve the metrics on ``address``; returns the HTTP server (``shutdown()`` stops it)."""
    try:
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError:
        raise RuntimeError(
            "--metrics needs prometheus-client: pip install 'pycluster[monitor]'"
        ) from None
    host, port = parse_address(address)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(snapshot, loop))
    served = start_http_server(port, addr=host, registry=registry)
    log.info("metrics on http://%s:%d/metrics", host, port)
    return served[0] if isinstance(served, tuple) else served
