"""The per-worker table of ``pycluster status``, and its live form ``--watch`` (rich)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

Status = dict[str, Any]
COLUMNS = ("id", "slot", "pid", "state", "uptime", "connections", "restarts", "memory")


def duration(seconds: float | None) -> str:
    """``42s``, ``3m07s``, ``2h05m``, ``3d04h``."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def size(n: int | None) -> str:
    """Bytes in binary units: ``812K``, ``41.3M``, ``1.2G``."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{value:.0f}{unit}" if unit in ("B", "K") else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}T"


def rows(status: Status) -> list[tuple[str, ...]]:
    """One row of text per worker, in ``COLUMNS`` order."""
    out: list[tuple[str, ...]] = []
    for w in status.get("workers", []):
        out.append(
            (
                str(w["id"]),
                str(w["slot"]),
                str(w["pid"]),
                str(w["state"]),
                duration(w.get("uptime")),
                str(w.get("connections", 0)),
                str(w.get("restarts", 0)),
                size(w.get("rss")),
            )
        )
    return out


def headline(status: Status) -> str:
    """The primary's line above the table."""
    p = status.get("primary", {})
    binds = ", ".join(p.get("binds") or []) or "the program's own addresses"
    return (
        f"{p.get('name')}: pycluster {p.get('kind')} {p.get('target_text', '')}".rstrip()
        + f" | primary pid {p.get('pid')}, up {duration(p.get('uptime'))}"
        + f" | {len(status.get('workers', []))}/{p.get('workers')} workers, policy {p.get('policy')}"
        + f" | queued {p.get('queued', 0)} | {binds}"
        + (" | STOPPING" if p.get("stopping") else "")
    )


def all_listening(status: Status) -> bool:
    """Whether the cluster is ready: its workers run and every one listens."""
    workers = status.get("workers", [])
    wanted = status.get("primary", {}).get("workers", 0)
    listening = [w for w in workers if w["state"] == "listening"]
    return bool(workers) and len(listening) >= wanted and not status["primary"].get("stopping")


def plain_table(status: Status) -> str:
    """The table as aligned plain text."""
    table = [tuple(c.upper() for c in COLUMNS), *rows(status)]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)) for r in table]
    return "\n".join([headline(status), *lines])


def _rich_table(status: Status) -> Any:
    from rich.table import Table

    table = Table(title=headline(status), title_justify="left", expand=False)
    for column in COLUMNS:
        table.add_column(column.upper(), justify="left" if column == "state" else "right")
    styles = {"listening": "green", "online": "yellow", "disconnected": "red", "dead": "red"}
    for row in rows(status):
        table.add_row(*row, style=styles.get(row[3]))
    return table


def show(status: Status) -> None:
    """Print the table once (rich when installed and writing to a terminal)."""
    if sys.stdout.isatty():
        try:
            from rich.console import Console
        except ImportError:
            pass
        else:
            Console().print(_rich_table(status))
            return
    print(plain_table(status))


def watch(
    fetch: Callable[[], Status],
    interval: float,
    ended: tuple[type[BaseException], ...] = (OSError,),
) -> None:
    """Redraw the table every ``interval`` seconds until Ctrl-C or the cluster ends.

    ``fetch`` raising one of ``ended`` means the cluster is gone.
    """
    try:
        from rich.live import Live
    except ImportError:
        raise SystemExit(
            "pycluster: status --watch needs rich: pip install 'pycluster[monitor]'"
        ) from None
    first = fetch()
    print(f"watching {first['primary']['name']} (Ctrl-C to stop)", flush=True)
    with Live(_rich_table(first), refresh_per_second=4, screen=False) as live:
        while True:
            time.sleep(interval)
            try:
                live.update(_rich_table(fetch()))
            except ended:
                live.console.print("the cluster has stopped")
                return
