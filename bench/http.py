"""HTTP benchmark: pycluster's round-robin and shared policies against Node's cluster.

The same hello-world server (``hello world\\n``, status 200, Content-Length set) runs with
two workers under each variant below, and ``wrk`` loads it on 127.0.0.1 twice: with
keep-alive connections and with ``Connection: close`` (a new TCP connection per request,
which is where round-robin costs most, since the primary accepts every connection and
hands it to a worker). Variants:

* pycluster: an asyncio server (``cluster.aio.start_server``; also on uvloop) and
  ``cluster.http.ThreadingHTTPServer``, each under ``rr`` and ``none`` (the asyncio one
  also under ``SCHED_REUSEPORT``), and ``pycluster serve`` on a tiny ASGI app;
* Node.js ``cluster`` + ``http.createServer`` under ``rr`` and ``none``;
* for reference: uvicorn ``--workers 2`` and gunicorn ``-w 2`` (sync and gthread).

For every run: requests/s, p50/p99 latency (from wrk's own histogram), each worker's
share of the requests (each worker counts and writes its count when stopped; a fresh
server per mode, so the shares cover that mode's warm-up and run), and the CPU used by
the primary, the workers, wrk and anything else. Then a table of ratios against the goals
(round-robin with ``Connection: close`` >= 2x Node's round-robin and >= 0.9x our shared
policy; keep-alive round-robin >= 0.95x shared). Results go to ``bench/results/http.json``
and ``bench/results/http_*.png``.

Usage::

    python bench/http.py                 # every default variant, about 4.5 minutes
    python bench/http.py --quick         # 2 s per run
    python bench/http.py --only 'pyc-aio-*,node-*' --rounds 3
    python bench/http.py --list

A new variant is one more ``Variant`` in ``all_variants()`` (``_serve_variants`` is the
model: ``pycluster serve MODULE:APP``, skipped with its reason where it is missing;
``default=False`` keeps a variant out of the default run).
``wrk`` is installed from Debian's packages when missing (needs root). Before each run
the benchmark waits (up to ``--quiet-wait`` seconds) for other processes to leave the
CPU, and flags a run that was disturbed anyway.
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

from _common import RESULTS_DIR  # noqa: E402
from _http_report import MODES, plot, print_report, share_text  # noqa: E402
from _http_server import HOST, CpuSample, Server, cpu_split, wait_until_quiet  # noqa: E402

BENCH = _HERE
SERVERS = BENCH / "servers"
NODE_SERVER = BENCH / "node" / "http_server.js"
WRK_SCRIPT = BENCH / "wrk_report.lua"
PYTHON = sys.executable
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
    """pycluster's own servers, each under rr and none (the asyncio one also reuseport)."""
    servers = [
        ("pyc-aio", "pycluster asyncio", "pyc_asyncio.py", ["--loop", "asyncio"]),
        ("pyc-aio-uvloop", "pycluster asyncio+uvloop", "pyc_asyncio.py", ["--loop", "uvloop"]),
        ("pyc-thr", "pycluster ThreadingHTTPServer", "pyc_threading.py", []),
    ]
    variants = []
    for family, label, script, extra in servers:
        policies = ("rr", "none", "reuseport") if family == "pyc-aio" else ("rr", "none")
        for policy in policies:
            # PYCLUSTER_SCHED_POLICY only names rr and none: reuseport is a server option.
            options = ["--policy", "reuseport"] if policy == "reuseport" else []
            env = {} if policy == "reuseport" else {"PYCLUSTER_SCHED_POLICY": policy}

            def command(
                port: int, script: str = script, opts: list[str] = extra + options
            ) -> list[str]:
                argv = [PYTHON, str(SERVERS / script), "--port", str(port)]
                return [*argv, "--workers", str(workers), *opts]

            variants.append(
                Variant(
                    name=f"{family}-{policy}",
                    label=f"{label} ({policy})",
                    kind="pycluster",
                    family=family,
                    policy=policy,
                    command=command,
                    env=env,
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
    """``pycluster serve MODULE:APP`` on the same ASGI app as uvicorn, under rr and none.

    Skipped (with the reason) where the command is missing. Its HTTP layer is uvicorn's,
    so next to the ``uvicorn`` variant it shows what pycluster's supervision costs.
    """
    variants = []
    for policy in ("rr", "none"):

        def command(port: int, policy: str = policy) -> list[str]:
            argv = [PYTHON, "-m", "pycluster", "serve", "-w", str(workers), "--no-control"]
            argv += ["--log-level", "warning", "-b", f"{HOST}:{port}", "--policy", policy]
            return [*argv, "asgi_app:app"]

        variants.append(
            Variant(
                name=f"pyc-serve-{policy}",
                label=f"pycluster serve ASGI ({policy})",
                kind="pycluster",
                family="pyc-serve",
                policy=policy,
                command=command,
                ready_lines=workers,  # the app's lifespan startup line, one per worker
                requires=_needs_pycluster_serve,
            )
        )
    return variants


def all_variants(workers: int) -> list[Variant]:
    """Every known variant, in the order they run (pairs to compare run next to each other)."""
    return (
        _pycluster_variants(workers)
        + _serve_variants(workers)
        + _node_variants(workers)
        + _reference_variants(workers)
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


# --------------------------------------------------------------------------- one run


def measure(variant: Variant, mode: str, args: argparse.Namespace, wrk: str) -> dict[str, Any]:
    """Start the variant's server, warm it up, measure one wrk run in ``mode``, stop it.

    A fresh server per mode, so each worker's share covers that mode alone.
    """
    result: dict[str, Any] = {"variant": variant.name, "mode": mode}
    # Each run may wait for a quiet machine, within one budget for the whole invocation:
    # on a machine that is never quiet, waiting before every run would only add minutes.
    max_wait = min(args.quiet_wait, args.quiet_budget)
    if max_wait > 0:
        waited = wait_until_quiet(QUIET_PCT, max_wait)
        args.quiet_budget -= waited
        result["waited_for_quiet_s"] = waited
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        server = Server(variant, Path(tmp), cwd=SERVERS)
        counts: dict[str, int] = {}
        try:
            server.start()
            result["checks"] = server.wait_ready(timeout=30.0)
            if args.warmup > 0:
                run_wrk(wrk, server.port, mode, args.warmup, args.threads, args.connections)
            assert server.proc is not None
            cpu_before = CpuSample.take()
            started = time.monotonic()
            report = run_wrk(wrk, server.port, mode, args.duration, args.threads, args.connections)
            elapsed = time.monotonic() - started
            cpu = cpu_split(cpu_before, CpuSample.take(), server.proc.pid, report["cpu_s"])
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


def _sum_shares(per_round: list[dict[str, int]]) -> dict[str, int]:
    """Add up the worker counts of several rounds.

    Workers named by id (``pyc-w1``, ``node-w2``) are the same slot in every round and
    add up by name. Workers named by pid are new processes each round, so they add up
    by rank instead (the busiest of each round together, and so on).
    """
    if all(k.startswith(("pyc-w", "node-w")) for shares in per_round for k in shares):
        total: dict[str, int] = {}
        for shares in per_round:
            for worker, n in shares.items():
                total[worker] = total.get(worker, 0) + n
        return total
    by_rank: dict[str, int] = {}
    for shares in per_round:
        for rank, n in enumerate(sorted(shares.values(), reverse=True), 1):
            by_rank[f"rank{rank}"] = by_rank.get(f"rank{rank}", 0) + n
    return by_rank


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
    merged["shares"] = _sum_shares([r["shares"] for r in good])
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
        f"under {QUIET_PCT:g}%% CPU, at most 60 s in all; 0: don't wait (10)",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    args = parser.parse_args(argv)
    args.quiet_budget = 60.0
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
