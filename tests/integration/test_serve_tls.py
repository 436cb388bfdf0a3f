"""``pycluster serve --certfile/--keyfile``: HTTPS from every worker, bad keys refused up front."""

from __future__ import annotations

import http.client
import ssl
import time

import pytest

from tests.conftest import Cluster, Commands, free_port, make_cert
from tests.integration.test_cli_serve import serve, stop

pytest.importorskip("uvicorn")
pytest.importorskip("trustme")

PID_APP = """
import os

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = f"{os.getpid()} {scope['scheme']}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
"""


def https_get(port: int, context: ssl.SSLContext) -> str:
    """One HTTPS request on a new connection: the body."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        response = conn.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("policy", "spelling"),
    [("rr", ("--certfile", "--keyfile")), ("none", ("--ssl-certfile", "--ssl-keyfile"))],
)
def test_every_worker_serves_https(
    cluster_env: Cluster, commands: Commands, policy: str, spelling: tuple[str, str]
) -> None:
    cluster_env.write("pidapp.py", PID_APP)
    ca, cert, key = make_cert(cluster_env.tmp)
    port = free_port()
    command = serve(
        commands,
        cluster_env,
        "pidapp:app",
        *("-w", "2", "-b", f"127.0.0.1:{port}", "--policy", policy),
        *(spelling[0], str(cert), spelling[1], str(key)),
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
    pids: set[str] = set()
    deadline = time.monotonic() + 20
    # Round robin alternates; a shared socket goes to whichever worker accepts first,
    # so keep asking (new connections) until both have answered.
    while len(pids) < 2 and time.monotonic() < deadline:
        pid, scheme = https_get(port, context).split()
        assert scheme == "https"
        pids.add(pid)
    assert len(pids) == 2, f"only {pids} answered over TLS"
    # Plain HTTP on the TLS port gets no HTTP answer.
    plain = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        plain.request("GET", "/")
        plain.getresponse().read()
    plain.close()
    stop(command)


def test_a_client_certificate_can_be_required(cluster_env: Cluster, commands: Commands) -> None:
    cluster_env.write("pidapp.py", PID_APP)
    ca, cert, key = make_cert(cluster_env.tmp)
    ca_file = cluster_env.tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    port = free_port()
    command = serve(
        commands,
        cluster_env,
        "pidapp:app",
        *("-w", "1", "-b", f"127.0.0.1:{port}", "--certfile", str(cert), "--keyfile", str(key)),
        *("--ssl-ca-certs", str(ca_file), "--ssl-cert-reqs", "2"),
    )
    anonymous = ssl.create_default_context()
    ca.configure_trust(anonymous)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        https_get(port, anonymous)
    known = ssl.create_default_context()
    ca.configure_trust(known)
    ca.issue_cert("client@example.test").configure_cert(known)
    assert https_get(port, known).endswith(" https")
    stop(command)


def assert_refused_before_fork(code: int, output: str, text: str) -> None:
    """Status 2, the reason on one line, no worker started, no traceback."""
    assert code == 2, output
    errors = [line for line in output.splitlines() if "error:" in line]
    assert len(errors) == 1 and text in errors[0], output
    assert "Traceback" not in output and "started in slot" not in output, output


def test_a_key_of_another_certificate_is_one_line_before_any_fork(
    cluster_env: Cluster, commands: Commands
) -> None:
    cluster_env.write("pidapp.py", PID_APP)
    _, cert, _ = make_cert(cluster_env.tmp, "one")
    _, _, other_key = make_cert(cluster_env.tmp, "two")
    code, output = commands.run(
        *("serve", "--no-control", "-w", "2", "-b", f"127.0.0.1:{free_port()}"),
        *("--certfile", str(cert), "--keyfile", str(other_key), "pidapp:app"),
    )
    assert_refused_before_fork(code, output, "does not belong to --certfile")


@pytest.mark.parametrize(
    ("content", "text"),
    [(b"not a key\n", "no PEM private key"), (None, "no such file")],
)
def test_a_bad_key_file_is_one_line_before_any_fork(
    cluster_env: Cluster, commands: Commands, content: bytes | None, text: str
) -> None:
    cluster_env.write("pidapp.py", PID_APP)
    _, cert, _ = make_cert(cluster_env.tmp)
    key = cluster_env.tmp / "bad-key.pem"
    if content is not None:
        key.write_bytes(content)
    code, output = commands.run(
        *("serve", "--no-control", "-w", "2", "-b", f"127.0.0.1:{free_port()}"),
        *("--ssl-certfile", str(cert), "--ssl-keyfile", str(key), "pidapp:app"),
    )
    assert_refused_before_fork(code, output, text)
