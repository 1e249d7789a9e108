"""How the suite splits across pytest-xdist workers (`scripts/test` runs ``-n 2 --dist loadgroup``).

Most of the suite's time is spent waiting: for a server to start, restart, drain or time out. Two workers
overlap those waits. Each test file stays on one worker, so its module-scoped fixtures (a built wheel, a
Prometheus) start once, and every file under ``tests/cluster`` shares one worker and its one cluster of
replicas (a session fixture). ``tests/models`` has no such fixtures and its slowest tests sit in two files,
so its tests go to whichever worker is free. Without xdist the marks do nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_TESTS = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.pluginmanager.hasplugin("xdist"):
        return  # the mark is xdist's: without it, ``--strict-markers`` would refuse it
    for item in items:
        relative = item.path.relative_to(_TESTS)
        if relative.parts[0] == "models":
            continue
        group = "cluster" if relative.parts[0] == "cluster" else relative.as_posix()
        item.add_marker(pytest.mark.xdist_group(group))
