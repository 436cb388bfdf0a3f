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

from _common import RESULTS_DIR, format_table, free_port, stop_process_group  # noqa: E402

BENCH = _HERE
SERVERS = BENCH / "servers"
NODE_SERVER = BENCH / "node" / "http_server.js"
WRK_SCRIPT = BENCH / "wrk_report.lua"
PYTHON = sys.executable
HOST = "127.0.0.1"
BODY = b"hello world\n"
MODES = ("keep-alive", "close")
READY_MARK = "BENCH-READY"


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
    server closes the connection after the response, so the close mode really opens one
    connection per request) and ``keeps_alive`` (a second request on one connection is
    answered).
    """
    facts = {"ok": False, "closes": False, "keeps_alive": False}
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(request + b"Connection: close\r\n\r\n")
        head, body = _read_response(sock)
        facts["ok"] = head.startswith(b"HTTP/1.1 200") and body == BODY
        try:
            facts["closes"] = sock.recv(1) == b""
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


def group_cpu_seconds(pgid: int) -> dict[int, float]:
    """CPU seconds (user + system) of every live process in process group ``pgid``."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue  # it ended while we looked
        # The command name in parentheses may contain spaces: split after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[2]) == pgid:
            out[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    return out


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
            stop_process_group(self.proc, timeout=5.0)
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
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        server = Server(variant, Path(tmp))
        counts: dict[str, int] = {}
        try:
            server.start()
            result["checks"] = server.wait_ready(timeout=30.0)
            if args.warmup > 0:
                run_wrk(wrk, server.port, mode, args.warmup, args.threads, args.connections)
            assert server.proc is not None
            cpu_before = group_cpu_seconds(server.proc.pid)
            started = time.monotonic()
            report = run_wrk(wrk, server.port, mode, args.duration, args.threads, args.connections)
            elapsed = time.monotonic() - started
            cpu_after = group_cpu_seconds(server.proc.pid)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            result["error"] = str(exc)
            return result
        finally:
            counts = server.stop()
    seconds = report["duration_us"] / 1e6
    lat = report["latency_us"]
    primary_pid = server.proc.pid
    primary_cpu = cpu_after.get(primary_pid, 0.0) - cpu_before.get(primary_pid, 0.0)
    workers_cpu = sum(
        cpu - cpu_before.get(pid, 0.0) for pid, cpu in cpu_after.items() if pid != primary_pid
    )
    result.update(
        rps=report["requests"] / seconds,
        requests=report["requests"],
        seconds=seconds,
        latency_ms={k: v / 1000 for k, v in lat.items()},
        errors=report["errors"],
        error_total=sum(report["errors"].values()),
        shares=counts,
        cpu_pct={
            "primary": 100 * primary_cpu / elapsed,
            "workers": 100 * workers_cpu / elapsed,
            "wrk": 100 * report["cpu_s"] / elapsed,
        },
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


# --------------------------------------------------------------------------- reporting


def share_text(shares: dict[str, int]) -> str:
    """Worker shares as percentages, e.g. ``50/50``; pycluster/Node workers in id order."""
    total = sum(shares.values())
    if not total:
        return "-"
    keys = sorted(shares, key=lambda k: (not k.startswith(("pyc-w", "node-w")), k))
    if not all(k.startswith(("pyc-w", "node-w")) for k in keys):
        keys = sorted(shares, key=lambda k: -shares[k])  # pids: largest first
    return "/".join(f"{100 * shares[k] / total:.0f}" for k in keys)


def results_table(results: dict[tuple[str, str], dict[str, Any]], variants: list[Variant]) -> str:
    """One table per mode: throughput, latency, shares, CPU."""
    out = []
    for mode in MODES:
        rows: list[list[object]] = []
        for v in variants:
            r = results.get((v.name, mode))
            if r is None:
                continue
            if "error" in r:
                rows.append([v.name, "failed: " + r["error"].splitlines()[0]])
                rows[-1] += [""] * 8
                continue
            notes = []
            if mode == "close" and not r["checks"].get("closes", True):
                notes.append("server keeps the connection")
            if mode == "keep-alive" and not r["checks"].get("keeps_alive", True):
                notes.append("server closes every connection")
            if r.get("stale"):
                notes.append(f"from {r['stale']}")
            lat = r["latency_ms"]
            cpu = r["cpu_pct"]
            rows.append(
                [
                    v.name,
                    round(r["rps"]),
                    lat["p50"],
                    lat["p99"],
                    r["error_total"],
                    share_text(r["shares"]),
                    round(cpu["primary"]),
                    round(cpu["workers"]),
                    round(cpu["wrk"]),
                    "; ".join(notes),
                ]
            )
        if rows:
            headers = ["variant", "req/s", "p50 ms", "p99 ms", "errors", "shares %"]
            headers += ["cpu% primary", "cpu% workers", "cpu% wrk", "notes"]
            out.append(f"== {mode} ==\n" + format_table(headers, rows))
    return "\n\n".join(out)


def ratio_rows(
    results: dict[tuple[str, str], dict[str, Any]], variants: list[Variant]
) -> list[dict[str, Any]]:
    """The goal ratios for each pycluster server family, plus Node's own rr/none ratios."""

    def rps(name: str, mode: str) -> float | None:
        r = results.get((name, mode))
        return None if r is None or "error" in r else float(r["rps"])

    rows: list[dict[str, Any]] = []

    def add(num: str, den: str, mode_num: str, mode_den: str, goal: float | None) -> None:
        a, b = rps(num, mode_num), rps(den, mode_den)
        if a is None or b is None or b == 0:
            return
        value = a / b
        rows.append(
            {
                "numerator": f"{num} {mode_num}",
                "denominator": f"{den} {mode_den}",
                "ratio": value,
                "goal": goal,
                "pass": None if goal is None else value >= goal,
            }
        )

    families = sorted(
        {v.family for v in variants if v.kind == "pycluster"},
        key=[v.family for v in variants].index,
    )
    for fam in families:
        rr, none = f"{fam}-rr", f"{fam}-none"
        add(rr, "node-rr", "close", "close", 2.0)
        add(rr, none, "close", "close", 0.9)
        add(rr, none, "keep-alive", "keep-alive", 0.95)
    add("node-rr", "node-none", "close", "close", None)
    add("node-rr", "node-none", "keep-alive", "keep-alive", None)
    return rows


def reference_matrix(
    results: dict[tuple[str, str], dict[str, Any]], variants: list[Variant]
) -> tuple[list[str], list[list[object]]]:
    """Each pycluster variant's req/s divided by each reference's (Node, uvicorn, gunicorn)."""
    refs = [v.name for v in variants if v.kind in ("node", "reference")]
    headers = ["variant"] + [
        f"/{ref} {'ka' if m == 'keep-alive' else m}" for ref in refs for m in MODES
    ]
    rows: list[list[object]] = []
    for v in variants:
        if v.kind != "pycluster":
            continue
        row: list[object] = [v.name]
        for ref in refs:
            for mode in MODES:
                a, b = results.get((v.name, mode)), results.get((ref, mode))
                ok = a and b and "error" not in a and "error" not in b and b["rps"]
                row.append(a["rps"] / b["rps"] if ok else None)  # type: ignore[index]
        if any(x is not None for x in row[1:]):
            rows.append(row)
    return headers, rows


def plot(results: dict[tuple[str, str], dict[str, Any]], variants: list[Variant]) -> list[Path]:
    """Save throughput, latency and share plots; returns the files written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plots")
        return []
    names = [
        v.name
        for v in variants
        if any((v.name, m) in results and "error" not in results[(v.name, m)] for m in MODES)
    ]
    if not names:
        return []

    def value(name: str, mode: str, get: Callable[[dict[str, Any]], float]) -> float:
        r = results.get((name, mode))
        return get(r) if r and "error" not in r else 0.0

    written = []
    ys = range(len(names))
    height = 0.4
    colors = {"keep-alive": "tab:blue", "close": "tab:orange"}

    fig, ax = plt.subplots(figsize=(9, 0.45 * len(names) + 1.5))
    for i, mode in enumerate(MODES):
        vals = [value(n, mode, lambda r: r["rps"]) for n in names]
        pos = [y + (i - 0.5) * height for y in ys]
        ax.barh(pos, vals, height=height, label=mode, color=colors[mode])
        for p, val in zip(pos, vals, strict=True):
            if val:
                ax.text(val, p, f" {val:,.0f}", va="center", fontsize=7)
    ax.set_yticks(list(ys), names)
    ax.invert_yaxis()
    ax.set_xlabel("requests/s (2 workers, higher is better)")
    ax.set_title("hello world over HTTP/1.1, wrk on 127.0.0.1")
    ax.legend(loc="lower right")
    fig.tight_layout()
    written.append(RESULTS_DIR / "http_rps.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(names) + 1.5), sharey=True)
    for ax, mode in zip(axes, MODES, strict=True):
        p50 = [value(n, mode, lambda r: r["latency_ms"]["p50"]) for n in names]
        p99 = [value(n, mode, lambda r: r["latency_ms"]["p99"]) for n in names]
        ax.barh([y - height / 2 for y in ys], p50, height=height, label="p50")
        ax.barh([y + height / 2 for y in ys], p99, height=height, label="p99")
        ax.set_xscale("log")
        ax.set_title(f"latency, {mode}")
        ax.set_xlabel("ms (log scale, lower is better)")
        ax.legend(loc="lower right")
    axes[0].set_yticks(list(ys), names)
    axes[0].invert_yaxis()
    fig.tight_layout()
    written.append(RESULTS_DIR / "http_latency.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(names) + 1.5), sharey=True)
    for ax, mode in zip(axes, MODES, strict=True):
        for y, name in enumerate(names):
            r = results.get((name, mode))
            if not r or "error" in r or not r["shares"]:
                continue
            total = sum(r["shares"].values())
            left = 0.0
            for n in sorted(r["shares"].values(), reverse=True):
                ax.barh(y, n / total, left=left, height=0.6, edgecolor="white")
                left += n / total
        ax.axvline(0.5, color="black", linewidth=0.8, linestyle="--")
        ax.set_xlim(0, 1)
        ax.set_title(f"share of requests per worker, {mode}")
    axes[0].set_yticks(list(ys), names)
    axes[0].invert_yaxis()
    fig.tight_layout()
    written.append(RESULTS_DIR / "http_shares.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    return written


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
    per_run = args.warmup + args.duration + 2.0  # + start and stop
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
    print(results_table(results, shown))
    ratios = ratio_rows(results, shown)
    if ratios:
        print("\n== ratios (req/s) ==")
        rows = [
            [
                r["numerator"],
                r["denominator"],
                r["ratio"],
                "" if r["goal"] is None else f">= {r['goal']:g}",
                "" if r["pass"] is None else ("PASS" if r["pass"] else "FAIL"),
            ]
            for r in ratios
        ]
        print(format_table(["numerator", "denominator", "ratio", "goal", ""], rows))
    headers, matrix = reference_matrix(results, shown)
    if matrix:
        print("\n== pycluster / references (req/s ratio) ==")
        print(format_table(headers, matrix))
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")

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
