"""docs/deploy.md's recipe: two primaries behind nginx, each reloaded under load, nothing fails.

Runs bench/deploy_nginx.py's recipe for a short while. nginx comes from Debian's
packages and tests never install system packages: without nginx the test is skipped
(``python bench/deploy_nginx.py`` installs it and runs the full recipe).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import Cluster

pytest.importorskip("uvicorn")

RECIPE = Path(__file__).resolve().parents[2] / "bench" / "deploy_nginx.py"


def load_recipe() -> ModuleType:
    """bench/deploy_nginx.py as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("deploy_nginx", RECIPE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["deploy_nginx"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(60)
def test_reload_behind_nginx_loses_no_request(cluster_env: Cluster) -> None:
    recipe = load_recipe()
    nginx = recipe.find_nginx(install=False)
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx-core)")
    report = recipe.run_recipe(
        nginx, cluster_env.tmp, duration=2.0, workers=1, clients=4, env=cluster_env.env()
    )
    assert report.failures == []
    # nginx says the scheme itself (a client's own X-Forwarded-Proto is overwritten)
    # and the client's address, and serve trusts both from a Unix-socket peer.
    assert report.seen == "http 127.0.0.1"
    assert report.requests > 100
    assert len(report.reloads) == 2
    # Both primaries answered, before and after their reloads: 2 x 1 worker, twice.
    assert len(report.by_pid) == 4
