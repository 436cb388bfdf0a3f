"""The primary's handle on a worker's operating-system process.

Workers are started with :class:`subprocess.Popen` (which reports a failed
``chdir``, ``exec`` or ``setuid`` in the parent) and reaped through a pidfd on the
primary's loop, so exits are events, not polls.
"""

from __future__ import annotations

import errno
import os
import signal as _signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from pycluster import _batchsched
from pycluster._signals import signal_name, signal_number

if TYPE_CHECKING:
    from pycluster._reactor import Reactor

ExitHandler = Callable[[int | None, str | None], None]

#: Exit statuses for a worker whose program could not be started, as a shell reports them.
EXIT_NOT_FOUND = 127
EXIT_CANNOT_EXECUTE = 126


class WorkerProcess:
    """A worker's process, like ``subprocess.Popen``: pid, returncode, pipes, signals.

    ``kill()`` takes a signal and defaults to SIGTERM, as Node's ``process.kill``.
    ``returncode`` follows Popen: the exit status, or ``-N`` when signal N ended it.
    """

    def __init__(self, popen: subprocess.Popen[bytes] | None, args: list[str]) -> None:
        self._popen = popen
        self.args = args
        self.pid: int | None = popen.pid if popen is not None else None
        self.returncode: int | None = None
        self.stdin: IO[bytes] | None = popen.stdin if popen is not None else None
        self.stdout: IO[bytes] | None = popen.stdout if popen is not None else None
        self.stderr: IO[bytes] | None = popen.stderr if popen is not None else None
        self._exited = threading.Event()

    def __repr__(self) -> str:
        return f"<WorkerProcess pid={self.pid} returncode={self.returncode}>"

    def poll(self) -> int | None:
        """The return code if the process has been reaped, else ``None``."""
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the primary's loop has reaped the process (not from the loop thread)."""
        self._exited.wait(timeout)
        return self.returncode

    def send_signal(self, sig: int | str) -> None:
        """Send a signal, unless the process has already been reaped."""
        if self.pid is None or self.returncode is not None:
            return
        try:
            os.kill(self.pid, signal_number(sig))
        except ProcessLookupError:
            pass

    def kill(self, sig: int | str = "SIGTERM") -> None:
        """Send ``sig`` (default SIGTERM, as in Node)."""
        self.send_signal(sig)

    def terminate(self) -> None:
        """Send SIGTERM."""
        self.send_signal(_signal.SIGTERM)

    def _set_status(self, status: int) -> tuple[int | None, str | None]:
        code = os.waitstatus_to_exitcode(status)
        self.returncode = code
        if self._popen is not None:
            self._popen.returncode = code  # so Popen never tries to reap it again
        self._exited.set()
        if code < 0:
            return None, signal_name(-code)
        return code, None

    def _set_failed(self, code: int) -> None:
        self.returncode = code
        self._exited.set()


def _stdio_entry(entry: Any) -> Any:
    if entry == "inherit":
        return None
    if entry == "pipe":
        return subprocess.PIPE
    if entry == "ignore":
        return subprocess.DEVNULL
    return entry


def spawn(
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: str | None,
    pass_fds: tuple[int, ...],
    stdio: tuple[Any, Any, Any],
    uid: int | None,
    gid: int | None,
    reactor: Reactor,
    on_exit: ExitHandler,
) -> tuple[WorkerProcess, OSError | subprocess.SubprocessError | None]:
    """Start a worker process; on failure return the error and a process already "exited"."""
    kwargs: dict[str, Any] = {}
    # Workers get their own process group: a terminal's Ctrl-C reaches the primary
    # only, which then shuts the workers down gracefully instead of all at once.
    if sys.version_info >= (3, 11):
        kwargs["process_group"] = 0
    else:
        kwargs["start_new_session"] = True
    if uid is not None:
        kwargs["user"] = uid
        if os.geteuid() == 0:
            kwargs["extra_groups"] = []
    if gid is not None:
        kwargs["group"] = gid
    try:
        with _batchsched.normal_policy():  # not the primary's SCHED_BATCH
            popen = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                pass_fds=pass_fds,
                stdin=_stdio_entry(stdio[0]),
                stdout=_stdio_entry(stdio[1]),
                stderr=_stdio_entry(stdio[2]),
                close_fds=True,
                **kwargs,
            )
    except (OSError, subprocess.SubprocessError) as exc:
        proc = WorkerProcess(None, argv)
        failed = (
            EXIT_NOT_FOUND
            if getattr(exc, "errno", None) in (errno.ENOENT, errno.ENOTDIR)
            else EXIT_CANNOT_EXECUTE
        )
        proc._set_failed(failed)
        return proc, exc
    proc = WorkerProcess(popen, argv)
    _watch(proc, reactor, on_exit)
    return proc, None


def _watch(proc: WorkerProcess, reactor: Reactor, on_exit: ExitHandler) -> None:
    pid = proc.pid
    assert pid is not None
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = -1
    if pidfd >= 0:

        def reap() -> None:
            try:
                got, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                got, status = pid, 0
            if got == 0:
                return
            reactor.remove_reader(pidfd)
            os.close(pidfd)
            on_exit(*proc._set_status(status))

        reactor.add_reader(pidfd, reap)
        return

    # Without pidfds (old kernels), a thread blocks in waitpid for this one child.
    def wait_thread() -> None:
        _, status = os.waitpid(pid, 0)
        result = proc._set_status(status)
        reactor.post(on_exit, *result)

    threading.Thread(target=wait_thread, name=f"pycluster-reap-{pid}", daemon=True).start()
