"""scripts/kafka-local itself: idempotent up, restart keeps data and port, down leaves nothing.

Runs a second broker with its own state directory (PROCPOOL_KAFKA_LOCAL_DIR), so the session
broker is not touched.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

REPO = Path(__file__).resolve().parents[2]


def kafka_local(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PROCPOOL_KAFKA_LOCAL_DIR": str(state)}
    return subprocess.run(
        [str(REPO / "scripts" / "kafka-local"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def pid_alive(pid: int) -> bool:
    return (
        Path(f"/proc/{pid}").exists()
        and b"kafka.Kafka" in Path(f"/proc/{pid}/cmdline").read_bytes()
    )


def test_up_is_idempotent_restart_keeps_data_and_down_leaves_nothing(tmp_path: Path) -> None:
    state = tmp_path / "broker"
    try:
        first = kafka_local(state, "up")
        assert first.returncode == 0, first.stderr
        address = first.stdout.strip().splitlines()[-1]
        assert address.startswith("127.0.0.1:")
        again = kafka_local(state, "up")
        assert again.stdout.strip().splitlines()[-1] == address, "same broker, same address"
        admin = AdminClient({"bootstrap.servers": address})
        admin.create_topics([NewTopic("kept", 1, 1)])["kept"].result(timeout=30)
        pid = json.loads((state / "state.json").read_text())["pid"]
        assert pid_alive(pid)

        restarted = kafka_local(state, "restart")
        assert restarted.returncode == 0, restarted.stderr
        assert restarted.stdout.strip().splitlines()[-1] == address, "same port"
        assert not pid_alive(pid)
        admin = AdminClient({"bootstrap.servers": address})
        assert "kept" in admin.list_topics(timeout=30).topics, "same data"
        status = kafka_local(state, "status")
        assert status.returncode == 0 and status.stdout.strip().splitlines()[-1] == address
        pid = json.loads((state / "state.json").read_text())["pid"]
    finally:
        down = kafka_local(state, "down")
    assert down.returncode == 0
    assert not pid_alive(pid), "down leaves no broker process"
    assert not (state / "data").exists()
    assert kafka_local(state, "status").returncode == 1
