"""The broker is real and the group machinery works: two processes split a topic's partitions,
commits land, and a restarted member resumes at the committed offset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.kafka_helpers import KafkaTestEnv, unique_name, wait_for

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 4


class Member:
    """A group member process writing its events to a JSON-lines file."""

    def __init__(
        self,
        kafka: KafkaTestEnv,
        group: str,
        topic: str,
        workdir: Path,
        name: str,
        *,
        protocol: str,
    ):
        self.out = workdir / f"{name}.jsonl"
        self.stop_file = workdir / f"{name}.stop"
        self.out.touch()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration.group_member",
                kafka.bootstrap,
                group,
                topic,
                str(self.out),
                str(self.stop_file),
                protocol,
            ],
            cwd=REPO,
        )

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.read_text().splitlines() if line]

    def assignment(self) -> set[int]:
        latest = [e["assigned"] for e in self.events() if "assigned" in e]
        return set(latest[-1]) if latest else set()

    def consumed(self) -> list[tuple[int, int]]:
        return [(e["partition"], e["offset"]) for e in self.events() if "partition" in e]

    def stop(self) -> None:
        self.stop_file.touch()
        assert self.process.wait(timeout=30) == 0


def test_two_members_split_partitions_commit_and_resume(
    kafka: KafkaTestEnv, tmp_path: Path, group_protocol: str
) -> None:
    topic = kafka.create_topic("group", partitions=PARTITIONS)
    group = unique_name("group")
    first, second = (
        Member(kafka, group, topic, tmp_path, n, protocol=group_protocol) for n in ("a", "b")
    )
    try:
        wait_for(
            lambda: (
                first.assignment()
                and second.assignment()
                and first.assignment() | second.assignment() == set(range(PARTITIONS))
                and not first.assignment() & second.assignment()
            ),
            timeout=60,
            message="both members hold a disjoint share of the partitions",
        )
        kafka.produce_to_partitions(topic, PARTITIONS, per_partition=5)
        wait_for(
            lambda: len(first.consumed()) + len(second.consumed()) == 5 * PARTITIONS,
            timeout=60,
            message="all 20 messages consumed",
        )
        assert first.consumed() and second.consumed(), "each member handled its share"
        assert {p for p, _ in first.consumed()} == first.assignment()
        assert {p for p, _ in second.consumed()} == second.assignment()
    finally:
        first.stop()
        second.stop()

    assert kafka.committed(group, topic) == dict.fromkeys(range(PARTITIONS), 5)
    assert kafka.group_protocol(group) == group_protocol

    kafka.produce_to_partitions(topic, PARTITIONS, per_partition=3)
    restarted = Member(kafka, group, topic, tmp_path, "c", protocol=group_protocol)
    try:
        wait_for(lambda: len(restarted.consumed()) == 3 * PARTITIONS, timeout=60)
    finally:
        restarted.stop()
    consumed = restarted.consumed()
    assert sorted(consumed) == [(p, o) for p in range(PARTITIONS) for o in range(5, 8)]
    assert kafka.committed(group, topic) == dict.fromkeys(range(PARTITIONS), 8)
