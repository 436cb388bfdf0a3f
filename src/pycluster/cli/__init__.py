"""The ``pycluster`` command line.

One module per role:

* :mod:`~pycluster.cli.main`: the argument parser (cluster options come from the one
  settings definition in ``pycluster._settings``) and the sub-commands;
* :mod:`~pycluster.cli.primary`: the primary of ``run`` and ``serve``: forks the
  workers, logs their lifecycle, answers signals, runs the services below;
* :mod:`~pycluster.cli.worker`: what a worker process runs (``-m pycluster.cli.worker``);
* :mod:`~pycluster.cli.run`: makes an unchanged program's servers cluster-aware;
* :mod:`~pycluster.cli.sockets`: the plain-socket part of that (``bind`` interception);
* :mod:`~pycluster.cli.serve`: serves a WSGI or ASGI application with uvicorn;
* :mod:`~pycluster.cli.control`: the control socket and its client commands;
* :mod:`~pycluster.cli.status`: the per-worker table (``status``, ``status --watch``);
* :mod:`~pycluster.cli.metrics`: Prometheus metrics;
* :mod:`~pycluster.cli.systemd`: readiness notifications and socket activation;
* :mod:`~pycluster.cli.binds`: ``--bind`` addresses;
* :mod:`~pycluster.cli.logs`: logging set-up for the primary and the workers.

Library code raises; only this package turns errors into messages and exit codes.
"""

from __future__ import annotations

#: A worker could not import or find the application (as gunicorn's APP_LOAD_ERROR).
EXIT_APP_LOAD = 4
#: Bad usage of the command line (as argparse).
EXIT_USAGE = 2
