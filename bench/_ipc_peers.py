"""The Python peers of bench/ipc.py: one measurement per process, numbers as JSON.

bench/ipc.py starts this script once per measurement, in a fresh process, so that a
peer that hangs or crashes costs only its own numbers, and so that no state (an event
loop, pycluster's module-level cluster) leaks from one measurement into the next::

    python bench/_ipc_peers.py --role mp-rtt   --out FILE [--rounds R --seconds S]
    python bench/_ipc_peers.py --role mp-fork  --out FILE [--counts 2,8 --reps 5]
    python bench/_ipc_peers.py --role pyc-rtt  --out FILE --serialization json|advanced
    python bench/_ipc_peers.py --role pyc-fork --out FILE

The same file is also the program that pycluster's workers run (a worker re-executes its
primary's script with the same arguments) and the module that multiprocessing's "spawn"
children import, which is why everything heavier than the standard library's basics is
imported inside the functions that need it: each child pays only for what it uses, as a
user's small program would.

The "rtt" roles measure, in this order: the idle worker's resident memory once it is up,
small-message round trips per second, and 1 MiB string round trips per second, each with
the CPU time both processes spent on them. The "fork" roles measure the wall time from the
first start call until every child has said it is up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import SpawnContext

# Generous: a worker that is not up after this long is broken, not slow.
ONLINE_TIMEOUT_S = 30.0
# Round trips thrown away before measuring (allocator and buffer growth, first imports).
SMALL_WARMUP = 200
BIG_WARMUP = 3
PAYLOAD_BYTES = 1 << 20


def small_message(n: int) -> dict[str, Any]:
    """The small message of the ping-pong; the same shape as the Node peer's."""
    return {"cmd": "ping", "n": n}


def is_small_echo(message: object, n: int) -> bool:
    """Whether *message* is the echo of small message number *n*."""
    return isinstance(message, dict) and message.get("n") == n


def make_payload(size: int = PAYLOAD_BYTES) -> str:
    """An ASCII string of *size* characters (one byte each in UTF-8 and in JSON)."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return (alphabet * (size // len(alphabet) + 1))[:size]


def read_rss_bytes(pid: int) -> int | None:
    """Resident memory of *pid* from /proc/PID/status (VmRSS), or None if unknown."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def move_to_cpu(cpu: int | None) -> None:
    """Pin every thread of this process to *cpu* (the "split" runs); no-op for None.

    The job starts pinned to the other CPU, so the child it started (and its threads)
    stay there: primary and worker then run on one CPU each, every round trip crossing
    between them.
    """
    if cpu is None:
        return
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), {cpu})


def cpu_ticks(pids: list[int]) -> int:
    """CPU time (user + system, in clock ticks) used so far by the processes *pids*."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            text = f.read()
        # Fields after the command name, which may hold spaces: utime and stime are the
        # 14th and 15th fields of the whole line.
        fields = text[text.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total


class Meter:
    """Counts completed round trips in fixed-length windows after a warm-up.

    Several short windows instead of one long one let the report show the spread, so a
    single noisy second on a 2-core machine is visible rather than averaged away. The
    CPU time that the primary and the worker (*pids*) spend over the measured windows
    is kept too: unlike round trips per second, CPU per round trip hardly changes when
    other programs share the machine.
    """

    def __init__(self, warmup: int, rounds: int, seconds: float, pids: list[int]) -> None:
        self.warmup = warmup
        self.rounds = rounds
        self.seconds = seconds
        self.pids = pids
        self.rates: list[float] = []
        self.measured = 0
        self.cpu_ticks = 0
        self._done = 0
        self._in_window = 0
        self._window_start = 0.0

    def tick(self) -> bool:
        """Record one completed round trip; True once every window is measured."""
        self._done += 1
        if self._done <= self.warmup:
            if self._done == self.warmup:
                self.cpu_ticks = -cpu_ticks(self.pids)
                self._window_start = time.perf_counter()
            return False
        self._in_window += 1
        self.measured += 1
        elapsed = time.perf_counter() - self._window_start
        if elapsed >= self.seconds:
            self.rates.append(self._in_window / elapsed)
            self._in_window = 0
            self._window_start = time.perf_counter()
        if len(self.rates) < self.rounds:
            return False
        self.cpu_ticks += cpu_ticks(self.pids)
        return True

    def result(self, prefix: str) -> dict[str, list[float]]:
        """The numbers of a finished measurement, keyed for bench/ipc.py."""
        return {
            f"{prefix}_rtt_per_s": self.rates,
            # One entry per measurement, so that runs merge by concatenation.
            f"{prefix}_cpu_ticks": [self.cpu_ticks],
            f"{prefix}_measured": [self.measured],
        }


# --- multiprocessing.Pipe peer ---------------------------------------------------------


def _mp_echo(conn: Connection) -> None:
    """multiprocessing child: say it is up, then echo every message until EOF."""
    conn.send("up")
    try:
        while True:
            conn.send(conn.recv())
    except EOFError:
        pass


def _mp_up(conn: Connection) -> None:
    """multiprocessing child for start-up timing: say it is up, then wait for EOF."""
    conn.send("up")
    try:
        conn.recv()
    except EOFError:
        pass


def _mp_ping_pong(
    conn: Connection,
    make: Callable[[int], object],
    is_echo: Callable[[object, int], bool],
    meter: Meter,
) -> Meter:
    """Sequential ping-pong over a Pipe until *meter* is done; returns it."""
    n = 0
    while True:
        conn.send(make(n))
        if not is_echo(conn.recv(), n):
            raise RuntimeError(f"multiprocessing child echoed something else for {n}")
        n += 1
        if meter.tick():
            return meter


def _mp_stop(procs: list[Any], conns: list[Connection]) -> None:
    """Close the pipes (the children then exit by themselves) and reap every child."""
    for conn in conns:
        conn.close()
    for proc in procs:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()


def _mp_start(ctx: SpawnContext, target: Callable[[Connection], None]) -> tuple[Any, Connection]:
    """Start one spawn child running *target* on its end of a fresh duplex Pipe."""
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(child,), daemon=True)
    proc.start()
    # Our copy of the child's end must go, or EOF never reaches the child.
    child.close()
    return proc, parent


def mp_rtt(opts: argparse.Namespace) -> dict[str, Any]:
    """RSS, small and 1 MiB round trips between this process and a Pipe child."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    proc, conn = _mp_start(ctx, _mp_echo)
    try:
        if not conn.poll(ONLINE_TIMEOUT_S):
            raise TimeoutError("multiprocessing child did not start")
        conn.recv()
        move_to_cpu(opts.primary_cpu)
        time.sleep(opts.settle)
        rss = read_rss_bytes(proc.pid)
        pids = [os.getpid(), proc.pid]
        small = _mp_ping_pong(
            conn, small_message, is_small_echo, Meter(SMALL_WARMUP, opts.rounds, opts.seconds, pids)
        )
        payload = make_payload()
        big = _mp_ping_pong(
            conn,
            lambda _n: payload,
            lambda message, _n: message == payload,
            Meter(BIG_WARMUP, opts.rounds, opts.seconds, pids),
        )
    finally:
        _mp_stop([proc], [conn])
    return {
        "worker_rss_bytes": rss,
        **small.result("small"),
        **big.result("big"),
        "payload_bytes": len(payload),
    }


def _mp_start_all(ctx: SpawnContext, n: int) -> float:
    """Seconds from the first Process.start() until all *n* children said they are up."""
    from multiprocessing.connection import wait

    procs: list[Any] = []
    conns: list[Connection] = []
    t0 = time.perf_counter()
    try:
        for _ in range(n):
            proc, conn = _mp_start(ctx, _mp_up)
            procs.append(proc)
            conns.append(conn)
        pending = list(conns)
        deadline = t0 + ONLINE_TIMEOUT_S
        while pending:
            ready = wait(pending, timeout=max(0.0, deadline - time.perf_counter()))
            if not ready:
                raise TimeoutError(f"{len(pending)} multiprocessing children did not start")
            for conn in [c for c in pending if c in ready]:
                conn.recv()
                pending.remove(conn)
        return time.perf_counter() - t0
    finally:
        _mp_stop(procs, conns)


def mp_fork(opts: argparse.Namespace) -> dict[str, Any]:
    """Start-up time of *n* multiprocessing "spawn" children, *reps* times per count."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    return {
        "fork_online_s": {
            str(n): [_mp_start_all(ctx, n) for _ in range(opts.reps)] for n in opts.counts
        }
    }


# --- pycluster peer --------------------------------------------------------------------


def pyc_worker() -> None:
    """pycluster worker program: echo every message back to the primary."""
    import pycluster as cluster

    me = cluster.worker
    assert me is not None  # only called in a worker

    def echo(message: object, handle: object = None) -> None:
        me.send(message)

    me.on("message", echo)
    # Listeners run on the channel thread; the main thread only has to stay alive.
    me.wait_disconnected()


async def _pyc_online(cluster: Any, workers: list[Any]) -> None:
    """Wait until every worker in *workers* has emitted 'online'."""
    import asyncio

    loop = asyncio.get_running_loop()
    all_online: asyncio.Future[None] = loop.create_future()
    pending = set(workers)

    def on_online(worker: Any) -> None:
        pending.discard(worker)
        if not pending and not all_online.done():
            all_online.set_result(None)

    cluster.on("online", on_online)
    try:
        pending -= {w for w in workers if w.state == "online"}
        if not pending:
            return
        await asyncio.wait_for(all_online, ONLINE_TIMEOUT_S)
    finally:
        cluster.off("online", on_online)


async def _pyc_ping_pong(
    worker: Any,
    make: Callable[[int], object],
    is_echo: Callable[[object, int], bool],
    meter: Meter,
) -> Meter:
    """Sequential ping-pong with one pycluster worker until *meter* is done; returns it.

    The next message is sent from inside the 'message' listener, as a Node program
    would do it, so no extra event-loop hop is measured.
    """
    import asyncio

    loop = asyncio.get_running_loop()
    done: asyncio.Future[Meter] = loop.create_future()
    sent = 0

    def on_message(message: object, handle: object = None) -> None:
        nonlocal sent
        if done.done():
            return
        if not is_echo(message, sent - 1):
            done.set_exception(RuntimeError(f"worker echoed something else for {sent - 1}"))
        elif meter.tick():
            done.set_result(meter)
        else:
            worker.send(make(sent))
            sent += 1

    worker.on("message", on_message)
    try:
        worker.send(make(0))
        sent = 1
        budget = ONLINE_TIMEOUT_S + meter.rounds * meter.seconds * 10
        return await asyncio.wait_for(done, budget)
    finally:
        worker.off("message", on_message)


async def _pyc_stop(cluster: Any, workers: list[Any]) -> None:
    """Kill *workers* and wait until the cluster has no worker left."""
    import asyncio

    for worker in workers:
        worker.kill()
    await asyncio.wait_for(cluster.wait_closed(), ONLINE_TIMEOUT_S)


async def pyc_rtt(opts: argparse.Namespace) -> dict[str, Any]:
    """RSS, small and 1 MiB round trips between this primary and one pycluster worker."""
    import asyncio

    import pycluster as cluster

    cluster.setup_primary(serialization=opts.serialization)
    worker = cluster.fork()
    try:
        await _pyc_online(cluster, [worker])
        move_to_cpu(opts.primary_cpu)
        await asyncio.sleep(opts.settle)
        rss = read_rss_bytes(worker.process.pid)
        pids = [os.getpid(), worker.process.pid]
        small = await _pyc_ping_pong(
            worker,
            small_message,
            is_small_echo,
            Meter(SMALL_WARMUP, opts.rounds, opts.seconds, pids),
        )
        payload = make_payload()
        big = await _pyc_ping_pong(
            worker,
            lambda _n: payload,
            lambda message, _n: message == payload,
            Meter(BIG_WARMUP, opts.rounds, opts.seconds, pids),
        )
    finally:
        await _pyc_stop(cluster, [worker])
    return {
        "worker_rss_bytes": rss,
        **small.result("small"),
        **big.result("big"),
        "payload_bytes": len(payload),
        "serialization": opts.serialization,
    }


async def _pyc_fork_all(cluster: Any, n: int) -> float:
    """Seconds from the first fork() until all *n* workers are online."""
    workers: list[Any] = []
    t0 = time.perf_counter()
    try:
        for _ in range(n):
            workers.append(cluster.fork())
        await _pyc_online(cluster, workers)
        return time.perf_counter() - t0
    finally:
        await _pyc_stop(cluster, workers)


async def pyc_fork(opts: argparse.Namespace) -> dict[str, Any]:
    """Fork-to-online time of *n* pycluster workers, *reps* times per count."""
    import pycluster as cluster

    times: dict[str, list[float]] = {}
    for n in opts.counts:
        times[str(n)] = [await _pyc_fork_all(cluster, n) for _ in range(opts.reps)]
    return {"fork_online_s": times}


def _kill_workers(cluster: Any) -> None:
    """SIGKILL every worker still alive, so that a failed measurement leaves none behind."""
    for worker in list((cluster.workers or {}).values()):
        # Best effort on the way out of a failure: the orchestrator's process-group
        # kill is the backstop.
        with contextlib.suppress(Exception):
            if not worker.is_dead():
                worker.process.kill("SIGKILL")


def _run_pycluster(opts: argparse.Namespace) -> dict[str, Any] | None:
    """Run a pycluster role: the worker program in a worker, the measurement otherwise."""
    import pycluster as cluster

    if cluster.is_worker:
        pyc_worker()  # imports only what it uses, as a lean worker program would
        return None
    import asyncio

    try:
        measure = pyc_rtt if opts.role == "pyc-rtt" else pyc_fork
        result = asyncio.run(measure(opts))
    except BaseException:
        _kill_workers(cluster)
        raise
    result["pycluster_version"] = _distribution_version("pycluster")
    return result


def _distribution_version(name: str) -> str | None:
    """Installed version of distribution *name*, or None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command line of one measurement (bench/ipc.py builds it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--role", required=True, choices=["mp-rtt", "mp-fork", "pyc-rtt", "pyc-fork"]
    )
    parser.add_argument("--out", required=True, help="where to write the JSON result")
    parser.add_argument("--rounds", type=int, default=3, help="measured windows per metric")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one window")
    parser.add_argument("--counts", default="2,8", help="worker counts for the fork roles")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per worker count")
    parser.add_argument("--settle", type=float, default=0.5, help="seconds before reading RSS")
    parser.add_argument("--serialization", default="json", choices=["json", "advanced"])
    parser.add_argument(
        "--primary-cpu", type=int, default=None, help="move the primary to this CPU once up"
    )
    opts = parser.parse_args(argv)
    opts.counts = [int(n) for n in opts.counts.split(",")]
    return opts


def main(argv: list[str]) -> int:
    """Run one measurement and write its result to --out."""
    opts = parse_args(argv)
    if opts.role.startswith("pyc-"):
        result = _run_pycluster(opts)
        if result is None:
            return 0
    elif opts.role == "mp-rtt":
        result = mp_rtt(opts)
    else:
        result = mp_fork(opts)
    result["python_version"] = sys.version.split()[0]
    with open(opts.out, "w", encoding="utf-8") as out:
        json.dump(result, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
