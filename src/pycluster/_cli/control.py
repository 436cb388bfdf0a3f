"""The control socket: how ``pycluster status/reload/scale/stop`` reach a running primary.

A Unix stream socket, by default ``$XDG_RUNTIME_DIR/pycluster/NAME.sock`` (else
``/tmp/pycluster-UID/NAME.sock``), ``NAME`` being ``--name`` or the primary's pid.
Only the user who started the cluster may use it, checked twice: the directory is
``0700`` and the socket ``0600``, and every connection's peer (``SO_PEERCRED``) must
have the primary's user id; anyone else gets an error line and is disconnected.

Protocol: JSON lines. Each request is one object with ``"cmd"`` (``status``,
``reload`` with ``batch``, ``scale`` with ``n``, ``stop``); each answer one object
with ``"ok": true`` and the command's fields, or ``"ok": false`` and ``"error"``. A
client may send several requests on one connection (``status --watch`` does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("pycluster._cli")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_REFUSE_WAIT = 5.0  # seconds a refused peer gets to send its request


class ControlError(Exception):
    """The control socket cannot be found, opened or trusted."""


def runtime_dir() -> Path:
    """Where control sockets of this user live."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "pycluster"
    return Path(tempfile.gettempdir()) / f"pycluster-{os.geteuid()}"


def private_dir(path: Path) -> None:
    """Create ``path`` as ``0700``, or check that it is ours and private."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise ControlError(f"{path} is not a directory owned by uid {os.geteuid()}")
    if st.st_mode & 0o077:
        raise ControlError(f"{path} is open to other users (mode {st.st_mode & 0o777:o})")


def is_live(path: Path | str) -> bool:
    """Whether a server accepts connections on the Unix socket ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(2.0)
        probe.connect(os.fspath(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


class ControlServer:
    """The primary's end: answers requests with ``handler`` on the primary's loop."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        """Bind the socket, owner-only, and start answering."""
        if self.path.parent != Path(os.sep):
            private_dir(self.path.parent)
        if self.path.exists() or self.path.is_symlink():
            if is_live(self.path):
                raise ControlError(
                    f"another cluster already answers on {self.path}; choose another --name"
                )
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # no window in which the socket is open to others
        try:
            sock.bind(os.fspath(self.path))
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        self._server = await asyncio.start_unix_server(self._serve, sock=sock)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            raw = writer.get_extra_info("socket").getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size
            )
            pid, uid, _gid = _PEERCRED.unpack(raw)
            if uid != os.geteuid():
                log.warning("control socket: refused pid %d of uid %d", pid, uid)
                # Refuse in answer to the first request: hanging up before the client has
                # written would turn the refusal into a broken pipe on its side.
                with contextlib.suppress(asyncio.TimeoutError, ValueError):
                    await asyncio.wait_for(reader.readline(), _REFUSE_WAIT)
                await _answer(writer, {"ok": False, "error": "permission denied: not the owner"})
                return
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict):
                        raise ValueError("a request is a JSON object")
                    answer = await self._handler(request)
                except (ValueError, TypeError, RuntimeError) as exc:
                    log.debug("control request %r failed", line, exc_info=True)
                    answer = {"ok": False, "error": str(exc)}
                await _answer(writer, answer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def close(self) -> None:
        """Stop answering, hang up on clients, remove the socket file."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        with contextlib.suppress(OSError):
            self.path.unlink()


async def _answer(writer: asyncio.StreamWriter, answer: dict[str, Any]) -> None:
    writer.write(json.dumps(answer).encode() + b"\n")
    await writer.drain()


# -- the client commands ---------------------------------------------------------------


def find(control: str | None, name: str | None) -> Path:
    """The control socket to use: ``--control``, ``--name``, or the only live one."""
    if control:
        return Path(control)
    directory = runtime_dir()
    if name:
        return directory / f"{name}.sock"
    candidates = sorted(directory.glob("*.sock")) if directory.is_dir() else []
    live = [p for p in candidates if is_live(p)]
    if not live:
        raise ControlError(
            f"no running pycluster found for this user (looked in {directory}); "
            "is it running as another user, or with --control elsewhere?"
        )
    if len(live) > 1:
        names = ", ".join(p.stem for p in live)
        raise ControlError(f"several clusters run ({names}): pick one with --name or --control")
    return live[0]


class Client:
    """A connection to a primary's control socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(os.fspath(path))
        except FileNotFoundError:
            self.sock.close()
            raise ControlError(f"no cluster answers on {path}") from None
        except PermissionError:
            self.sock.close()
            raise ControlError(f"permission denied: {path} belongs to another user") from None
        except OSError as exc:
            self.sock.close()
            raise ControlError(f"cannot reach the cluster on {path}: {exc.strerror}") from None
        self._file = self.sock.makefile("rb")

    def request(self, **request: Any) -> dict[str, Any]:
        """Send one request and wait for its answer."""
        try:
            self.sock.sendall(json.dumps(request).encode() + b"\n")
        except BrokenPipeError:
            pass  # the primary may have answered and hung up already: read what it said
        try:
            line = self._file.readline()
        except ConnectionResetError:
            line = b""
        if not line:
            raise ControlError("the cluster closed the connection")
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise ControlError(str(answer.get("error", "the request failed")))
        return answer

    def wait_closed(self) -> None:
        """Block until the primary closes the connection (it has exited)."""
        while self._file.readline():
            pass

    def close(self) -> None:
        """Hang up."""
        self._file.close()
        self.sock.close()


def client_main(ns: argparse.Namespace) -> int:
    """``pycluster status/reload/scale/stop``."""
    try:
        client = Client(find(ns.control, ns.name))
    except ControlError as exc:
        if getattr(ns, "check", False):
            return 1
        print(f"pycluster: error: {exc}", file=sys.stderr)
        return 1
    try:
        return _command(client, ns)
    except ControlError as exc:
        print(f"pycluster: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()


def _command(client: Client, ns: argparse.Namespace) -> int:
    from pycluster._cli import status

    if ns.request == "status":
        if ns.watch:
            status.watch(lambda: client.request(cmd="status"), ns.interval, (ControlError, OSError))
            return 0
        answer = client.request(cmd="status")
        if ns.check:
            return 0 if status.all_listening(answer) else 1
        if ns.json:
            print(json.dumps(answer, indent=2))
        else:
            status.show(answer)
        return 0
    started = time.monotonic()
    if ns.request == "reload":
        answer = client.request(cmd="reload", batch=ns.batch)
        print(f"reloaded {answer['replaced']} worker(s) in {time.monotonic() - started:.1f} s")
    elif ns.request == "scale":
        answer = client.request(cmd="scale", n=ns.n)
        print(f"scaled to {answer['workers']} worker(s) in {time.monotonic() - started:.1f} s")
    elif ns.request == "stop":
        client.request(cmd="stop")
        if ns.wait:
            client.wait_closed()
            print(f"stopped in {time.monotonic() - started:.1f} s")
        else:
            print("stopping")
    return 0
