"""HTTP benchmark: every HTTP figure of the open issue, measured in one run, with verdicts.

The same hello-world response (``hello world\\n``, status 200, Content-Length set) from
two workers under each variant below. ``wrk -t1 -c50`` (the issue's set-up) loads it on
127.0.0.1 in two modes, keep-alive and ``Connection: close`` (a new TCP connection per
request, where round robin costs most: the primary accepts every connection and hands
it to a worker); a third mode, ``fresh``, opens exactly 2,000 new connections (8 at a
time, one ``GET /fresh`` each, from a small asyncio client in this process) and reads
from the workers' own counters how they were split. Variants:

* pycluster: an asyncio server (``cluster.aio.start_server``, also on uvloop) and
  ``cluster.http.ThreadingHTTPServer`` under ``rr`` and ``none`` (the asyncio one also
  under ``SCHED_REUSEPORT``); ``pycluster serve MODULE:APP`` on an ASGI and on a WSGI
  app, under ``rr`` and ``none``, called with its defaults (whatever serve picks per
  interface and policy is what is measured);
* Node.js ``cluster`` + ``http.createServer`` under ``rr`` and ``none``;
* peers: uvicorn ``--workers 2 --loop uvloop --http httptools``, gunicorn ``-w 2``
  (sync, and gthread for context), granian ``--workers 2`` (ASGI and WSGI: the
  stretch anchor, no goal);
* the hand-off floor (``floor/hop.c``, compiled on first use; skipped without a C
  compiler): a primary in C that only accepts, passes each descriptor in one
  ``sendmsg`` and closes it, with no acknowledgement, window or safety, feeding plain
  asyncio workers that run ``pyc-aio``'s handler, under ``rr`` and ``none``, and the
  same primary in Python (``floor/hop.py``, ``floor-py-rr``). Their ratios are context:
  what a hand-off costs on the machine, whatever the primary is written in, and (with
  ``pyc-aio-rr`` against ``floor-py-rr``) what pycluster's guarantees add to it.

For every run: requests/s, p50/p99 latency (wrk's histogram), how the 50 keep-alive
connections were placed (``ss -tnp`` half-way through the run: which process holds
each), each worker's share of the requests (each worker counts and writes its count when stopped; a fresh server per
mode, so the shares cover that mode's warm-up and run) and the CPU used by the primary,
the workers, wrk and anything else (a run where other processes took more than 15 % of
a core is flagged "busy machine"). Then the goals, each PASS or FAIL:

* round robin, ``Connection: close``: >= 2x Node's rr, >= 0.85x our shared policy;
* keep-alive: round robin >= 0.95x shared;
* the busiest of the 2 workers serves <= 55 % of the keep-alive requests, for every
  pycluster server under rr and under none (Node's shares shown for context);
* 2,000 fresh connections under rr: every worker's share within 2 percentage points of
  an even split (48-52 % with two workers), read from the workers' counts of
  ``/fresh`` requests, so the probes and warm-ups do not enter it;
* ``pycluster serve``: ASGI >= 1x uvicorn, WSGI >= 1x gunicorn sync, both policies,
  both modes; granian's figures in the same table as a ratio.

Results go to ``bench/results/http.json`` and ``bench/results/http_{rps,latency,shares,
fresh}.png``.

Usage::

    python bench/http.py                 # everything, about 5 minutes
    python bench/http.py --quick         # 2 s per wrk run
    python bench/http.py --only 'pyc-aio-*,node-*' --rounds 3
    python bench/http.py --only 'pyc-serve-*' --modes fresh
    python bench/http.py --list

A new variant is one more ``Variant`` in ``all_variants()`` (``_serve_variants`` is the
model; ``fresh=True`` adds the fresh-connection split, which needs the server to count
``/fresh`` requests apart as the apps in servers/ do; ``default=False`` keeps a variant
out of the default run). ``wrk`` is installed from Debian's packages when missing
(needs root). Before each run the benchmark waits (up to ``--quiet-wait`` seconds, 60 s
in all) for other processes to leave the CPU. Ctrl-C or SIGTERM stops the server being
measured, and every process it started, before the benchmark exits.
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
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
from _http_report import (  # noqa: E402
    ALL_MODES,
    FRESH,
    markdown,
    plot,
    print_report,
    share_text,
)
from _http_server import (  # noqa: E402
    HOST,
    CpuSample,
    Server,
    cpu_split,
    fresh_connections,
    wait_until_quiet,
)

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


@dataclass(frozen=True)
class Variant:
    """One server set-up to measure.

    ``command(port)`` gives the argv; it runs in bench/servers with ``env`` added to the
    environment. The benchmark starts measuring once ``ready_lines`` lines starting with
    ``BENCH-READY`` have appeared in the server's output (0: as soon as it answers) and a
    GET is answered. ``family`` and ``policy`` pair variants for the goal table;
    ``fresh`` adds the fresh-connection split (the ``fresh`` mode) to its runs.
    """

    name: str
    label: str
    kind: str  # "pycluster", "node" or "reference"
    family: str
    policy: str | None
    command: Callable[[int], list[str]]
    env: dict[str, str] = field(default_factory=dict)
    ready_lines: int = 1
    fresh: bool = False
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
                    fresh=policy == "rr",
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
            fresh=policy == "rr",  # for context: Node's own round-robin split
            requires=_needs_node,
        )
        for policy in ("rr", "none")
    ]


FLOOR_SOURCE = BENCH / "floor" / "hop.c"
FLOOR_BINARY = BENCH / ".build" / "floor_hop"
FLOOR_PYTHON = BENCH / "floor" / "hop.py"


@functools.cache
def _build_floor() -> str | None:
    """Compile the hand-off floor's primary (bench/floor/hop.c); why not, or None."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return "no C compiler (cc or gcc) on PATH"
    FLOOR_BINARY.parent.mkdir(exist_ok=True)
    done = subprocess.run(
        [compiler, "-O2", "-o", str(FLOOR_BINARY), str(FLOOR_SOURCE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        return f"{FLOOR_SOURCE.name} does not compile: {done.stderr.strip()[-300:]}"
    return None


def _floor_variants(workers: int) -> list[Variant]:
    """The floor of a hand-off: a primary in C that only accepts, passes and closes.

    Its workers run the same asyncio handler as ``pyc-aio``'s, without pycluster. Its
    rr against its none is what any hand-off costs on this machine (see hop.c): the
    goal table sets pycluster's own ratios beside it.
    """

    def command(port: int, policy: str) -> list[str]:
        worker = str(SERVERS / "floor_worker.py")
        return [str(FLOOR_BINARY), str(port), str(workers), policy, PYTHON, worker]

    return [
        Variant(
            name=f"floor-{policy}",
            label=f"hand-off floor: C primary, asyncio workers ({policy})",
            kind="floor",
            family="floor",
            policy=policy,
            command=functools.partial(command, policy=policy),
            ready_lines=workers,
            requires=_build_floor,
        )
        for policy in ("rr", "none")
    ] + [
        Variant(
            name="floor-py-rr",
            label="hand-off floor in Python: hop.py primary, asyncio workers (rr)",
            kind="floor",
            family="floor",
            policy="rr",
            command=lambda port: [
                PYTHON,
                str(FLOOR_PYTHON),
                str(port),
                str(workers),
                "rr",
                PYTHON,
                str(SERVERS / "floor_worker.py"),
            ],
            ready_lines=workers,
        )
    ]


def _needs_modules(*modules: str) -> Callable[[], str | None]:
    """A ``requires`` check: every module must be importable by PYTHON."""

    def check() -> str | None:
        for module in modules:
            reason = _module_reason(module)
            if reason:
                return reason
        return None

    return check


def _reference_variants(workers: int) -> list[Variant]:
    """uvicorn, gunicorn and granian with their own multi-process supervisors.

    uvicorn runs its fastest set-up (uvloop, httptools), the bar the issue sets for
    ``pycluster serve`` ASGI; gunicorn's sync workers are the bar for WSGI; granian (a
    Rust HTTP server) is the stretch anchor for both interfaces, with no goal.
    """

    def uvicorn(port: int) -> list[str]:
        argv = [PYTHON, "-m", "uvicorn", "asgi_app:app", "--app-dir", str(SERVERS)]
        argv += ["--host", HOST, "--port", str(port), "--workers", str(workers)]
        argv += ["--log-level", "warning", "--no-access-log"]
        # Named, not left to "auto": the goal is against exactly this set-up, and a
        # missing module must skip the variant rather than measure a slower one.
        return [*argv, "--loop", "uvloop", "--http", "httptools"]

    def gunicorn(worker_class: str, *extra: str) -> Callable[[int], list[str]]:
        def command(port: int) -> list[str]:
            argv = [PYTHON, "-m", "gunicorn", "-c", str(SERVERS / "gunicorn_conf.py")]
            argv += ["--chdir", str(SERVERS), "-w", str(workers), "-k", worker_class]
            return [*argv, *extra, "-b", f"{HOST}:{port}", "wsgi_app:app"]

        return command

    def granian(interface: str, target: str) -> Callable[[int], list[str]]:
        def command(port: int) -> list[str]:
            argv = [PYTHON, "-m", "granian", "--interface", interface]
            argv += ["--workers", str(workers), "--host", HOST, "--port", str(port)]
            return [*argv, "--log-level", "warning", "--no-ws", target]

        return command

    return [
        Variant(
            name="uvicorn",
            label="uvicorn --workers (uvloop, httptools)",
            kind="reference",
            family="uvicorn",
            policy=None,
            command=uvicorn,
            ready_lines=workers,
            requires=_needs_modules("uvicorn", "uvloop", "httptools"),
        ),
        Variant(
            name="gunicorn-sync",
            label="gunicorn sync",
            kind="reference",
            family="gunicorn-sync",
            policy=None,
            command=gunicorn("sync"),
            ready_lines=workers,
            requires=_needs_modules("gunicorn"),
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
            requires=_needs_modules("gunicorn"),
        ),
        Variant(
            name="granian-asgi",
            label="granian --workers, ASGI",
            kind="reference",
            family="granian-asgi",
            policy=None,
            command=granian("asgi", "asgi_app:app"),
            ready_lines=workers,  # the app's lifespan startup line, one per worker
            requires=_needs_modules("granian"),
        ),
        Variant(
            name="granian-wsgi",
            label="granian --workers, WSGI",
            kind="reference",
            family="granian-wsgi",
            policy=None,
            command=granian("wsgi", "wsgi_app:app"),
            # The app announces itself on import; granian runs no exit hook in its
            # workers, so this variant has no worker shares.
            env={"BENCH_WSGI_STANDALONE": "1"},
            ready_lines=workers,
            requires=_needs_modules("granian"),
        ),
    ]


def _serve_variants(workers: int) -> list[Variant]:
    """``pycluster serve MODULE:APP`` on the ASGI and the WSGI app, under rr and none.

    The same app modules as uvicorn, gunicorn and granian, and the command a user would
    type: no option but the bind, the policy, the interface and quiet logs, so whatever
    serve chooses per interface and policy is what is measured. Skipped (with the
    reason) where the command is missing.
    """
    variants = []
    for interface, target, env in (
        ("asgi", "asgi_app:app", {}),
        # The WSGI app announces itself on import and writes its count at exit.
        ("wsgi", "wsgi_app:app", {"BENCH_WSGI_STANDALONE": "1"}),
    ):
        for policy in ("rr", "none"):

            def command(
                port: int, policy: str = policy, interface: str = interface, target: str = target
            ) -> list[str]:
                argv = [PYTHON, "-m", "pycluster", "serve", "-w", str(workers), "--no-control"]
                argv += ["--log-level", "warning", "-b", f"{HOST}:{port}", "--policy", policy]
                return [*argv, "--interface", interface, target]

            variants.append(
                Variant(
                    name=f"pyc-serve-{interface}-{policy}",
                    label=f"pycluster serve {interface.upper()} ({policy})",
                    kind="pycluster",
                    family=f"pyc-serve-{interface}",
                    policy=policy,
                    command=command,
                    env=env,
                    ready_lines=workers,  # one line per worker, from the app
                    fresh=policy == "rr",
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
        + _floor_variants(workers)
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


def connection_split(port: int) -> list[int] | None:
    """The established connections to ``port`` per process, largest first (``ss -tnp``).

    Which process holds each client connection, read from the kernel while wrk runs: how
    the connections were placed, apart from how fast each worker then serves them. A
    connection several processes hold (a descriptor not yet closed after a hand-off)
    counts for none. None when ``ss`` is missing or fails.
    """
    ss = shutil.which("ss")
    if ss is None:
        return None
    argv = [ss, "-tnpH", "state", "established", f"( sport = :{port} )"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    per_pid: dict[str, int] = {}
    for line in done.stdout.splitlines():
        pids = set(re.findall(r"pid=(\d+)", line))
        if len(pids) == 1:
            pid = pids.pop()
            per_pid[pid] = per_pid.get(pid, 0) + 1
    return sorted(per_pid.values(), reverse=True)


# --------------------------------------------------------------------------- one run


def rotated(
    runs: list[tuple[Variant, str]], round_no: int, rounds: int
) -> list[tuple[Variant, str]]:
    """The runs of round ``round_no``: whole families rotated, so that over several rounds
    no family always runs first (the first run of a round measured up to 10 % low) while
    the variants of one family still run next to each other."""
    families: list[list[tuple[Variant, str]]] = []
    for run in runs:
        if families and families[-1][0][0].family == run[0].family:
            families[-1].append(run)
        else:
            families.append([run])
    shift = round_no * len(families) // max(rounds, 1)
    return [run for family in families[shift:] + families[:shift] for run in family]


def measure(variant: Variant, mode: str, args: argparse.Namespace, wrk: str) -> dict[str, Any]:
    """Start the variant's server, measure one run in ``mode``, stop it (always).

    ``keep-alive`` and ``close``: a wrk warm-up, then the measured wrk run. ``fresh``:
    exactly ``--fresh-connections`` new connections from this process, one request
    each (see ``fresh_connections``), and how the workers split them. A fresh server
    per mode, so each worker's share covers that mode alone.
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
        try:
            server.start()
            result["checks"] = server.wait_ready(timeout=30.0)
            assert server.proc is not None
            if mode == FRESH:
                cpu_before = CpuSample.take()
                fresh = fresh_connections(
                    server.port, args.fresh_connections, args.fresh_concurrency
                )
                cpu = cpu_split(cpu_before, CpuSample.take(), server.proc.pid)
                elapsed = fresh.seconds
            else:
                if args.warmup > 0:
                    run_wrk(wrk, server.port, mode, args.warmup, args.threads, args.connections)
                cpu_before = CpuSample.take()
                started = time.monotonic()
                placed: list[list[int] | None] = []
                # Half-way through a keep-alive run, where each connection is held.
                sampler = threading.Timer(
                    args.duration / 2, lambda: placed.append(connection_split(server.port))
                )
                if mode == "keep-alive":
                    sampler.start()
                report = run_wrk(
                    wrk, server.port, mode, args.duration, args.threads, args.connections
                )
                elapsed = time.monotonic() - started
                if mode == "keep-alive":
                    sampler.join()
                if placed and placed[0]:
                    result["connections_per_worker"] = placed[0]
                cpu = cpu_split(cpu_before, CpuSample.take(), server.proc.pid, report["cpu_s"])
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            result["error"] = str(exc)
            server.stop()
            return result
        except BaseException:
            server.stop()  # Ctrl-C, SIGTERM, a bug: no server outlives the benchmark
            raise
        counts, fresh_counts = server.stop()
    cpu_pct = {
        "primary": 100 * cpu.primary / elapsed,
        "workers": 100 * cpu.workers / elapsed,
        "other": 100 * cpu.other / elapsed,
    }
    if mode == FRESH:
        counted = sum(fresh_counts.values())
        if fresh.opened < args.fresh_connections:
            result["error"] = (
                f"only {fresh.opened:,} of {args.fresh_connections:,} connections opened "
                f"in the time allowed ({fresh.errors or 'no errors'})"
            )
            return result
        # A worker that recorded nothing counts as 0 of the split, not as absent.
        per_worker = list(fresh_counts.values())
        per_worker += [0] * (args.workers - len(per_worker))
        even = 1 / len(per_worker)
        result.update(
            connections=fresh.opened,
            answered=fresh.answered,
            errors=fresh.errors,
            error_total=sum(fresh.errors.values()),
            seconds=fresh.seconds,
            rps=fresh.opened / fresh.seconds if fresh.seconds else 0.0,
            concurrency=args.fresh_concurrency,
            shares=fresh_counts,
            counted=counted,
            # The largest distance of a worker's share from an even split, as a fraction.
            max_deviation=max(abs(n / counted - even) for n in per_worker) if counted else None,
            cpu_pct=cpu_pct,
            other_processes=cpu.other_top,
        )
        return result
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
        cpu_pct={**cpu_pct, "wrk": 100 * report["cpu_s"] / elapsed},
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
    if "latency_ms" in good[0]:
        merged["latency_ms"] = {
            k: statistics.median(r["latency_ms"][k] for r in good) for k in good[0]["latency_ms"]
        }
    if "max_deviation" in good[0]:
        # The goal holds for every run of 2,000 connections: the worst round decides.
        devs = [r["max_deviation"] for r in good]
        merged["max_deviation"] = None if None in devs else max(devs)
        for key in ("connections", "answered", "counted"):
            merged[key] = sum(r[key] for r in good)
    merged["cpu_pct"] = {
        k: statistics.median(r["cpu_pct"][k] for r in good) for k in good[0]["cpu_pct"]
    }
    merged["error_total"] = sum(r["error_total"] for r in good)
    merged["shares"] = _sum_shares([r["shares"] for r in good])
    placed = [r.get("connections_per_worker") for r in good]
    if all(placed) and len({len(p) for p in placed if p}) == 1:
        merged["connections_per_worker"] = [sum(ns) for ns in zip(*placed, strict=True)]
    merged["rounds"] = rounds
    return merged


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description="HTTP benchmark: pycluster round-robin/shared vs Node cluster, uvicorn, "
        "gunicorn, granian, with the open issue's goals (see the module docstring)."
    )
    parser.add_argument("--only", help="comma-separated variant names or globs (see --list)")
    parser.add_argument("--list", action="store_true", help="list the variants and exit")
    parser.add_argument("--quick", action="store_true", help="2 s runs, 1 s warm-up")
    # wrk takes whole seconds only ("0.5s" is an error), hence int.
    parser.add_argument("--duration", type=int, default=5, help="seconds per run (5)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up seconds, 0: none (1)")
    # The set-up: wrk -t1 -c50 (one client thread leaves the other core to the server).
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (50)")
    parser.add_argument("--workers", type=int, default=2, help="workers per server (2)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat everything; medians (1)")
    parser.add_argument(
        "--modes",
        default=",".join(ALL_MODES),
        help="keep-alive, close (wrk) and fresh (the fresh-connection split, for the "
        "variants that have it); default: all three",
    )
    parser.add_argument(
        "--fresh-connections",
        type=int,
        default=2000,
        help="new connections, one request each, in the fresh mode (2000)",
    )
    parser.add_argument(
        "--fresh-concurrency",
        type=int,
        default=8,
        help="of those, how many are open at once (8)",
    )
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
    parser.add_argument(
        "--from-json",
        action="store_true",
        help="measure nothing: report again from bench/results/http.json (tables, goals, "
        "http.md, plots)",
    )
    args = parser.parse_args(argv)
    args.quiet_budget = 60.0
    if args.quick:
        args.duration, args.warmup = 2, min(args.warmup, 1)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = set(args.modes) - set(ALL_MODES)
    if bad:
        parser.error(f"--modes: unknown {sorted(bad)}; choose from {', '.join(ALL_MODES)}")
    if args.fresh_connections < 1 or args.fresh_concurrency < 1:
        parser.error("--fresh-connections and --fresh-concurrency must be at least 1")
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


def _progress_line(r: dict[str, Any]) -> str:
    """One run's result as the line printed while the benchmark goes on."""
    if "error" in r:
        return "FAILED: " + str(r["error"]).splitlines()[0]
    if r["mode"] == FRESH:
        counts = "/".join(str(r["shares"][k]) for k in sorted(r["shares"]))
        dev = r["max_deviation"]
        return (
            f"{r['connections']:,} connections in {r['seconds']:.1f} s, "
            f"{r['answered']:,} answered, split {counts or '-'}"
            + ("" if dev is None else f" (max {100 * dev:.1f} points from even)")
        )
    return (
        f"{r['rps']:>10,.0f} req/s  p50 {r['latency_ms']['p50']:.2f} ms  "
        f"p99 {r['latency_ms']['p99']:.2f} ms  shares {share_text(r['shares'])}"
    )


def _stop_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM ends the benchmark as Ctrl-C does, so every server is stopped first."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected variants and report; exit status 1 if any run failed."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    variants = all_variants(args.workers)
    if args.list:
        for v in variants:
            flag = "" if v.default else "  (only with --only)"
            print(f"{v.name:20} {v.label}{flag}")
        return 0
    if args.from_json:
        report(json.loads((RESULTS_DIR / "http.json").read_text()), variants, not args.no_plots)
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
    runs = [(v, m) for v in runnable for m in args.modes if m != FRESH or v.fresh]
    per_run = args.warmup + args.duration + 2.5  # + quiet check, start and stop
    estimate = sum(4.0 if m == FRESH else per_run for _, m in runs) * args.rounds
    print(
        f"{len(runs)} runs ({len(runnable)} variants, modes {', '.join(args.modes)}) x "
        f"{args.rounds} round(s), wrk -t{args.threads} -c{args.connections} "
        f"-d{args.duration:g}s, {args.fresh_connections} fresh connections "
        f"{args.fresh_concurrency} at a time: about {estimate / 60:.1f} min",
        flush=True,
    )

    rounds: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for round_no in range(args.rounds):
        for v, mode in rotated(runs, round_no, args.rounds):
            r = measure(v, mode, args, wrk)
            r["round"] = round_no
            rounds.setdefault((v.name, mode), []).append(r)
            print(f"  {v.name:22} {mode:10} {_progress_line(r)}", flush=True)
    results = {key: aggregate(rs) for key, rs in rounds.items()}

    out_json = RESULTS_DIR / "http.json"
    if args.merge and out_json.exists():
        previous = json.loads(out_json.read_text())
        for r in previous.get("runs", []):
            key = (r["variant"], r["mode"])
            if key not in results:
                results[key] = {**r, "stale": r.get("stale") or previous.get("date", "earlier")}
    known = {v.name for v in variants}
    shown = [v for v in variants if any((v.name, m) in results for m in ALL_MODES)]
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": tool_versions(),
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "wrk_threads": args.threads,
            "wrk_connections": args.connections,
            "workers": args.workers,
            "rounds": args.rounds,
            "fresh_connections": args.fresh_connections,
            "fresh_concurrency": args.fresh_concurrency,
        },
        "variants": {v.name: v.label for v in shown},
        "runs": [r for (name, _), r in sorted(results.items()) if name in known],
        "skipped": skipped,
    }
    report(record, variants, plots=not args.no_plots)
    failed = any("error" in r and not r.get("stale") for r in results.values())
    return 1 if failed else 0


def report(record: dict[str, Any], variants: list[Variant], plots: bool) -> None:
    """Print the tables and goals of a run; write http.json (goals added), http.md, plots."""
    results = {(r["variant"], r["mode"]): r for r in record["runs"]}
    shown = [v for v in variants if v.name in record["variants"]]
    for r in results.values():
        # A worker killed before it wrote its count (a server whose graceful stop
        # overran 5 s) leaves shares that are not the split: say so, judge nothing on them.
        shares = r.get("shares") or {}
        if 0 < len(shares) < record["settings"]["workers"]:
            r["missing_counts"] = record["settings"]["workers"] - len(shares)
    print()
    record["goals"] = print_report(results, shown, record["skipped"])
    out_json = RESULTS_DIR / "http.json"
    out_json.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {out_json.relative_to(BENCH.parent)}")
    settings = record["settings"]
    intro = (
        f"`bench/http.py` run of {record['date']} (pycluster "
        f"{record['versions']['pycluster_commit']}): {settings['workers']} workers, "
        f"`wrk -t{settings['wrk_threads']} -c{settings['wrk_connections']}`, "
        f"{settings['duration_s']} s per run after {settings['warmup_s']} s of warm-up, "
        f"{settings.get('fresh_connections', 0):,} fresh connections "
        f"{settings.get('fresh_concurrency', 0)} at a time, {record['machine']['cpus']} CPUs."
    )
    if settings.get("rounds", 1) > 1:
        intro += (
            f" Every run {settings['rounds']} times, each with a fresh server: medians of the"
            " rates and latencies; worker shares, connection placements and fresh"
            " connections summed over the rounds."
        )
    out_md = RESULTS_DIR / "http.md"
    out_md.write_text(markdown(results, shown, record["goals"], intro))
    print(f"wrote {out_md.relative_to(BENCH.parent)}")
    if plots:
        for path in plot(results, shown):
            print(f"wrote {path.relative_to(BENCH.parent)}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        # measure() has stopped the server of the run it was in (see Server.stop).
        print("\ninterrupted: every server started was stopped", file=sys.stderr)
        sys.exit(130)
