"""``--bind`` addresses: ``HOST:PORT``, ``[IPV6]:PORT``, ``:PORT``, ``unix:PATH``, ``fd://N``.

A bind is parsed once in the primary (bad text is a usage error there, not a crash
in every worker) and travels to the workers as a small dict.
"""

from __future__ import annotations

import os
import socket
import stat
from typing import Any

Bind = dict[str, Any]


def parse(text: str) -> Bind:
    """The bind that ``text`` names; ``ValueError`` with the accepted forms if none."""
    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            raise ValueError("unix: needs a path, as in unix:/run/app.sock")
        return {"kind": "unix", "path": os.path.abspath(path)}
    if text.startswith("fd://"):
        raw = text[5:]
        if not raw.isdigit():
            raise ValueError(f"fd:// needs a descriptor number, not {raw!r}")
        return {"kind": "fd", "fd": int(raw)}
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", text  # a bare port: loopback, as uvicorn's default
    elif host == "":
        host = "0.0.0.0"
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(
            f"{text!r} is not an address: use HOST:PORT, [IPV6]:PORT, :PORT, unix:PATH or fd://N"
        )
    return {"kind": "tcp", "host": host, "port": int(port_text)}


def check(bind: Bind) -> None:
    """Fail now, in the primary, for a bind no worker could listen on (``ValueError``)."""
    if bind["kind"] == "fd":
        fd = bind["fd"]
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            raise ValueError(f"fd://{fd}: descriptor {fd} is not open in this process") from None
        if not stat.S_ISSOCK(mode):
            raise ValueError(f"fd://{fd}: descriptor {fd} is not a socket")
    elif bind["kind"] == "unix":
        directory = os.path.dirname(bind["path"])
        if not os.path.isdir(directory):
            raise ValueError(f"unix:{bind['path']}: directory {directory} does not exist")


def describe(bind: Bind, port: int | None = None) -> str:
    """How a bind reads in logs and tables (``port``: the real one, for port 0)."""
    if bind["kind"] == "unix":
        return f"unix:{bind['path']}"
    if bind["kind"] == "fd":
        return f"fd://{bind['fd']}"
    host = bind["host"]
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port if port is not None else bind['port']}"


def create_args(bind: Bind) -> tuple[Any, dict[str, Any]]:
    """The arguments of ``pycluster._ports.create_server`` that listen on ``bind``."""
    if bind["kind"] == "unix":
        return bind["path"], {"family": socket.AF_UNIX}
    if bind["kind"] == "fd":
        return None, {"fd": bind["fd"]}
    family = socket.AF_INET6 if ":" in bind["host"] else socket.AF_INET
    return (bind["host"], bind["port"]), {"family": family}


def remove_stale_socket(path: str) -> None:
    """Remove a Unix socket file left by a dead server, so binding the path works.

    A path where a server still listens is left alone (binding it then fails loudly).
    """
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
    except OSError:
        pass
    finally:
        probe.close()
