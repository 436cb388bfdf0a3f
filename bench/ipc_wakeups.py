"""What a small round trip costs when waking the other process is what decides it.

bench/ipc.py measures pycluster, Node and ``multiprocessing.Pipe`` with both processes on
one CPU and split over two. Split, every round trip wakes an idle CPU twice, and how the
sleeping process waits changes what that costs. This takes pycluster out of the picture:
two processes ping-pong 38 bytes over a bare Unix socketpair, pinned to different CPUs,
while the way each side waits changes:

- the primary waits in a blocking ``recv`` (as ``multiprocessing`` does) or in
  ``epoll_wait`` (as any event loop does: pycluster's primary, Node);
- the worker waits in a blocking ``recv`` (as pycluster's channel thread does) or in
  ``poll`` before reading;
- optionally the worker spends some microseconds before answering (``--work``), and
  optionally it "pokes" the primary's epoll through a second socket as soon as the
  message is in (waking the primary's CPU while it works).

For each variant: microseconds per round trip, and the medians of the primary's ``send``
and of its read after waking (which may pay for waking the other CPU: reading a message
frees buffer space charged to the sender's socket, and that wakes a sender blocked in
``recv`` on it, whatever it waits for; a ``poll`` or ``epoll`` wait is filtered by event
and is not woken). Variants run interleaved, several rounds, to spread the machine's
noise over all of them::

    flock /tmp/bench.lock .venv/bin/python bench/ipc_wakeups.py            # ~15 s
    flock /tmp/bench.lock .venv/bin/python bench/ipc_wakeups.py --work 8 --rounds 5

Needs two CPUs. Prints a table; writes nothing.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import statistics
import sys
import time
from dataclasses import dataclass

MESSAGE = b"x" * 38
_now = time.perf_counter_ns


@dataclass(frozen=True)
class Variant:
    """How each side waits, and whether the worker pokes the primary early."""

    primary: str  # "recv" or "epoll"
    worker: str  # "recv" or "poll"
    poke: bool = False

    @property
    def label(self) -> str:
        """The row label of the report."""
        poke = ", pokes primary" if self.poke else ""
        return f"primary {self.primary:5s} / worker {self.worker:4s}{poke}"


VARIANTS = [
    Variant("recv", "recv"),
    Variant("epoll", "recv"),
    Variant("recv", "poll"),
    Variant("epoll", "poll"),
    Variant("epoll", "recv", poke=True),
]


def _spin(us: float) -> None:
    """Busy for *us* microseconds (the worker's work on a message)."""
    end = _now() + int(us * 1000)
    while _now() < end:
        pass


def _worker(
    sock: socket.socket, poke: socket.socket, variant: Variant, cpu: int, work: float
) -> None:
    """Echo every message until EOF, waiting the variant's way."""
    os.sched_setaffinity(0, {cpu})
    buf = bytearray(1 << 16)
    poller = None
    if variant.worker == "poll":
        sock.setblocking(False)
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
    while True:
        if poller is not None:
            poller.poll()
        n = sock.recv_into(buf)
        if not n:
            return
        if variant.poke:
            poke.send(b"!")
        if work:
            _spin(work)
        sock.sendall(bytes(buf[:n]))


def measure(
    variant: Variant, cpus: tuple[int, int], n: int, work: float
) -> tuple[float, float, float]:
    """(us per round trip, median us of the primary's send, of its read after waking)."""
    ours, theirs = socket.socketpair()
    poke_r, poke_w = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the worker
        try:
            ours.close()
            poke_r.close()
            _worker(theirs, poke_w, variant, cpus[1], work)
        finally:
            os._exit(0)
    theirs.close()
    poke_w.close()
    try:
        os.sched_setaffinity(0, {cpus[0]})
        buf = bytearray(1 << 16)
        ep = None
        if variant.primary == "epoll":
            ours.setblocking(False)
            poke_r.setblocking(False)
            ep = select.epoll()
            ep.register(ours.fileno(), select.EPOLLIN)
            ep.register(poke_r.fileno(), select.EPOLLIN)
        sends: list[int] = []
        reads: list[int] = []

        def round_trip() -> None:
            t0 = _now()
            ours.sendall(MESSAGE)
            sends.append(_now() - t0)
            while ep is not None:
                ready = [fd for fd, _ in ep.poll()]
                if poke_r.fileno() in ready:
                    poke_r.recv(4096)
                if ours.fileno() in ready:
                    break
            t1 = _now()
            got = ours.recv_into(buf)
            reads.append(_now() - t1)
            if got != len(MESSAGE):
                raise RuntimeError(f"short echo: {got} bytes")

        for _ in range(300):  # warm-up
            round_trip()
        sends.clear()
        reads.clear()
        t0 = time.perf_counter()
        for _ in range(n):
            round_trip()
        elapsed = time.perf_counter() - t0
        return (
            elapsed / n * 1e6,
            statistics.median(sends) / 1000,
            statistics.median(reads) / 1000,
        )
    finally:
        ours.close()
        poke_r.close()
        os.waitpid(pid, 0)


def main(argv: list[str]) -> int:
    """Run every variant *rounds* times, interleaved, and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="round trips per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per variant")
    parser.add_argument("--work", type=float, default=0.0, help="worker's us per message")
    opts = parser.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("needs two CPUs", file=sys.stderr)
        return 1
    results: dict[Variant, list[tuple[float, float, float]]] = {v: [] for v in VARIANTS}
    for _ in range(opts.rounds):
        for variant in VARIANTS:
            results[variant].append(measure(variant, (cpus[0], cpus[1]), opts.n, opts.work))
    print(f"split over CPUs {cpus[0]} and {cpus[1]}; worker work {opts.work:g} us per message")
    print(f"{'variant':48s} {'us/round trip':>14s} {'send us':>8s} {'read us':>8s}")
    for variant, runs in results.items():
        rtt, send, read = (statistics.median(r[i] for r in runs) for i in range(3))
        spread = f"({min(r[0] for r in runs):.0f}-{max(r[0] for r in runs):.0f})"
        print(f"{variant.label:48s} {rtt:6.1f} {spread:>7s} {send:8.1f} {read:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
