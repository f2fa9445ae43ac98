"""Session fixtures: a real Apache Kafka broker for the integration tests.

The broker is, in order of preference: the cluster named by KAFKA_BOOTSTRAP_SERVERS; a
testcontainers Kafka when a Docker engine answers; this checkout's scripts/kafka-local broker
(started here and stopped at the end of the session if this session started it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.kafka_helpers import KafkaTestEnv

REPO = Path(__file__).resolve().parent.parent
KAFKA_LOCAL = REPO / "scripts" / "kafka-local"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-messages",
        type=int,
        default=int(os.environ.get("CHAOS_MESSAGES", "2000")),
        help="messages in the chaos run (CI: 2000; full: 20000)",
    )


@dataclass(frozen=True)
class LocalBroker:
    """What `scripts/kafka-local up --sasl` printed."""

    bootstrap: str
    sasl: dict[str, str]


def parse_kafka_local_output(stdout: str) -> LocalBroker:
    lines = [line.strip() for line in stdout.strip().splitlines() if line.strip()]
    sasl = dict(line.split("=", 1) for line in lines[:-1] if "=" in line)
    return LocalBroker(bootstrap=lines[-1], sasl=sasl)


def docker_engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def kafka_local(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KAFKA_LOCAL), *args], capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture(params=("classic", "consumer"))
def group_protocol(request: pytest.FixtureRequest) -> str:
    """A group test runs under the classic protocol and under KIP-848's consumer protocol."""
    return str(request.param)


@pytest.fixture(scope="session")
def local_broker() -> Iterator[LocalBroker | None]:
    """This checkout's kafka-local broker with its SASL listener, or None when another is used."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or docker_engine_answers():
        yield None
        return
    already_running = kafka_local("status").returncode == 0
    result = kafka_local("up", "--sasl")
    if result.returncode != 0:
        pytest.fail(f"scripts/kafka-local up failed:\n{result.stderr}", pytrace=False)
    try:
        yield parse_kafka_local_output(result.stdout)
    finally:
        if not already_running:
            kafka_local("down")


@pytest.fixture(scope="session")
def kafka_bootstrap(local_broker: LocalBroker | None) -> Iterator[str]:
    """The bootstrap address of a real Kafka broker for this test session."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    if local_broker is not None:
        yield local_broker.bootstrap
        return
    from testcontainers.kafka import KafkaContainer

    with KafkaContainer() as container:
        yield container.get_bootstrap_server()


@dataclass(frozen=True)
class PrivateBroker:
    """A broker of one test's own (restarted, stopped, or fresh from its first start)."""

    bootstrap: str
    state_dir: Path

    def command(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(KAFKA_LOCAL), *args],
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
    """A freshly formatted scripts/kafka-local broker for this test only."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.fail(
            "this test needs a broker of its own: scripts/kafka-local "
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


@pytest.fixture
def kafka(kafka_bootstrap: str) -> Iterator[KafkaTestEnv]:
    """Per-test helpers; topics it created are deleted afterwards."""
    env = KafkaTestEnv(kafka_bootstrap)
    try:
        yield env
    finally:
        env.cleanup()
