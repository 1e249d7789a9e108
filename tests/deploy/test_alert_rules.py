"""The alert rules' unit tests (deploy/prometheus/alerts_test.yml), run by promtool."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.deploy.promql import ROOT


def test_promtool_alert_unit_tests_pass() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: run scripts/system-deps (Debian package prometheus)")
    done = subprocess.run(
        [promtool, "test", "rules", "deploy/prometheus/alerts_test.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
