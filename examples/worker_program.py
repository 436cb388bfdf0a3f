"""The worker program of ``setup_primary.py``: a separate script that workers run.

``setup_primary(exec=...)`` points workers here, and ``args`` says which protocol
this one would serve. It is a worker like any other (``cluster.worker.id`` works),
and it ends once it has said so.
"""

from __future__ import annotations

import argparse

import pycluster as cluster

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--use", choices=["http", "https"], required=True)
options = parser.parse_args()

if cluster.is_worker:
    print(f"I am worker #{cluster.worker.id}, set up to use {options.use}")
else:
    print("not started by a primary: run setup_primary.py instead")
