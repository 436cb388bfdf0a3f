"""Helpers shared by the benchmarks in bench/ (http.py, ipc.py): processes, ports, tables.

Shared file: extend it, don't replace what another benchmark uses.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago: bind port 0, read what the kernel chose, close.

    Another process could take it before the caller binds; on a benchmark machine that
    race is negligible, and the server would fail loudly rather than measure the wrong thing.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class ProcInfo:
    """What /proc/PID/stat says about one process."""

    parent: int
    state: str
    start: int  # clock ticks after boot: tells a process from a later one with its pid
    name: str
    cpu_s: float  # user + system CPU seconds so far


def proc_info(pid: int) -> ProcInfo | None:
    """Read /proc/PID/stat, or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name in parentheses may contain spaces: split after the last ')'.
    name = stat[stat.find("(") + 1 : stat.rfind(")")]
    fields = stat[stat.rfind(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return ProcInfo(int(fields[1]), fields[0], int(fields[19]), name, cpu)


def proc_table() -> dict[int, ProcInfo]:
    """Every process on the machine, by pid."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (info := proc_info(int(entry))) is not None:
            table[int(entry)] = info
    return table


def machine_task_cpu_s() -> float:
    """User + system CPU seconds of every task on the machine since boot (/proc/stat).

    Unlike a walk over /proc/PID, this includes processes that started and ended in
    between two samples, such as a test suite's short-lived children. Interrupt time is
    left out, as it is from each process's own account.
    """
    with open("/proc/stat", encoding="ascii") as f:
        user, nice, system = (int(x) for x in f.readline().split()[1:4])
    return (user + nice + system) / os.sysconf("SC_CLK_TCK")


def descendants(table: dict[int, ProcInfo], root: int) -> set[int]:
    """The pids below ``root`` in ``table``, found through parent links.

    Not the process group: a supervisor may start its children in sessions of their
    own (pycluster does), out of reach of ``killpg``.
    """
    children: dict[int, list[int]] = {}
    for pid, info in table.items():
        children.setdefault(info.parent, []).append(pid)
    found: set[int] = set()
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def process_tree(root: int) -> dict[int, int]:
    """Every live descendant of ``root`` (not ``root`` itself): ``pid -> start time``."""
    table = proc_table()
    return {pid: table[pid].start for pid in descendants(table, root)}


def _alive(pid: int, start: int) -> bool:
    """Whether that very process (same start time) still runs; a zombie counts as gone."""
    info = proc_info(pid)
    return info is not None and info.start == start and info.state != "Z"


def _group_alive(pgid: int) -> bool:
    """Whether any process of process group ``pgid`` still exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_all(pgid: int, tree: dict[int, int], sig: int) -> None:
    """Send ``sig`` to a process group and to every still-running member of ``tree``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for pid, start in tree.items():
        if _alive(pid, start):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def stop_process_tree(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Stop a server started with ``start_new_session=True`` and everything it started.

    SIGTERM goes to the leader's process group and to each of its descendants directly
    (children in sessions of their own included), so every process runs its own SIGTERM
    handling even if its parent's graceful shutdown is stuck. Whatever still runs after
    ``timeout`` seconds gets SIGKILL. The leader is reaped here; its orphaned children
    are reaped by init, so they count as gone once they are zombies.
    """
    pgid = proc.pid
    tree = process_tree(proc.pid)

    def settled(deadline: float) -> bool:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        while time.monotonic() < deadline:
            if proc.poll() is not None and not any(_alive(p, s) for p, s in tree.items()):
                return True
            time.sleep(0.02)
        return proc.poll() is not None and not any(_alive(p, s) for p, s in tree.items())

    _signal_all(pgid, tree, signal.SIGTERM)
    if not settled(time.monotonic() + timeout):
        _signal_all(pgid, tree, signal.SIGKILL)
        settled(time.monotonic() + timeout)
    # Stragglers of the group that were not in the tree (started after the snapshot).
    if _group_alive(pgid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Render rows as an aligned plain-text table; numbers right-aligned, text left-aligned."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [
        all(isinstance(row[i], int | float) for row in rows if row[i] not in ("", None))
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def format_cell(value: object) -> str:
    """A value as format_table shows it in a cell (for tables in other formats)."""
    return _cell(value)


def _cell(value: object) -> str:
    """Text of one table cell: floats get a precision that suits their size."""
    if value is None:
        return ""
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)
