"""A private broker for the chaos run: it gets restarted, so nobody else may share it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class PrivateBroker:
    bootstrap: str
    state_dir: Path

    def command(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(REPO / "scripts" / "kafka-local"), *args],
            env={**os.environ, "PROCPOOL_KAFKA_LOCAL_DIR": str(self.state_dir)},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def restart(self) -> None:
        result = self.command("restart")
        assert result.returncode == 0, result.stderr


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.fail(
            "the chaos run restarts its broker: it needs scripts/kafka-local "
            "(unset KAFKA_BOOTSTRAP_SERVERS)",
            pytrace=False,
        )
    broker = PrivateBroker("", tmp_path / "broker")
    result = broker.command("up")
    assert result.returncode == 0, result.stderr
    broker = PrivateBroker(result.stdout.strip().splitlines()[-1], broker.state_dir)
    try:
        yield broker
    finally:
        broker.command("down")
