"""Every entry point answers --help (exit 0) and a bad argument with one line (exit 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize(
    "module",
    [
        "procpool_kafka.cli",
        "benchmarks.throughput",
        "benchmarks.side_by_side",
        "benchmarks.pool_overhead",
    ],
)
def test_python_entry_points_print_help(module: str) -> None:
    result = run([sys.executable, "-m", module, "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: "), result.stdout


def test_run_help_shows_off_for_task_timeout() -> None:
    result = run([sys.executable, "-m", "procpool_kafka.cli", "run", "--help"])
    assert "(seconds, or off) (default: off)" in " ".join(result.stdout.split())


def test_demo_help_and_bad_count() -> None:
    shown = run([str(REPO / "scripts" / "demo"), "--help"])
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("usage: scripts/demo [N]")
    bad = run([str(REPO / "scripts" / "demo"), "many"])
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "scripts/demo: error: N must be a positive whole number, got 'many' (see --help)"
    ]
