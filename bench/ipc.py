"""IPC benchmark: pycluster against Node's cluster and multiprocessing.Pipe, in one run.

Measured between a primary and its workers, for every peer on the same machine and in the
same run so that the ratios are fair:

1. small-message round trips per second: ``{"cmd": "ping", "n": i}`` sent by the primary,
   echoed by the worker, the next one sent only when the echo is back;
2. 1 MiB payload throughput: the same ping-pong with a 1 MiB ASCII string, reported in
   MB/s (10**6 bytes per second, counting the payload in both directions);
3. fork-to-online time: wall time from the first ``fork()`` until 2 (and 8) workers have
   all emitted ``'online'``, median of several repetitions;
4. an idle worker's resident memory (VmRSS from /proc) shortly after it came online;
5. as a reference without a goal: the CPU time (user + system, from /proc) that the
   primary and the worker together spend per round trip. Throughput swings with whatever
   else the machine runs; CPU per message swings less (though a busy machine's cache
   misses raise it too).

Round trips are measured twice, with the placement fixed: both processes pinned to one
CPU, and split over two (the worker on one CPU, the primary on another), where every
round trip wakes an idle CPU twice. Left to the scheduler, where the two processes land
changes from run to run and decides the figure; pinning takes that lottery out.

Goals (issue 10): small-message round trips >= 1.0x Node's and >= 0.8x
multiprocessing.Pipe's, in both placements; 1 MiB payloads with "advanced" serialization
>= multiprocessing.Pipe's MB/s; two workers online in <= 0.5x Node's time. Each of
pycluster's serializations is held to Node running the serialization of the same name:
JSON to Node's default JSON, "advanced" (pickle) to Node's ``serialization: 'advanced'``
(the V8 serializer). The report gives medians, and the spread (min-max over all measured
windows) of the round trips.

Peers: Node's ``cluster`` (bench/node/ipc.js) with its JSON and its "advanced"
serialization, pycluster with ``serialization="json"`` and ``"advanced"``, and
``multiprocessing`` as the Python reference (a Pipe child for 1, 2 and 4; the start of
"spawn" children for 3). Start-up (3) is measured with each project's default, JSON.

Each measurement runs in a fresh process group (bench/_ipc_peers.py, or node) that is
stopped and reaped whatever happens, Ctrl-C included; the measurements of all peers are
interleaved, in several passes, so that a busy moment of the machine hits them alike.
Results: a table on stdout, bench/results/ipc.json and bench/results/ipc.png.

Usage (from the repository root)::

    .venv/bin/python bench/ipc.py            # about 1 to 2 minutes
    .venv/bin/python bench/ipc.py --quick    # about 20 seconds
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import IO, Any

from _common import RESULTS_DIR, format_table

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
PEERS_SCRIPT = BENCH_DIR / "_ipc_peers.py"
NODE_SCRIPT = BENCH_DIR / "node" / "ipc.js"

# Columns of the report, in order: (key, label).
PEERS = [
    ("node", "Node cluster"),
    ("node-advanced", "Node advanced"),
    ("mp", "mp.Pipe"),
    ("pyc-json", "pycluster json"),
    ("pyc-advanced", "pycluster advanced"),
]
PYC_PEERS = ["pyc-json", "pyc-advanced"]
#: The Node peer each pycluster peer is compared with: the serialization of the same name.
NODE_NAMESAKE = {"pyc-json": "node", "pyc-advanced": "node-advanced"}
# How long leftovers of a finished measurement may take to exit by themselves before
# they count as leaked (a worker noticing its closed channel needs a moment).
LEAK_GRACE_S = 3.0
PR_SET_CHILD_SUBREAPER = 36
# metric -> peer (or "pycluster peer/reference" for ratios) -> value; None when unknown.
Metrics = dict[str, dict[str, float | None]]
# A 1-minute load average above this at the start means something else is running.
BUSY_LOAD = 1.0


@dataclass(frozen=True)
class Plan:
    """How long and how often each metric is measured."""

    passes: int  # fresh processes per peer and measurement, interleaved with the other peers
    rounds: int  # measured windows per round-trip metric and pass
    seconds: float  # length of one window
    reps: int  # repetitions of each fork-to-online measurement per pass
    counts: tuple[int, ...]  # worker counts of the fork-to-online measurement
    settle: float  # seconds between 'online' and reading the worker's RSS


DEFAULT_PLAN = Plan(passes=2, rounds=3, seconds=0.8, reps=3, counts=(2, 8), settle=0.5)
QUICK_PLAN = Plan(passes=1, rounds=2, seconds=0.3, reps=3, counts=(2, 8), settle=0.3)


@dataclass(frozen=True)
class Job:
    """One measurement: a command that writes a JSON result to the path after --out."""

    key: str
    label: str
    cmd: list[str]
    timeout: float
    cpus: frozenset[int] | None = None  # pin the job (and so its workers) to these CPUs


# --- running measurements and reaping everything they started --------------------------


def _become_subreaper() -> bool:
    """Adopt our orphaned descendants, so that they can be found and reaped.

    A worker whose primary died is re-parented to the nearest subreaper, else to PID 1;
    not every PID 1 reaps (in some containers they stay zombies forever), so we do it.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, session id) of *pid* from /proc, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[3])


def _cmdline(pid: int) -> str:
    """Command line of *pid*, for the leak report."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def _reap_children() -> None:
    """Collect the exit status of every child of ours that has ended (adopted orphans)."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _job_processes(session: int) -> list[int]:
    """Live processes that a job started: our descendants, and its session's members.

    Parent links find them all while we are a subreaper, whatever process groups or
    sessions they moved to (pycluster gives each worker a process group of its own, out
    of reach of ``killpg``); the session catches orphans if we could not become one.
    Zombies are dead and do not count.
    """
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            stats[int(entry)] = stat
    children: dict[int, list[int]] = {}
    for pid, (_state, ppid, _sid) in stats.items():
        children.setdefault(ppid, []).append(pid)
    ours: set[int] = set()
    todo = [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in ours:
                ours.add(child)
                todo.append(child)
    ours |= {pid for pid, (_state, _ppid, sid) in stats.items() if sid == session}
    return sorted(pid for pid in ours if stats[pid][0] not in ("Z", "X"))


def _kill(pids: Sequence[int], sig: signal.Signals) -> None:
    """Send *sig* to each of *pids*, ignoring the ones that are already gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _stop_job(proc: subprocess.Popen[bytes]) -> list[str]:
    """Stop a job and everything it started, reap it all, and report what outlived it.

    A job that ended by itself should leave nothing behind: whatever still runs
    LEAK_GRACE_S after its leader ended is reported (then killed by PID), because a
    benchmark that leaves processes behind has found a bug.
    """
    if proc.poll() is None:
        _kill(_job_processes(proc.pid), signal.SIGTERM)
        try:
            proc.wait(timeout=LEAK_GRACE_S)
        except subprocess.TimeoutExpired:
            _kill(_job_processes(proc.pid), signal.SIGKILL)
            proc.wait()
    deadline = time.monotonic() + LEAK_GRACE_S
    while True:
        _reap_children()
        left = _job_processes(proc.pid)
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    leaked = [f"{pid}: {_cmdline(pid)}" for pid in left]
    deadline = time.monotonic() + LEAK_GRACE_S
    while left and time.monotonic() < deadline:
        _kill(left, signal.SIGKILL)
        time.sleep(0.02)
        _reap_children()
        left = _job_processes(proc.pid)
    return leaked


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived: stop the run (after the running job is stopped)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Interrupts:
    """Turns SIGINT and SIGTERM into :class:`Interrupted`, but never mid-start or mid-stop.

    An exception raised between fork and Popen's return would lose the child's PID, and
    one raised while a job is being stopped would leave it half-stopped; inside
    :meth:`deferred` a signal is only noted, and raised when the block ends.
    """

    def __init__(self) -> None:
        self._depth = 0
        self._pending: int | None = None

    def install(self) -> None:
        """Handle both signals (unless ignored, as for a background job of a shell)."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is not signal.SIG_IGN:
                signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._depth:
            self._pending = signum
        else:
            raise Interrupted(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A block that a signal does not interrupt; it is raised when the block ends."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if not self._depth and self._pending is not None:
                signum, self._pending = self._pending, None
                raise Interrupted(signum)


INTERRUPTS = _Interrupts()


def _start(job: Job, out_path: Path, log: IO[bytes]) -> subprocess.Popen[bytes]:
    """Start *job* in a new session (so a new process group), output to *log*."""
    # The child inherits our CPU affinity at fork: setting ours around Popen pins the
    # job from its first instruction, without a preexec_fn.
    own_cpus = os.sched_getaffinity(0)
    if job.cpus:
        os.sched_setaffinity(0, job.cpus)
    try:
        # Output goes to a file, not a pipe: a leftover worker holding a pipe open would
        # make reading it hang.
        return subprocess.Popen(
            [*job.cmd, "--out", str(out_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_DIR,
            start_new_session=True,
        )
    finally:
        os.sched_setaffinity(0, own_cpus)


def run_job(job: Job) -> dict[str, Any]:
    """Run one measurement in its own process group; its JSON result or an error record."""
    with tempfile.TemporaryDirectory(prefix="pycluster-ipc-") as tmp:
        out_path = Path(tmp) / "result.json"
        log_path = Path(tmp) / "log.txt"
        error: str | None = None
        started = time.perf_counter()
        with open(log_path, "wb") as log:
            try:
                with INTERRUPTS.deferred():
                    proc = _start(job, out_path, log)
            except OSError as exc:
                return {"error": f"cannot start: {exc}", "log": "", "leaked": [], "elapsed_s": 0.0}
            try:
                proc.wait(timeout=job.timeout)
            except subprocess.TimeoutExpired:
                error = f"timed out after {job.timeout:.0f} s"
            finally:
                with INTERRUPTS.deferred():
                    leaked = _stop_job(proc)
        elapsed = time.perf_counter() - started
        if error is None and proc.returncode != 0:
            error = f"exited with status {proc.returncode}"
        if error is None and not out_path.exists():
            error = "wrote no result"
        log_text = log_path.read_text(errors="replace")
        if error is not None:
            log_tail = log_text[-4000:]
            return {"error": error, "log": log_tail, "leaked": leaked, "elapsed_s": elapsed}
        result: dict[str, Any] = json.loads(out_path.read_text())
        result["leaked"] = leaked
        result["elapsed_s"] = elapsed
        return result


def make_jobs(plan: Plan, peers: set[str], node: str | None) -> list[Job]:
    """The measurements of one run: per pass, round trips, then start-up times.

    Round trips on a 2-core box depend on where the scheduler happens to put the two
    processes, so each peer gets several fresh processes (passes), interleaved with the
    other peers so that a slow moment of the machine hits every peer alike.
    """
    py = [sys.executable, str(PEERS_SCRIPT)]
    window = ["--rounds", str(plan.rounds), "--seconds", str(plan.seconds)]
    rtt = [*window, "--settle", str(plan.settle)]
    fork = ["--counts", ",".join(map(str, plan.counts)), "--reps", str(plan.reps)]
    # Two metrics of `rounds` windows each, plus start-up; the rest is slack for a slow box.
    rtt_timeout = 60 + 4 * plan.rounds * plan.seconds
    fork_timeout = 60 + 3 * plan.reps * sum(plan.counts)
    fork_jobs: list[Job] = []
    if "node" in peers and node is not None:
        cmd = [node, str(NODE_SCRIPT), "--task", "fork", *fork]
        fork_jobs.append(Job("node/fork", "Node cluster: fork -> online", cmd, fork_timeout))
    if "mp" in peers:
        cmd = [*py, "--role", "mp-fork", *fork]
        fork_jobs.append(Job("mp/fork", "mp spawn: start -> up", cmd, fork_timeout))
    if "pycluster" in peers:
        cmd = [*py, "--role", "pyc-fork", *fork]
        fork_jobs.append(Job("pyc/fork", "pycluster: fork -> online", cmd, fork_timeout))
    rtt_cmds: list[tuple[str, str, list[str]]] = []
    if "node" in peers and node is not None:
        cmd = [node, str(NODE_SCRIPT), "--task", "rtt", *rtt]
        rtt_cmds.append(("node", "Node cluster", cmd))
        cmd = [*cmd, "--serialization", "advanced"]
        rtt_cmds.append(("node-advanced", "Node advanced", cmd))
    if "mp" in peers:
        rtt_cmds.append(("mp", "mp.Pipe", [*py, "--role", "mp-rtt", *rtt]))
    if "pycluster" in peers:
        for ser in ("json", "advanced"):
            cmd = [*py, "--role", "pyc-rtt", "--serialization", ser, *rtt]
            rtt_cmds.append((f"pyc-{ser}", f"pycluster {ser}", cmd))
    cpus = sorted(os.sched_getaffinity(0))
    one_cpu = frozenset(cpus[:1])
    jobs: list[Job] = []
    for _ in range(plan.passes):
        if len(cpus) >= 2:
            # The job (and so the worker) on the second CPU; the primary moves to the first.
            split = ["--primary-cpu", str(cpus[0])]
            for peer, label, cmd in rtt_cmds:
                name = f"{label}: round trips, split over 2 CPUs"
                jobs.append(
                    Job(
                        f"{peer}/rtt-split", name, [*cmd, *split], rtt_timeout, frozenset(cpus[1:2])
                    )
                )
        for peer, label, cmd in rtt_cmds:
            name = f"{label}: round trips, 1 CPU"
            jobs.append(Job(f"{peer}/rtt-1cpu", name, cmd, rtt_timeout, one_cpu))
        jobs.extend(fork_jobs)
    return jobs


# --- summary, goals, report -------------------------------------------------------------


def _median(values: Sequence[float] | None) -> float | None:
    """Median of *values*, or None when there are none."""
    return statistics.median(values) if values else None


def _merged(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The successful runs of one job merged: lists concatenated, RSS as the median."""
    merged: dict[str, Any] = {}
    rss: list[float] = []
    for run in runs:
        if "error" in run:
            continue
        for key, value in run.items():
            if key == "worker_rss_bytes" and value is not None:
                rss.append(value)
            elif isinstance(value, list) and key != "leaked":
                merged.setdefault(key, []).extend(value)
            elif isinstance(value, dict):
                for sub, sub_value in value.items():
                    merged.setdefault(key, {}).setdefault(sub, []).extend(sub_value)
            else:
                merged.setdefault(key, value)
    merged["worker_rss_bytes"] = _median(rss)
    return merged


def summarize(raw: dict[str, list[dict[str, Any]]], counts: Sequence[int]) -> Metrics:
    """Per metric and peer, the median value in the unit the report uses."""

    def ok(key: str) -> dict[str, Any]:
        return _merged(raw.get(key, []))

    metrics: Metrics = {
        "small_rtt_1cpu_per_s": {},
        "small_rtt_split_per_s": {},
        "big_mb_1cpu_per_s": {},
        "big_mb_split_per_s": {},
        "small_cpu_us": {},
        "big_cpu_ms": {},
        **{f"fork_online_{n}_ms": {} for n in counts},
        "idle_rss_mib": {},
    }
    clock_ticks = os.sysconf("SC_CLK_TCK")
    for peer, _label in PEERS:
        for job_suffix, metric_suffix in (("-1cpu", "_1cpu"), ("-split", "_split")):
            rtt = ok(f"{peer}/rtt{job_suffix}")
            small = _median(rtt.get("small_rtt_per_s"))
            metrics[f"small_rtt{metric_suffix}_per_s"][peer] = small
            big = _median(rtt.get("big_rtt_per_s"))
            mb_per_s = None if big is None else big * 2 * rtt["payload_bytes"] / 1e6
            metrics[f"big_mb{metric_suffix}_per_s"][peer] = mb_per_s
        # Pinning does not change what an idle worker holds, and changes the CPU cost of a
        # message little: every run counts.
        both = _merged(raw.get(f"{peer}/rtt-split", []) + raw.get(f"{peer}/rtt-1cpu", []))
        for prefix, metric, scale in (("small", "small_cpu_us", 1e6), ("big", "big_cpu_ms", 1e3)):
            measured = sum(both.get(f"{prefix}_measured", []))
            ticks = sum(both.get(f"{prefix}_cpu_ticks", []))
            metrics[metric][peer] = ticks / clock_ticks / measured * scale if measured else None
        rss = both.get("worker_rss_bytes")
        metrics["idle_rss_mib"][peer] = None if rss is None else rss / 2**20
        # Start-up does not depend on the serialization: pycluster is measured once, with
        # its default (json), and shown in that column.
        fork_key = {"pyc-json": "pyc/fork", "pyc-advanced": ""}.get(peer, f"{peer}/fork")
        fork = ok(fork_key).get("fork_online_s", {})
        for n in counts:
            seconds = _median(fork.get(str(n)))
            metrics[f"fork_online_{n}_ms"][peer] = None if seconds is None else seconds * 1e3
    return metrics


@dataclass(frozen=True)
class Condition:
    """pycluster's value over a reference peer's, compared with a bound."""

    ref: str  # "node" (the namesake serialization, see NODE_NAMESAKE) or "mp"
    op: str  # ">=" or "<="
    bound: float

    def met(self, ratio: float | None) -> bool | None:
        """Whether *ratio* meets the condition; None when unknown."""
        if ratio is None:
            return None
        return ratio >= self.bound if self.op == ">=" else ratio <= self.bound

    @property
    def text(self) -> str:
        """How the goal reads in the table, e.g. ">= 0.8x mp"."""
        return f"{self.op} {self.bound:g}x {'Node' if self.ref == 'node' else 'mp'}"


@dataclass(frozen=True)
class Goal:
    """The targets of one metric (none: report only), and which pycluster peers they bind."""

    metric: str
    label: str
    conditions: tuple[Condition, ...] = ()
    peers: tuple[str, ...] = tuple(PYC_PEERS)

    @property
    def text(self) -> str:
        """The goal column of the ratio table."""
        if not self.conditions:
            return "report"
        scope = "" if self.peers == tuple(PYC_PEERS) else f" ({self.peers[0].removeprefix('pyc-')})"
        return ", ".join(c.text for c in self.conditions) + scope

    def met(self, rat: dict[str, float | None], peer: str) -> bool | None:
        """Whether *peer* meets every condition; None when a ratio is unknown or no goal."""
        if not self.conditions or peer not in self.peers:
            return None
        results = [c.met(rat.get(f"{peer}/{c.ref}")) for c in self.conditions]
        return None if None in results else all(results)


def goals(counts: Sequence[int]) -> list[Goal]:
    """The goals of issue 10, one entry per reported metric."""
    small = (Condition("node", ">=", 1.0), Condition("mp", ">=", 0.8))
    big = (Condition("mp", ">=", 1.0),)
    return [
        Goal("small_rtt_1cpu_per_s", "small msg round trips/s, 1 CPU", small),
        Goal("small_rtt_split_per_s", "  same, split over 2 CPUs", small),
        Goal("big_mb_1cpu_per_s", "1 MiB payload MB/s, 1 CPU", big, ("pyc-advanced",)),
        Goal("big_mb_split_per_s", "  same, split over 2 CPUs", big, ("pyc-advanced",)),
        Goal("small_cpu_us", "CPU per small round trip, us"),
        Goal("big_cpu_ms", "CPU per 1 MiB round trip, ms"),
        *(
            Goal(
                f"fork_online_{n}_ms",
                f"fork->online {n} workers, ms",
                (Condition("node", "<=", 0.5),) if n == 2 else (),
                ("pyc-json",),
            )
            for n in counts
        ),
        Goal("idle_rss_mib", "idle worker RSS, MiB"),
    ]


def _ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is unknown (or b is zero)."""
    return None if a is None or not b else a / b


def reference(pyc: str, ref: str) -> str:
    """The peer that *pyc*'s ratio "over *ref*" divides by: Node's namesake, or mp."""
    return NODE_NAMESAKE[pyc] if ref == "node" else ref


def ratios(metrics: Metrics) -> Metrics:
    """For every metric, pycluster's value over Node's (same serialization) and over mp's."""
    return {
        metric: {
            f"{pyc}/{ref}": _ratio(values.get(pyc), values.get(reference(pyc, ref)))
            for pyc in PYC_PEERS
            for ref in ("node", "mp")
        }
        for metric, values in metrics.items()
    }


def _verdict(goal: Goal, ratio_by_peer: dict[str, float | None]) -> str:
    """One cell of the result column: per serialization, met / MISSED."""
    if not goal.conditions:
        return "-"
    parts = []
    for peer in goal.peers:
        met = goal.met(ratio_by_peer, peer)
        if met is not None:
            parts.append(f"{peer.removeprefix('pyc-')} {'met' if met else 'MISSED'}")
    return ", ".join(parts) or "n/a"


def spreads(raw: dict[str, list[dict[str, Any]]]) -> str:
    """Min - median - max of every measured window, per round-trip metric and peer."""
    rows = []
    for prefix, unit in (("small", "round trips/s"), ("big", "MB/s")):
        for suffix, where in (("-1cpu", "1 CPU"), ("-split", "split")):
            cells: list[object] = [f"{prefix} {unit}, {where}"]
            for peer, _label in PEERS:
                runs = _merged(raw.get(f"{peer}/rtt{suffix}", []))
                rates = sorted(runs.get(f"{prefix}_rtt_per_s") or [])
                if not rates:
                    cells.append("")
                    continue
                scale = 2 * runs["payload_bytes"] / 1e6 if prefix == "big" else 1.0
                lo, mid, hi = (
                    rates[0] * scale,
                    statistics.median(rates) * scale,
                    rates[-1] * scale,
                )
                cells.append(f"{_short(lo)} / {_short(mid)} / {_short(hi)}")
            rows.append(cells)
    return format_table(["min / median / max", *(label for _key, label in PEERS)], rows)


def report(
    metrics: Metrics,
    rat: Metrics,
    all_goals: list[Goal],
) -> str:
    """The two tables of the report: absolute numbers, then ratios against the goals."""
    absolute = format_table(
        ["metric (median)", *(label for _key, label in PEERS)],
        [[g.label, *(metrics[g.metric].get(key) for key, _l in PEERS)] for g in all_goals],
    )
    relative = format_table(
        ["ratio", "json/Node", "adv/Node adv", "json/mp", "adv/mp", "goal", "result"],
        [
            [
                g.label,
                rat[g.metric]["pyc-json/node"],
                rat[g.metric]["pyc-advanced/node"],
                rat[g.metric]["pyc-json/mp"],
                rat[g.metric]["pyc-advanced/mp"],
                g.text,
                _verdict(g, rat[g.metric]),
            ]
            for g in all_goals
        ],
    )
    return f"{absolute}\n\n{relative}"


def _short(value: float) -> str:
    """A bar label: thousands separators for big numbers, 3 digits for small ones."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def plot(
    metrics: Metrics,
    all_goals: list[Goal],
    counts: Sequence[int],
    path: Path,
) -> None:
    """Bar charts of every metric, each goal drawn over the bar of the peer it binds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    colors = {
        "node": "#3c873a",
        "node-advanced": "#8cc84b",
        "mp": "#888888",
        "pyc-json": "#306998",
        "pyc-advanced": "#e8b400",
    }
    panels = [
        (
            ["small_rtt_1cpu_per_s", "small_rtt_split_per_s"],
            "small-message round trips / s (higher is better)",
        ),
        (
            ["big_mb_1cpu_per_s", "big_mb_split_per_s"],
            "1 MiB payload, MB/s both ways (higher is better)",
        ),
        ([f"fork_online_{n}_ms" for n in counts], "fork -> all online, ms (lower is better)"),
        (["small_cpu_us"], "CPU per small round trip, \u00b5s (primary + worker; lower is better)"),
        (["big_cpu_ms"], "CPU per 1 MiB round trip, ms (primary + worker; lower is better)"),
        (["idle_rss_mib"], "idle worker RSS, MiB (lower is better)"),
    ]
    goal_by_metric = {g.metric: g for g in all_goals}
    width = 0.8 / len(PEERS)
    fig, axes = plt.subplots(2, 3, figsize=(17, 8))
    for ax, (groups, title) in zip(axes.flat, panels, strict=True):
        ax.set_title(title, fontsize=10)
        labelled: set[str] = set()
        for gi, metric in enumerate(groups):
            for pi, (peer, _label) in enumerate(PEERS):
                value = metrics[metric].get(peer)
                if value is None:
                    continue
                x = gi + (pi - (len(PEERS) - 1) / 2) * width
                bar = ax.bar(x, value, width * 0.9, color=colors[peer], edgecolor="black")
                ax.bar_label(bar, labels=[_short(value)], fontsize=8)
            goal = goal_by_metric[metric]
            for ci, cond in enumerate(goal.conditions):
                # Over each bound peer's own bar: its Node reference is its namesake.
                for peer in goal.peers:
                    ref_value = metrics[metric].get(reference(peer, cond.ref))
                    if ref_value is None:
                        continue
                    x = gi + ([p for p, _l in PEERS].index(peer) - (len(PEERS) - 1) / 2) * width
                    same = cond.ref == "node" and len(goal.peers) > 1
                    text = f"goal: {cond.text}" + (" (same serialization)" if same else "")
                    ax.hlines(
                        cond.bound * ref_value,
                        x - width / 2,
                        x + width / 2,
                        colors="red" if cond.ref == "node" else "black",
                        linestyles="dashed" if ci == 0 else "dotted",
                        linewidth=2,
                        label=text if text not in labelled else None,
                    )
                    labelled.add(text)
        ax.set_xlim(-0.5, len(groups) - 0.5)
        # Room above the bars for the legend of the goal lines.
        ax.margins(y=0.4 if labelled else 0.15)
        if groups[0].startswith("fork"):
            ax.set_xticks(range(len(groups)), [f"{n} workers" for n in counts])
        elif len(groups) > 1:
            ax.set_xticks(range(len(groups)), ["both on 1 CPU", "split over 2 CPUs"])
        else:
            ax.set_xticks([])
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper left")
    handles = [Rectangle((0, 0), 1, 1, color=colors[p]) for p, _l in PEERS]
    names = [label + (" (fork: spawn)" if p == "mp" else "") for p, label in PEERS]
    fig.legend(handles, names, loc="lower center", ncol=len(PEERS))
    fig.suptitle("IPC between a primary and its workers: pycluster, Node cluster, multiprocessing")
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- command line -----------------------------------------------------------------------


def _version(cmd: list[str]) -> str | None:
    """First line printed by a version command, or None if it fails."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip().splitlines()[0] if done.stdout.strip() else None


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Options of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (about 20 s)")
    parser.add_argument(
        "--peers",
        default="node,mp,pycluster",
        help="comma-separated subset of node,mp,pycluster (default: all)",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS_DIR,
        help="where ipc.json and ipc.png go (default: bench/results)",
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the matplotlib chart")
    opts = parser.parse_args(argv)
    opts.peers = {p.strip() for p in opts.peers.split(",") if p.strip()}
    unknown = opts.peers - {"node", "mp", "pycluster"}
    if unknown:
        parser.error(f"--peers: unknown peer(s) {', '.join(sorted(unknown))}")
    return opts


def run_all(plan: Plan, peers: set[str], node: str | None) -> dict[str, list[dict[str, Any]]]:
    """Run every job of the plan; every run of every job, by job key."""
    raw: dict[str, list[dict[str, Any]]] = {}
    if "node" in peers and node is None:
        keys = ("node/rtt-split", "node/rtt-1cpu", "node/fork")
        for key in (*keys, "node-advanced/rtt-split", "node-advanced/rtt-1cpu"):
            raw[key] = [{"error": "node is not on PATH", "log": "", "leaked": []}]
    for job in make_jobs(plan, peers, node):
        print(f"[ipc] {job.label} ...", end=" ", flush=True)
        result = run_job(job)
        raw.setdefault(job.key, []).append(result)
        print(f"{result.get('error') or 'ok'} ({result['elapsed_s']:.1f} s)", flush=True)
    return raw


def print_report(
    raw: dict[str, list[dict[str, Any]]], plan: Plan
) -> tuple[Metrics, Metrics, list[Goal]]:
    """Print the tables, failures and leaks; return the metrics, ratios and goals."""
    metrics = summarize(raw, plan.counts)
    rat = ratios(metrics)
    all_goals = goals(plan.counts)
    print()
    print(report(metrics, rat, all_goals))
    print()
    print(spreads(raw))
    note = (
        f"round trips: sequential ping-pong, median of {plan.passes} x {plan.rounds} windows "
        f"of {plan.seconds:g} s (a fresh process pair per pass); MB/s counts the 1 MiB payload "
        f"both ways; fork->online: median of {plan.passes} x {plan.reps} runs (mp: 'spawn' Process "
        f"start until the child reports); RSS: VmRSS {plan.settle:g} s after 'online'."
    )
    print("\n" + textwrap.fill(note, 100))
    for key, runs in raw.items():
        for result in runs:
            if "error" in result:
                # The end of a traceback says what failed; the whole log is in ipc.json.
                tail = "\n".join(result.get("log", "").strip().splitlines()[-6:])
                print(f"\n[{key}] FAILED: {result['error']}\n{tail}")
            if result.get("leaked"):
                print(f"\n[{key}] processes left running after the measurement (killed):")
                print("\n".join(f"  {line}" for line in result["leaked"]))
    return metrics, rat, all_goals


def _compile_bytecode() -> None:
    """Write pycluster's bytecode, as an installed package has it.

    An editable install under PYTHONDONTWRITEBYTECODE (set on some machines) would
    otherwise compile every module in every worker it starts, and fork->online would
    measure the compiler rather than pycluster.
    """
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("pycluster")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            compileall.compile_dir(location, quiet=1)


def main(argv: list[str]) -> int:
    """Run every measurement, print the report, write the JSON and the chart."""
    opts = parse_args(argv)
    plan = QUICK_PLAN if opts.quick else DEFAULT_PLAN
    INTERRUPTS.install()
    subreaper = _become_subreaper()
    _compile_bytecode()
    node = shutil.which("node")
    load_before = os.getloadavg()[0]
    if load_before > BUSY_LOAD:
        print(
            f"[ipc] warning: load average {load_before:.1f} on {os.cpu_count()} CPUs; "
            "other work on the machine makes these numbers noisy",
            flush=True,
        )
    started = time.perf_counter()
    try:
        raw = run_all(plan, opts.peers, node)
        metrics, rat, all_goals = print_report(raw, plan)
    except Interrupted as exc:
        print(f"\n[ipc] {exc}: stopped; every started process was stopped", file=sys.stderr)
        return 128 + exc.signum
    pyc_versions = {run.get("pycluster_version") for runs in raw.values() for run in runs}
    document = {
        "meta": {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "quick": opts.quick,
            "peers": sorted(opts.peers),
            "plan": asdict(plan),
            "python": sys.version.split()[0],
            "node": _version([node, "--version"]) if node else None,
            "pycluster": next((v for v in pyc_versions if v), None),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "clock_ticks_per_s": os.sysconf("SC_CLK_TCK"),  # unit of the raw *_cpu_ticks
            "subreaper": subreaper,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg()[0],
            "total_s": time.perf_counter() - started,
        },
        "metrics": metrics,
        "ratios": rat,
        "goals": {
            g.metric: {
                "target": g.text,
                **{peer: g.met(rat[g.metric], peer) for peer in g.peers if g.conditions},
            }
            for g in all_goals
        },
        "raw": raw,
    }
    opts.results_dir.mkdir(parents=True, exist_ok=True)
    json_path = opts.results_dir / "ipc.json"
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {json_path}")
    if not opts.no_plot:
        try:
            plot(metrics, all_goals, plan.counts, opts.results_dir / "ipc.png")
            print(f"wrote {opts.results_dir / 'ipc.png'}")
        except ImportError:
            print("matplotlib is missing: no chart (pip install -e '.[bench]')")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
