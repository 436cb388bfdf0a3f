"""HTTP benchmark: pycluster's round-robin and shared policies against Node's cluster.

The same hello-world server (``hello world\\n``, status 200, Content-Length set) runs with
two workers under each variant below, and ``wrk`` loads it on 127.0.0.1 twice: with
keep-alive connections and with ``Connection: close`` (a new TCP connection per request,
which is where round-robin costs most, since the primary accepts every connection and
hands it to a worker). Variants:

* pycluster: an asyncio server (``cluster.aio.start_server``; also on uvloop) and
  ``cluster.http.ThreadingHTTPServer``, each under ``rr`` and ``none``;
* Node.js ``cluster`` + ``http.createServer`` under ``rr`` and ``none``;
* for reference: uvicorn ``--workers 2`` and gunicorn ``-w 2`` (sync and gthread).

For every run: requests/s, p50/p99 latency (from wrk's own histogram), each worker's
share of the requests (each worker counts and writes its count when stopped), and the
CPU used by the primary, the workers and wrk. Then a table of ratios against the goals
(round-robin with ``Connection: close`` >= 2x Node's round-robin and >= 0.9x our shared
policy; keep-alive round-robin >= 0.95x shared). Results go to ``bench/results/http.json``
and ``bench/results/http_*.png``.

Usage::

    python bench/http.py                 # everything, about 4 minutes
    python bench/http.py --quick         # 2 s per run
    python bench/http.py --only 'pyc-aio-*,node-*'
    python bench/http.py --list

New variants (say ``pycluster serve MODULE:APP``) are one entry in ``VARIANTS``.
``wrk`` is installed from Debian's packages when missing (needs root).
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# This file is called http.py, and Python puts the script's directory first on sys.path:
# anything imported later that needs the standard library's `http` package (urllib.request,
# some matplotlib backends) would get this file instead. Move bench/ to the end, where
# `_common` is still found but can no longer shadow the standard library.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

from _common import (  # noqa: E402
    RESULTS_DIR,
    free_port,
    stop_process_tree,
)
from _http_report import MODES, plot, print_report, share_text  # noqa: E402

BENCH = _HERE
SERVERS = BENCH / "servers"
NODE_SERVER = BENCH / "node" / "http_server.js"
WRK_SCRIPT = BENCH / "wrk_report.lua"
PYTHON = sys.executable
HOST = "127.0.0.1"
BODY = b"hello world\n"
READY_MARK = "BENCH-READY"
# Before each run, wait while other processes use more CPU than this (percent of a core).
QUIET_PCT = 10.0


# --------------------------------------------------------------------------- variants


@functools.cache
def _module_reason(module: str, attribute: str | None = None) -> str | None:
    """Why ``module`` (and ``module.attribute``) can't be used by PYTHON, or None if it can.

    Checked in a subprocess so a half-written package can't break this process;
    cached, as every variant of a family asks the same question.
    """
    code = f"import {module}"
    if attribute:
        code += f"; {module}.{attribute}"
    done = subprocess.run(
        [PYTHON, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode == 0:
        return None
    last = (done.stderr.strip().splitlines() or ["failed"])[-1]
    return f"{code!r} fails: {last}"


def _needs_pycluster() -> str | None:
    """pycluster with port sharing must be importable by the interpreter running this."""
    return _module_reason("pycluster", "aio.start_server")


def _needs_node() -> str | None:
    """Node.js must be on PATH."""
    return None if shutil.which("node") else "node is not on PATH"


@functools.cache
def _needs_pycluster_serve() -> str | None:
    """``pycluster serve`` must exist (it is planned; this variant waits for it)."""
    reason = _needs_pycluster()
    if reason:
        return reason
    done = subprocess.run(
        [PYTHON, "-m", "pycluster", "serve", "--help"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return None if done.returncode == 0 else "`python -m pycluster serve --help` fails"


def _has_module(module: str) -> bool:
    """Whether PYTHON can import ``module`` (for optional speed-ups such as uvloop)."""
    return _module_reason(module) is None


@dataclass(frozen=True)
class Variant:
    """One server set-up to measure.

    ``command(port)`` gives the argv; it runs in bench/servers with ``env`` added to the
    environment. The benchmark starts measuring once ``ready_lines`` lines starting with
    ``BENCH-READY`` have appeared in the server's output (0: as soon as it answers) and a
    GET is answered. ``family`` and ``policy`` pair variants for the ratio table.
    """

    name: str
    label: str
    kind: str  # "pycluster", "node" or "reference"
    family: str
    policy: str | None
    command: Callable[[int], list[str]]
    env: dict[str, str] = field(default_factory=dict)
    ready_lines: int = 1
    default: bool = True
    requires: Callable[[], str | None] = lambda: None


def _pycluster_variants(workers: int) -> list[Variant]:
    """pycluster's own servers, each under both scheduling policies."""
    servers = [
        ("pyc-aio", "pycluster asyncio", "pyc_asyncio.py", ["--loop", "asyncio"]),
        ("pyc-aio-uvloop", "pycluster asyncio+uvloop", "pyc_asyncio.py", ["--loop", "uvloop"]),
        ("pyc-thr", "pycluster ThreadingHTTPServer", "pyc_threading.py", []),
    ]
    variants = []
    for family, label, script, extra in servers:
        for policy in ("rr", "none"):

            def command(port: int, script: str = script, extra: list[str] = extra) -> list[str]:
                return [PYTHON, str(SERVERS / script), "--port", str(port)] + [
                    "--workers",
                    str(workers),
                    *extra,
                ]

            variants.append(
                Variant(
                    name=f"{family}-{policy}",
                    label=f"{label} ({policy})",
                    kind="pycluster",
                    family=family,
                    policy=policy,
                    command=command,
                    env={"PYCLUSTER_SCHED_POLICY": policy},
                    requires=_needs_pycluster,
                )
            )
    return variants


def _node_variants(workers: int) -> list[Variant]:
    """Node's cluster module with http.createServer under both policies."""

    def command(port: int) -> list[str]:
        return ["node", str(NODE_SERVER), "--port", str(port), "--workers", str(workers)]

    return [
        Variant(
            name=f"node-{policy}",
            label=f"Node cluster ({policy})",
            kind="node",
            family="node",
            policy=policy,
            command=command,
            env={"NODE_CLUSTER_SCHED_POLICY": policy},
            requires=_needs_node,
        )
        for policy in ("rr", "none")
    ]


def _reference_variants(workers: int) -> list[Variant]:
    """uvicorn and gunicorn with their own multi-process supervisors, for scale."""

    def uvicorn(port: int) -> list[str]:
        argv = [PYTHON, "-m", "uvicorn", "asgi_app:app", "--app-dir", str(SERVERS)]
        argv += ["--host", HOST, "--port", str(port), "--workers", str(workers)]
        argv += ["--log-level", "warning", "--no-access-log"]
        # Their fastest set-up: it is the bar a user compares with.
        if _has_module("uvloop"):
            argv += ["--loop", "uvloop"]
        if _has_module("httptools"):
            argv += ["--http", "httptools"]
        return argv

    def gunicorn(worker_class: str, *extra: str) -> Callable[[int], list[str]]:
        def command(port: int) -> list[str]:
            argv = [PYTHON, "-m", "gunicorn", "-c", str(SERVERS / "gunicorn_conf.py")]
            argv += ["--chdir", str(SERVERS), "-w", str(workers), "-k", worker_class]
            return [*argv, *extra, "-b", f"{HOST}:{port}", "wsgi_app:app"]

        return command

    return [
        Variant(
            name="uvicorn",
            label="uvicorn --workers",
            kind="reference",
            family="uvicorn",
            policy=None,
            command=uvicorn,
            ready_lines=workers,
            requires=lambda: _module_reason("uvicorn"),
        ),
        Variant(
            name="gunicorn-sync",
            label="gunicorn sync",
            kind="reference",
            family="gunicorn-sync",
            policy=None,
            command=gunicorn("sync"),
            ready_lines=workers,
            requires=lambda: _module_reason("gunicorn"),
        ),
        Variant(
            name="gunicorn-gthread",
            label="gunicorn gthread",
            kind="reference",
            family="gunicorn-gthread",
            policy=None,
            # One thread per connection wrk opens to each worker, so none waits.
            command=gunicorn("gthread", "--threads", "32"),
            ready_lines=workers,
            requires=lambda: _module_reason("gunicorn"),
        ),
    ]


def _serve_variants(workers: int) -> list[Variant]:
    """Hook for ``pycluster serve MODULE:APP`` (not run by default until it exists).

    Uses the same ASGI app as uvicorn; readiness is the app's lifespan line when the
    server runs lifespan, so only an answered GET is required. Run it with
    ``--only 'pyc-serve-*'``; flip ``default`` once the command is stable.
    """
    variants = []
    for policy in ("rr", "none"):

        def command(port: int, policy: str = policy) -> list[str]:
            argv = [PYTHON, "-m", "pycluster", "serve", "-w", str(workers)]
            return [*argv, "-b", f"{HOST}:{port}", "--policy", policy, "asgi_app:app"]

        variants.append(
            Variant(
                name=f"pyc-serve-{policy}",
                label=f"pycluster serve ASGI ({policy})",
                kind="pycluster",
                family="pyc-serve",
                policy=policy,
                command=command,
                ready_lines=0,
                default=False,
                requires=_needs_pycluster_serve,
            )
        )
    return variants


def all_variants(workers: int) -> list[Variant]:
    """Every known variant, in the order they run (pairs to compare run next to each other)."""
    return (
        _pycluster_variants(workers)
        + _node_variants(workers)
        + _reference_variants(workers)
        + _serve_variants(workers)
    )


# --------------------------------------------------------------------------- wrk


def ensure_wrk() -> str:
    """Path of wrk, installing Debian's package first when it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit("wrk is not installed; run: sudo apt-get install -y wrk")
    print("wrk not found: installing it with apt-get", flush=True)
    subprocess.run(
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk",
        shell=True,
        check=True,
    )
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("apt-get installed wrk, but it is still not on PATH")
    return found


def run_wrk(
    wrk: str, port: int, mode: str, duration: int, threads: int, connections: int
) -> dict[str, Any]:
    """One wrk run; returns the JSON that wrk_report.lua prints, plus wrk's CPU seconds."""
    argv = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{duration}s"]
    argv += ["--timeout", "5s", "-s", str(WRK_SCRIPT)]
    if mode == "close":
        argv += ["-H", "Connection: close"]
    argv.append(f"http://{HOST}:{port}/")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH-JSON "):
            report: dict[str, Any] = json.loads(line.removeprefix("BENCH-JSON "))
            report["cpu_s"] = (after.ru_utime - before.ru_utime) + (
                after.ru_stime - before.ru_stime
            )
            return report
    output = (done.stderr.strip() or done.stdout.strip()).splitlines()
    raise RuntimeError(f"wrk printed no report (exit {done.returncode}): {output[-1:]}")


# --------------------------------------------------------------------------- HTTP probes


def _read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """Read one HTTP response (head, body) using its Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the end of the response head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the end of the body")
        body += chunk
    return head, body[:length]


def probe(port: int, timeout: float = 2.0) -> dict[str, bool]:
    """Check the server answers correctly in both modes.

    Returns ``ok`` (200 and the right body), ``closes`` (with ``Connection: close`` the
    server answers ``Connection: close`` and closes the connection, so the close mode
    really opens one connection per request) and ``keeps_alive`` (a second request on
    one connection is answered).
    """
    facts = {"ok": False, "closes": False, "keeps_alive": False}
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(request + b"Connection: close\r\n\r\n")
        head, body = _read_response(sock)
        facts["ok"] = head.startswith(b"HTTP/1.1 200") and body == BODY
        # wrk (like any HTTP/1.1 client) only reconnects when the response says
        # "Connection: close"; a server that closes silently makes it count errors.
        says_close = b"\r\nconnection: close" in head.lower()
        try:
            facts["closes"] = says_close and sock.recv(1) == b""
        except (TimeoutError, ConnectionError):
            facts["closes"] = False
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            for _ in range(2):
                sock.sendall(request + b"\r\n")
                head, body = _read_response(sock)
            facts["keeps_alive"] = head.startswith(b"HTTP/1.1 200") and body == BODY
    except (TimeoutError, ConnectionError):
        facts["keeps_alive"] = False
    return facts


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class ProcCpu:
    """One process's CPU account, as read from /proc/PID/stat."""

    parent: int
    name: str
    seconds: float


def cpu_seconds_by_process() -> dict[int, ProcCpu]:
    """CPU seconds used so far (user + system) by every process on the machine, by pid.

    Sampled around a measurement, it gives the server's primary and workers their CPU,
    and shows whether anything else (another benchmark, a build) ran at the same time.
    """
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, ProcCpu] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue  # it ended while we looked
        # The command name in parentheses may contain spaces: split after the last ')'.
        name = stat[stat.find("(") + 1 : stat.rfind(")")]
        fields = stat[stat.rfind(")") + 2 :].split()
        seconds = (int(fields[11]) + int(fields[12])) / tick
        out[int(entry)] = ProcCpu(int(fields[1]), name, seconds)
    return out


@dataclass
class CpuSplit:
    """CPU seconds used during a measurement, by role."""

    primary: float = 0.0
    workers: float = 0.0
    other: float = 0.0
    other_top: list[str] = field(default_factory=list)


def cpu_split(before: dict[int, ProcCpu], after: dict[int, ProcCpu], leader: int) -> CpuSplit:
    """Split the CPU used between two samples: the server's leader (the primary), its
    descendants (the workers, wherever their session), and every other process but this
    one. wrk has ended by the second sample, so it is in none (getrusage counts it)."""
    children: dict[int, list[int]] = {}
    for pid, proc in after.items():
        children.setdefault(proc.parent, []).append(pid)
    workers: set[int] = set()
    todo = list(children.get(leader, []))
    while todo:
        pid = todo.pop()
        if pid not in workers:
            workers.add(pid)
            todo.extend(children.get(pid, []))
    split = CpuSplit()
    others: list[tuple[float, str]] = []
    for pid, now in after.items():
        then = before.get(pid)
        used = now.seconds - (then.seconds if then else 0.0)
        if pid == leader:
            split.primary += used
        elif pid in workers:
            split.workers += used
        elif pid != os.getpid() and used > 0:
            split.other += used
            others.append((used, f"{now.name}[{pid}]"))
    # Name the biggest other users, so a noisy run says what disturbed it.
    split.other_top = [f"{name} {used:.2f}s" for used, name in sorted(others, reverse=True)[:3]]
    return split


def wait_until_quiet(limit_pct: float, max_wait: float) -> float:
    """Wait (at most ``max_wait`` s) until other processes use under ``limit_pct``% CPU.

    The machine has two cores: another benchmark or a test suite running at the same time
    takes CPU from the server or from wrk and skews every ratio. Returns the seconds waited.
    """
    started = time.monotonic()
    while True:
        before = cpu_seconds_by_process()
        time.sleep(0.5)
        busy = cpu_split(before, cpu_seconds_by_process(), leader=-1).other / 0.5 * 100
        waited = time.monotonic() - started
        if busy < limit_pct or waited >= max_wait:
            if waited > 1:
                print(f"  (waited {waited:.0f} s for other processes to settle)", flush=True)
            return waited


class Server:
    """A variant's server process group, from start to a reaped stop."""

    def __init__(self, variant: Variant, workdir: Path) -> None:
        self.variant = variant
        self.port = free_port(HOST)
        self.count_dir = workdir / "counts"
        self.count_dir.mkdir()
        self.log_path = workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server in its own session, output to a log file (never a full pipe)."""
        env = dict(os.environ)
        env.update(self.variant.env)
        env["BENCH_COUNT_DIR"] = str(self.count_dir)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(SERVERS), os.environ.get("PYTHONPATH", "")) if p
        )
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.variant.command(self.port),
                cwd=SERVERS,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log_tail(self, lines: int = 15) -> str:
        """The end of the server's output, for error messages."""
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float) -> dict[str, bool]:
        """Wait for the readiness lines and a correct answer; returns the probe's facts."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode} before it was ready:\n"
                    + self.log_tail()
                )
            marks = self.log_path.read_text(errors="replace").count(READY_MARK)
            if marks >= self.variant.ready_lines:
                try:
                    facts = probe(self.port)
                except OSError:
                    facts = {"ok": False}
                if facts["ok"]:
                    return facts
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"server not ready after {timeout:g} s ({marks} of "
                    f"{self.variant.ready_lines} ready lines):\n" + self.log_tail()
                )
            time.sleep(0.05)

    def stop(self) -> dict[str, int]:
        """Stop the whole group and return each worker's request count."""
        if self.proc is not None:
            stop_process_tree(self.proc, timeout=5.0)
        counts: dict[str, int] = {}
        for path in sorted(self.count_dir.glob("*.json")):
            record = json.loads(path.read_text())
            counts[record["worker"]] = record["requests"]
        return counts


# --------------------------------------------------------------------------- one run


def measure(variant: Variant, mode: str, args: argparse.Namespace, wrk: str) -> dict[str, Any]:
    """Start the variant's server, warm it up, measure one wrk run in ``mode``, stop it.

    A fresh server per mode, so each worker's share covers that mode alone.
    """
    result: dict[str, Any] = {"variant": variant.name, "mode": mode}
    if args.quiet_wait > 0:
        result["waited_for_quiet_s"] = wait_until_quiet(QUIET_PCT, args.quiet_wait)
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        server = Server(variant, Path(tmp))
        counts: dict[str, int] = {}
        try:
            server.start()
            result["checks"] = server.wait_ready(timeout=30.0)
            if args.warmup > 0:
                run_wrk(wrk, server.port, mode, args.warmup, args.threads, args.connections)
            assert server.proc is not None
            cpu_before = cpu_seconds_by_process()
            started = time.monotonic()
            report = run_wrk(wrk, server.port, mode, args.duration, args.threads, args.connections)
            elapsed = time.monotonic() - started
            cpu = cpu_split(cpu_before, cpu_seconds_by_process(), server.proc.pid)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            result["error"] = str(exc)
            return result
        finally:
            counts = server.stop()
    seconds = report["duration_us"] / 1e6
    lat = report["latency_us"]
    result.update(
        rps=report["requests"] / seconds,
        requests=report["requests"],
        seconds=seconds,
        latency_ms={k: v / 1000 for k, v in lat.items()},
        errors=report["errors"],
        error_total=sum(report["errors"].values()),
        shares=counts,
        cpu_pct={
            "primary": 100 * cpu.primary / elapsed,
            "workers": 100 * cpu.workers / elapsed,
            "wrk": 100 * report["cpu_s"] / elapsed,
            "other": 100 * cpu.other / elapsed,
        },
        other_processes=cpu.other_top,
    )
    return result


def aggregate(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine the rounds of one (variant, mode): medians of the numbers, summed shares."""
    good = [r for r in rounds if "error" not in r]
    if not good:
        return {**rounds[-1], "rounds": rounds}
    if len(good) == 1:
        return {**good[0], "rounds": rounds}
    merged = dict(good[0])
    merged["rps"] = statistics.median(r["rps"] for r in good)
    merged["latency_ms"] = {
        k: statistics.median(r["latency_ms"][k] for r in good) for k in good[0]["latency_ms"]
    }
    merged["cpu_pct"] = {
        k: statistics.median(r["cpu_pct"][k] for r in good) for k in good[0]["cpu_pct"]
    }
    merged["error_total"] = sum(r["error_total"] for r in good)
    shares: dict[str, int] = {}
    for r in good:
        for worker, n in r["shares"].items():
            shares[worker] = shares.get(worker, 0) + n
    merged["shares"] = shares
    merged["rounds"] = rounds
    return merged


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description="HTTP benchmark: pycluster round-robin/shared vs Node cluster, uvicorn, "
        "gunicorn (see the module docstring)."
    )
    parser.add_argument("--only", help="comma-separated variant names or globs (see --list)")
    parser.add_argument("--list", action="store_true", help="list the variants and exit")
    parser.add_argument("--quick", action="store_true", help="2 s runs, 1 s warm-up")
    # wrk takes whole seconds only ("0.5s" is an error), hence int.
    parser.add_argument("--duration", type=int, default=5, help="seconds per run (5)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up seconds, 0: none (1)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument("--workers", type=int, default=2, help="workers per server (2)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat everything; medians (1)")
    parser.add_argument("--modes", default=",".join(MODES), help="keep-alive,close (default both)")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep earlier results in http.json for variants not run now (marked stale)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        help="before each run, wait up to this many seconds for other processes to go "
        f"under {QUIET_PCT:g}%% CPU; 0: don't wait (10)",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 2, min(args.warmup, 1)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = set(args.modes) - set(MODES)
    if bad:
        parser.error(f"--modes: unknown {sorted(bad)}; choose from {', '.join(MODES)}")
    return args


def select(variants: list[Variant], only: str | None) -> list[Variant]:
    """The variants to run: the defaults, or those matching ``--only`` names/globs."""
    if not only:
        return [v for v in variants if v.default]
    patterns = [p.strip() for p in only.split(",") if p.strip()]
    chosen = [v for v in variants if any(fnmatch.fnmatchcase(v.name, p) for p in patterns)]
    unknown = [p for p in patterns if not any(fnmatch.fnmatchcase(v.name, p) for v in variants)]
    if unknown:
        names = ", ".join(v.name for v in variants)
        raise SystemExit(f"--only: no variant matches {unknown}; known: {names}")
    return chosen


def tool_versions() -> dict[str, str]:
    """Versions of what was measured, for the JSON record."""

    def first_line(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        except OSError:
            return "missing"
        return (
            (done.stdout or done.stderr).strip().splitlines()[0]
            if done.stdout or done.stderr
            else "?"
        )

    return {
        "python": platform.python_version(),
        "node": first_line(["node", "--version"]),
        "wrk": first_line(["wrk", "--version"]),
        "pycluster_commit": first_line(
            ["git", "-C", str(BENCH.parent), "rev-parse", "--short", "HEAD"]
        ),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected variants and report; exit status 1 if any run failed."""
    args = parse_args(argv)
    variants = all_variants(args.workers)
    if args.list:
        for v in variants:
            flag = "" if v.default else "  (only with --only)"
            print(f"{v.name:20} {v.label}{flag}")
        return 0
    chosen = select(variants, args.only)
    wrk = ensure_wrk()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)

    runnable = []
    skipped: dict[str, str] = {}
    for v in chosen:
        reason = v.requires()
        if reason:
            skipped[v.name] = reason
            print(f"skip {v.name}: {reason}")
        else:
            runnable.append(v)
    per_run = args.warmup + args.duration + 2.5  # + quiet check, start and stop
    estimate = per_run * len(runnable) * len(args.modes) * args.rounds
    print(
        f"{len(runnable)} variants x {len(args.modes)} modes x {args.rounds} round(s), "
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s: "
        f"about {estimate / 60:.1f} min",
        flush=True,
    )

    rounds: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for round_no in range(args.rounds):
        for v in runnable:
            for mode in args.modes:
                r = measure(v, mode, args, wrk)
                r["round"] = round_no
                rounds.setdefault((v.name, mode), []).append(r)
                if "error" in r:
                    print(f"  {v.name:20} {mode:10} FAILED: {r['error']}", flush=True)
                else:
                    print(
                        f"  {v.name:20} {mode:10} {r['rps']:>10,.0f} req/s  "
                        f"p50 {r['latency_ms']['p50']:.2f} ms  "
                        f"p99 {r['latency_ms']['p99']:.2f} ms  "
                        f"shares {share_text(r['shares'])}",
                        flush=True,
                    )
    results = {key: aggregate(rs) for key, rs in rounds.items()}

    out_json = RESULTS_DIR / "http.json"
    if args.merge and out_json.exists():
        previous = json.loads(out_json.read_text())
        for r in previous.get("runs", []):
            key = (r["variant"], r["mode"])
            if key not in results:
                results[key] = {**r, "stale": r.get("stale") or previous.get("date", "earlier")}
    known = {v.name for v in variants}
    shown = [v for v in variants if any((v.name, m) in results for m in MODES)]

    print()
    ratios = print_report(results, shown, skipped)

    record = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": tool_versions(),
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "wrk_threads": args.threads,
            "wrk_connections": args.connections,
            "workers": args.workers,
            "rounds": args.rounds,
        },
        "variants": {v.name: v.label for v in shown},
        "runs": [r for (name, _), r in sorted(results.items()) if name in known],
        "ratios": ratios,
        "skipped": skipped,
    }
    out_json.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {out_json.relative_to(BENCH.parent)}")
    if not args.no_plots:
        for path in plot(results, shown):
            print(f"wrote {path.relative_to(BENCH.parent)}")
    failed = any("error" in r and not r.get("stale") for r in results.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
