"""The recipe of docs/deploy.md, run for real: two pycluster primaries behind nginx.

Both primaries serve the same ASGI app with ``pycluster serve`` on Unix sockets;
nginx (Debian's package) balances between them on 127.0.0.1. Client threads load
nginx with keep-alive connections while the first primary, then the second, does a
rolling reload (``pycluster reload``). The recipe holds if no request failed.

Usage::

    python bench/deploy_nginx.py                 # 6 s of load, 2 workers per primary
    python bench/deploy_nginx.py --duration 20 --workers 4 --clients 16

nginx is installed with apt-get when missing (needs root). Everything listens on
loopback or in a temporary directory, and every process is stopped at the end.
Exit status 0 when no request failed. ``tests/integration/test_cli_nginx.py`` runs a
short version when nginx is installed.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# bench/http.py would shadow the standard library's http package (the script's
# directory comes first on sys.path): take bench/ off the path before importing it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import http.client  # noqa: E402

APP = """
import asyncio, os

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await asyncio.sleep(0.002)  # a little work, so reloads meet requests in flight
    if scope["path"] == "/seen":  # what the proxy headers told the application
        client = scope.get("client") or ("-", 0)
        body = f"{scope['scheme']} {client[0]}".encode()
    else:
        body = str(os.getpid()).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
"""

NGINX_CONF = """
{user}
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;

    upstream app {{
        # max_fails=0: a refused connection never takes a primary out of rotation
        # for long; proxy_next_upstream below retries it on the other one.
        server unix:{dir}/a.sock max_fails=0;
        server unix:{dir}/b.sock max_fails=0;
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_next_upstream error timeout http_502 http_503;
        }}
    }}
}}
"""


@dataclass
class Report:
    """What the load saw."""

    requests: int = 0
    failures: list[str] = field(default_factory=list)
    by_pid: collections.Counter[str] = field(default_factory=collections.Counter)
    reloads: list[float] = field(default_factory=list)
    seconds: float = 0.0
    #: What the application saw of a request whose client claimed ``https`` itself:
    #: ``scheme client-address`` (nginx must say the real scheme, ``http`` here).
    seen: str = ""


def find_nginx(install: bool) -> str | None:
    """The nginx binary; with ``install``, apt-get it when missing (as root)."""
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None
    )
    if found or not install:
        return found
    if os.geteuid() != 0:
        raise SystemExit("nginx is not installed; run: sudo apt-get install -y nginx-core")
    print("nginx not found: installing nginx-core with apt-get", flush=True)
    subprocess.run(
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-core",
        shell=True,
        check=True,
    )
    return find_nginx(install=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/")
            if conn.getresponse().status == 200:
                conn.close()
                return
            conn.close()
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing answers on 127.0.0.1:{port}")


def _wait_ready(proc: subprocess.Popen[str], deadline: float) -> None:
    """Read the primary's log until it says it is ready."""
    assert proc.stdout is not None
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen.append(line)
        if not line:
            raise RuntimeError("a primary ended before it was ready:\n" + "".join(seen))
        if "ready: " in line:
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep draining
            return
    raise RuntimeError("a primary was not ready in time")


def _seen(port: int) -> str:
    """The scheme and client address the application sees through nginx."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        # A client's own X-Forwarded-Proto must not reach the application.
        conn.request("GET", "/seen", headers={"X-Forwarded-Proto": "https"})
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def _load(port: int, stop: threading.Event, report: Report, lock: threading.Lock) -> None:
    conn: http.client.HTTPConnection | None = None
    while not stop.is_set():
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/")
            response = conn.getresponse()
            body = response.read().decode()
            with lock:
                report.requests += 1
                if response.status == 200:
                    report.by_pid[body] += 1
                else:
                    report.failures.append(f"status {response.status}")
        except (OSError, http.client.HTTPException) as exc:
            with lock:
                report.requests += 1
                report.failures.append(repr(exc))
            if conn is not None:
                conn.close()
            conn = None
    if conn is not None:
        conn.close()


def run_recipe(
    nginx: str,
    workdir: Path,
    *,
    duration: float = 6.0,
    workers: int = 2,
    clients: int = 8,
    env: dict[str, str] | None = None,
) -> Report:
    """Run the whole recipe in ``workdir``; returns what the load saw."""
    env = dict(os.environ if env is None else env)
    (workdir / "app.py").write_text(APP)
    (workdir / "tmp").mkdir()
    port = _free_port()
    user = "user root root;" if os.geteuid() == 0 else ""  # its workers reach our sockets
    (workdir / "nginx.conf").write_text(NGINX_CONF.format(user=user, dir=workdir, port=port))
    procs: list[subprocess.Popen[str]] = []
    report = Report()
    try:
        for name in ("a", "b"):
            argv = [sys.executable, "-m", "pycluster", "serve", "-w", str(workers)]
            argv += ["-b", f"unix:{workdir}/{name}.sock", "--name", f"nginx-recipe-{name}"]
            argv += ["--control", f"{workdir}/run/{name}.sock", "app:app"]
            procs.append(
                subprocess.Popen(
                    argv,
                    cwd=workdir,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + 30
        for proc in procs:
            _wait_ready(proc, deadline)
        nginx_argv = [nginx, "-p", str(workdir), "-c", str(workdir / "nginx.conf")]
        procs.append(
            subprocess.Popen(
                [*nginx_argv, "-e", str(workdir / "nginx-error.log")],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        _wait_http(port, deadline)
        report.seen = _seen(port)

        stop, lock = threading.Event(), threading.Lock()
        threads = [
            threading.Thread(target=_load, args=(port, stop, report, lock), daemon=True)
            for _ in range(clients)
        ]
        started = time.monotonic()
        for t in threads:
            t.start()
        # Reload one primary, then the other, while the load runs.
        time.sleep(duration / 4)
        for name in ("a", "b"):
            t0 = time.monotonic()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pycluster",
                    "reload",
                    "--control",
                    f"{workdir}/run/{name}.sock",
                ],
                env=env,
                check=True,
                capture_output=True,
            )
            report.reloads.append(time.monotonic() - t0)
        time.sleep(max(0.0, started + duration - time.monotonic()))
        stop.set()
        for t in threads:
            t.join(15)
        report.seconds = time.monotonic() - started
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
    return report


def main() -> int:
    """Run the recipe and print what happened."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=6.0, help="seconds of load")
    parser.add_argument("--workers", type=int, default=2, help="workers per primary")
    parser.add_argument("--clients", type=int, default=8, help="client threads")
    args = parser.parse_args()
    nginx = find_nginx(install=True)
    assert nginx is not None
    with tempfile.TemporaryDirectory(prefix="pycluster-nginx-") as tmp:
        report = run_recipe(
            nginx, Path(tmp), duration=args.duration, workers=args.workers, clients=args.clients
        )
    print(
        f"{report.requests} requests in {report.seconds:.1f} s "
        f"({report.requests / max(report.seconds, 1e-9):.0f}/s) through nginx, "
        f"{len(report.failures)} failed"
    )
    print(f"the application saw scheme and client: {report.seen}")
    print(f"reloads took {', '.join(f'{s:.2f} s' for s in report.reloads)}")
    print(
        f"answered by {len(report.by_pid)} worker processes "
        f"(2 primaries x {args.workers} workers, each replaced once)"
    )
    for failure, count in collections.Counter(report.failures).most_common(5):
        print(f"  {count} x {failure}")
    return 0 if not report.failures else 1


if __name__ == "__main__":
    sys.exit(main())
