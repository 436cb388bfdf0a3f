"""The ASGI app of ``hypercorn_app.py`` on daphne (Django Channels' server, on Twisted).

Usage: ``daphne_app.py PORT``: runs daphne's command line, as ``daphne -b 127.0.0.1
-p PORT hypercorn_app:app`` would. Writes ``cleanup-PID`` once daphne has returned.
"""

import os
import sys
from pathlib import Path

from daphne.cli import CommandLineInterface

if __name__ == "__main__":
    CommandLineInterface().run(["-b", "127.0.0.1", "-p", sys.argv[1], "hypercorn_app:app"])
    Path(f"cleanup-{os.getpid()}").touch()
