"""A partition paused when it leaves the consumer (backpressure, or a retry-topic partition
holding a record that is not due yet) is fetched again when it comes back: through a
revoke and reassign, and through a loss (session expiry) and reassign.

librdkafka 2.x clears a partition's pause when it is assigned again, and our PauseBook
forgets the partitions that leave; these tests pin both, on the real broker.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.handlers import coordinates, plain
from tests.integration.runner import (
    FAST_GROUP,
    ThreadedConsumer,
    consumer_config,
    group_settings,
    spawn_consumer_process,
)
from tests.kafka_helpers import KafkaTestEnv, unique_name, wait_for

#: both protocols' session timeout in tests (FAST_GROUP; scripts/kafka-local's broker setting)
SESSION_TIMEOUT_S = FAST_GROUP["session.timeout.ms"] / 1000


def member_config(
    kafka: KafkaTestEnv, topic: str, group: str, group_protocol: str
) -> dict[str, Any]:
    return {
        **group_settings(group_protocol),
        "bootstrap_servers": kafka.bootstrap,
        "group_id": group,
        "topics": [topic],
        "workers": 2,
        "commit_interval": 0.2,
        "max_in_flight": 4,
        "revoke_timeout": 10.0,
        "retry": [{"topic": topic, "retry_topics": [f"{topic}-retry"]}],
        "create_topics": True,
        "_log_level": "DEBUG",
    }


def fill(kafka: KafkaTestEnv, topic: str, reason: str) -> int:
    """Records that make the member pause for ``reason``; returns how many there are."""
    if reason == "backpressure":
        # at max_in_flight (4) for over a second, the member pauses its partitions
        return kafka.produce(topic, [b"slow:3:"] * 12)
    kafka.create_named_topic(f"{topic}-retry", partitions=2)
    not_before = str(int(time.time() * 1000) + 8000).encode()  # due in 8 s
    headers = [("procpool.attempt", b"2"), ("procpool.not-before", not_before)]
    for partition in (0, 1):  # one held record per retry partition
        kafka.produce(f"{topic}-retry", [b"ok:"], partition=partition, headers=headers)
    return 2 + kafka.produce(topic, [b"ok:"] * 4)


@pytest.mark.parametrize("reason", ["backpressure", "not-due"])
def test_paused_partitions_are_fetched_again_after_revoke_loss_and_reassign(
    kafka: KafkaTestEnv, tmp_path: Path, reason: str, group_protocol: str
) -> None:
    topic = kafka.create_topic(f"pause-{reason}", partitions=2)
    kafka.track(f"{topic}-retry")
    expected = fill(kafka, topic, reason)
    store, log_file = tmp_path / "a.jsonl", tmp_path / "a.log"
    group = unique_name("g")
    member = spawn_consumer_process(
        member_config(kafka, topic, group, group_protocol), store, log_file
    )
    try:
        wait_for(
            lambda: f"({reason})" in log_file.read_text(),
            timeout=60,
            message=f"a partition paused for {reason}",
        )
        # revoke and reassign: a second member joins and leaves again
        joiner = consumer_config(kafka.bootstrap, [topic], group_protocol, group_id=group)
        other = tmp_path / "b.jsonl"
        with ThreadedConsumer(joiner, functools.partial(plain, str(other))) as second:
            wait_for(second.consumer.assignment, timeout=60, message="the joiner's share")
        # loss and reassign: the member misses its session (consumer process stopped; its
        # workers keep running), is evicted, gets "lost", rejoins and is assigned again
        assignments = log_file.read_text().count("assigned:")
        os.kill(member.pid, signal.SIGSTOP)
        try:
            time.sleep(SESSION_TIMEOUT_S + 3)  # the fault itself
        finally:
            os.kill(member.pid, signal.SIGCONT)
        wait_for(lambda: "lost:" in log_file.read_text(), timeout=60, message="lost")
        wait_for(
            lambda: log_file.read_text().count("assigned:") > assignments,
            timeout=60,
            message="assigned again after the loss",
        )
        wait_for(
            lambda: len(coordinates(store) | coordinates(other)) >= expected,
            timeout=120,
            message="every record handled",
        )
        wait_for(lambda: kafka.fully_committed(group, topic), timeout=60)
        if reason == "not-due":
            wait_for(lambda: kafka.fully_committed(group, f"{topic}-retry"), timeout=60)
    finally:
        member.send_signal(signal.SIGTERM)
        member.wait(timeout=60)
