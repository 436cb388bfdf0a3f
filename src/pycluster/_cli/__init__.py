"""The ``pycluster`` command line.

One module per role:

* :mod:`~pycluster._cli.main`: the argument parser (cluster options come from the one
  settings definition in ``pycluster._settings``) and the sub-commands;
* :mod:`~pycluster._cli.primary`: the primary of ``run`` and ``serve``: forks the
  workers, logs their lifecycle, answers signals, runs the services below;
* :mod:`~pycluster._cli.worker`: what a worker process runs (``-m pycluster._cli.worker``);
* :mod:`~pycluster._cli.run`: makes an unchanged program's servers cluster-aware;
* :mod:`~pycluster._cli.sockets`: the plain-socket part of that (``bind`` interception);
* :mod:`~pycluster._cli.serve`: serves a WSGI or ASGI application with uvicorn;
* :mod:`~pycluster._cli.serveconf`: ``serve``'s configuration (file, environment,
  checks made before any fork);
* :mod:`~pycluster._cli.reloader`: ``serve --reload``'s source watcher;
* :mod:`~pycluster._cli.control`: the control socket and its client commands;
* :mod:`~pycluster._cli.status`: the per-worker table (``status``, ``status --watch``);
* :mod:`~pycluster._cli.metrics`: Prometheus metrics;
* :mod:`~pycluster._cli.systemd`: readiness notifications and socket activation;
* :mod:`~pycluster._cli.binds`: ``--bind`` addresses;
* :mod:`~pycluster._cli.logs`: logging set-up for the primary and the workers.

Library code raises; only this package turns errors into messages and exit codes.
"""

from __future__ import annotations

#: A worker could not import or find the application (as gunicorn's APP_LOAD_ERROR).
EXIT_APP_LOAD = 4
#: Bad usage of the command line (as argparse).
EXIT_USAGE = 2


class CliError(Exception):
    """A failure the command line reports as one line and an exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code
