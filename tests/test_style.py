"""One formatter and one linter for the whole repository (ruff, configured in pyproject.toml, C901 included):
CI fails on a file that `ruff format` would change or `ruff check` flags."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", [["format", "--check"], ["check"]], ids=["format", "lint"])
def test_ruff_is_clean(command: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "."], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_every_test_has_a_time_limit(request):
    """pytest-timeout: a default for every test, a longer one for the slow ones; a hang fails its test instead
    of waiting for CI's 90-minute limit."""
    default = float(request.config.getini("timeout"))
    assert 0 < default <= 600
    items = request.session.items
    assert items and request.config.pluginmanager.hasplugin("timeout")
    for item in items:
        marker = item.get_closest_marker("timeout")
        limit = marker.args[0] if marker else default
        assert 0 < limit <= 3600, item.nodeid
        if item.get_closest_marker("slow"):
            assert limit >= 1800, item.nodeid
