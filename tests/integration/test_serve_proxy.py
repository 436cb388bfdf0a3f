"""Proxy headers: trusted from 127.0.0.1, ::1 and Unix-socket peers by default, as uvicorn and
gunicorn do; ``--forwarded-allow-ips`` alone names other proxies; behind the deploy recipe's nginx.
"""

from __future__ import annotations

import http.client
import os
import signal
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import Cluster, Commands, free_port, make_cert
from tests.integration.test_cli_nginx import load_recipe
from tests.integration.test_cli_serve import serve, stop

pytest.importorskip("uvicorn")
flask = pytest.importorskip("flask")

#: What the application believes about its client: address and scheme.
WHO_APP = """
from flask import Flask, request

app = Flask(__name__)

@app.get("/")
def who():
    return f"{request.remote_addr} {request.scheme}"
"""

#: A documentation address (RFC 5737), only ever written in a header.
CLIENT = "203.0.113.7"
FORWARDED = {"X-Forwarded-For": CLIENT, "X-Forwarded-Proto": "https"}


def ask(port: int, headers: dict[str, str], source: str = "127.0.0.1") -> str:
    """GET / from ``source`` (a loopback address) with ``headers``: the body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", "/", headers={**headers, "Connection": "close"})
        response = conn.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        conn.close()


def test_proxy_headers_from_loopback_are_trusted_by_default(
    cluster_env: Cluster, commands: Commands
) -> None:
    cluster_env.write("who.py", WHO_APP)
    port = free_port()
    command = serve(commands, cluster_env, "who:app", "-w", "1", "-b", f"127.0.0.1:{port}")
    assert ask(port, FORWARDED) == f"{CLIENT} https"
    assert ask(port, {}) == "127.0.0.1 http"
    stop(command)


def test_no_proxy_headers_ignores_them(cluster_env: Cluster, commands: Commands) -> None:
    cluster_env.write("who.py", WHO_APP)
    port = free_port()
    command = serve(
        commands,
        cluster_env,
        "who:app",
        *("-w", "1", "-b", f"127.0.0.1:{port}", "--no-proxy-headers"),
    )
    assert ask(port, FORWARDED) == "127.0.0.1 http"
    stop(command)


def test_forwarded_allow_ips_alone_names_the_trusted_proxies(
    cluster_env: Cluster, commands: Commands
) -> None:
    cluster_env.write("who.py", WHO_APP)
    port = free_port()
    command = serve(
        commands,
        cluster_env,
        "who:app",
        *("-w", "1", "-b", f"127.0.0.1:{port}", "--forwarded-allow-ips", "127.0.0.2"),
    )
    assert ask(port, FORWARDED, source="127.0.0.2") == f"{CLIENT} https"
    assert ask(port, FORWARDED, source="127.0.0.1") == "127.0.0.1 http"
    stop(command)


NGINX_CONF = """
{user}
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    upstream app {{
        server {upstream};
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {dir}/nginx-cert.pem;
        ssl_certificate_key {dir}/nginx-key.pem;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("upstream", ["unix", "tcp"])
def test_behind_the_recipes_nginx_the_app_sees_the_client(
    cluster_env: Cluster, commands: Commands, upstream: str
) -> None:
    pytest.importorskip("trustme")
    nginx = load_recipe().find_nginx(install=False)
    if nginx is None:
        pytest.skip("nginx is not installed (make system-deps, or apt-get install nginx-core)")
    tmp: Path = cluster_env.tmp
    cluster_env.write("who.py", WHO_APP)
    if upstream == "unix":
        bind, server = f"unix:{tmp}/app.sock", f"unix:{tmp}/app.sock"
    else:
        app_port = free_port()
        bind, server = f"127.0.0.1:{app_port}", f"127.0.0.1:{app_port}"
    command = serve(commands, cluster_env, "who:app", "-w", "2", "-b", bind)
    # nginx terminates TLS with a certificate of a CA made for this test.
    ca, _, _ = make_cert(tmp, "nginx")
    (tmp / "tmp").mkdir()
    port = free_port()
    user = "user root root;" if os.geteuid() == 0 else ""  # its workers reach our socket
    conf = NGINX_CONF.format(user=user, dir=tmp, port=port, upstream=server)
    (tmp / "nginx.conf").write_text(conf)
    proc = subprocess.Popen(
        [nginx, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "nginx-error.log")],
        env=cluster_env.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    cluster_env.procs.append(proc)  # type: ignore[arg-type]  # reaped with the rest
    context = ssl.create_default_context()
    ca.configure_trust(context)
    try:
        body = None
        deadline = time.monotonic() + 15
        while body is None:
            conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
            try:
                conn.request("GET", "/", headers={"X-Forwarded-For": CLIENT})
                response = conn.getresponse()
                body = response.read().decode()
                assert response.status == 200, body
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            finally:
                conn.close()
        # nginx appended our loopback address to the header: a trusted proxy hop, so
        # the application sees the first address before it, and nginx's https.
        assert body == f"{CLIENT} https"
    finally:
        proc.send_signal(signal.SIGQUIT)
        proc.wait(10)
    stop(command)
