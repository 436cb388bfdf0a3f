"""Instructions per small IPC round trip, counted exactly under valgrind's callgrind.

Wall-clock figures on a shared machine swing with whatever else runs; the number of
user-space instructions a round trip costs does not. This counts them for both
processes of a ping-pong (``{"cmd": "ping", "n": i}``, as bench/ipc.py sends), for
pycluster (json and advanced) and ``multiprocessing.Pipe``: instrumentation is switched
on (``callgrind_control -i on``) only once both processes are up and warmed, and the
counts are dumped right after the last round trip, so start-up is not counted. Use it
for A/B comparisons of the message path::

    .venv/bin/python bench/ipc_instructions.py                # 2,000 round trips each
    .venv/bin/python bench/ipc_instructions.py --n 500 --peers pyc-json

Needs ``valgrind`` (Debian: ``apt-get install valgrind``). Kernel time is not counted:
for that, see bench/ipc.py's "CPU per small round trip".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

WARMUP = 200
PEERS = ("pyc-json", "pyc-advanced", "mp")


def _callgrind(pids: list[int], *args: str) -> None:
    """Send a command to the callgrind instances running *pids*."""
    for pid in pids:
        subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True, check=False)


def _start_counting(pids: list[int], pid_file: Path) -> None:
    """Tell the parent which processes to read, and switch their counting on.

    Called from the primary's loop too: blocking it here is what we want, nothing of
    the ping-pong runs meanwhile.
    """
    pid_file.write_text(f"{pids[0]} {pids[1]}")
    _callgrind(pids, "-i", "on")


def _message(n: int) -> dict[str, Any]:
    return {"cmd": "ping", "n": n}


def _mp_echo(conn: Any) -> None:
    """multiprocessing child: echo every message until EOF."""
    try:
        while True:
            conn.send(conn.recv())
    except EOFError:
        pass


def run_mp(n: int, pid_file: Path) -> None:
    """The measured ping-pong with a multiprocessing.Pipe child."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    conn, child_end = ctx.Pipe()
    proc = ctx.Process(target=_mp_echo, args=(child_end,), daemon=True)
    proc.start()
    child_end.close()
    for i in range(WARMUP):
        conn.send(_message(i))
        conn.recv()
    pids = [os.getpid(), proc.pid]
    _start_counting(pids, pid_file)
    for i in range(n):
        conn.send(_message(i))
        conn.recv()
    _callgrind(pids, "-d")
    conn.close()
    proc.join(30)


async def run_pycluster(n: int, serialization: str, pid_file: Path) -> None:
    """The measured ping-pong with one pycluster worker, listener to listener."""
    import pycluster as cluster

    cluster.setup_primary(serialization=serialization)
    worker = cluster.fork()
    loop = asyncio.get_running_loop()
    online: asyncio.Future[None] = loop.create_future()
    worker.once("online", lambda: online.set_result(None))
    await online
    done: asyncio.Future[None] = loop.create_future()
    count = 0
    limit = WARMUP

    def on_message(message: object, handle: object = None) -> None:
        nonlocal count
        count += 1
        if count >= limit:
            done.set_result(None)
        else:
            worker.send(_message(count))

    worker.on("message", on_message)
    worker.send(_message(0))
    await done
    pids = [os.getpid(), worker.process.pid]
    _start_counting(pids, pid_file)
    done = loop.create_future()
    count, limit = 0, n
    worker.send(_message(0))
    await done
    _callgrind(pids, "-d")
    worker.kill()
    await cluster.wait_closed()


def worker_program() -> None:
    """What a pycluster worker runs: echo every message back."""
    import pycluster as cluster

    me = cluster.worker
    assert me is not None

    def echo(message: object, handle: object = None) -> None:
        me.send(message)

    me.on("message", echo)
    me.wait_disconnected()


def count(peer: str, n: int) -> tuple[int, int]:
    """Instructions per round trip of (primary, worker) for *peer*."""
    with tempfile.TemporaryDirectory(prefix="pycluster-cg-") as tmp:
        pid_file = Path(tmp) / "pids"
        cmd = [
            "valgrind",
            "--tool=callgrind",
            "--trace-children=yes",
            "--instr-atstart=no",
            f"--callgrind-out-file={tmp}/cg.%p",
            "-q",
            sys.executable,
            __file__,
            "--role",
            peer,
            "--n",
            str(n),
            "--pid-file",
            str(pid_file),
        ]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60 + n * 0.1)
        primary, worker = (int(p) for p in pid_file.read_text().split())

        def per_trip(pid: int) -> int:
            for line in Path(f"{tmp}/cg.{pid}.1").read_text().splitlines():
                if line.startswith("summary:"):
                    return int(line.split()[1]) // n
            raise RuntimeError(f"no callgrind summary for process {pid}")

        return per_trip(primary), per_trip(worker)


def main(argv: list[str]) -> int:
    """Count every peer (or play one role when started by count())."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="measured round trips")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset")
    parser.add_argument("--role", choices=PEERS, help=argparse.SUPPRESS)
    parser.add_argument("--pid-file", type=Path, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.role and opts.role.startswith("pyc-"):
        import pycluster as cluster

        if cluster.is_worker:  # a worker re-runs this script with the same arguments
            worker_program()
            return 0
    if opts.role == "mp":
        run_mp(opts.n, opts.pid_file)
        return 0
    if opts.role is not None:
        asyncio.run(run_pycluster(opts.n, opts.role.removeprefix("pyc-"), opts.pid_file))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 1
    print(f"{'peer':<14} {'primary':>9} {'worker':>9} {'total':>9}  (instructions per round trip)")
    for peer in opts.peers.split(","):
        primary, worker = count(peer.strip(), opts.n)
        print(f"{peer:<14} {primary:>9,} {worker:>9,} {primary + worker:>9,}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
