"""On a failure, show what every cluster the test started printed (logs, tracebacks)."""

from __future__ import annotations

from collections.abc import Generator

import pytest

from tests.conftest import Commands


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report = outcome.get_result()
    commands = getattr(item, "funcargs", {}).get("commands")
    if report.when == "call" and report.failed and isinstance(commands, Commands):
        for number, command in enumerate(commands.started, 1):
            report.sections.append((f"cluster {number} output", command.output))
