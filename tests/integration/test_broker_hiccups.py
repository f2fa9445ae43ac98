"""Transient broker errors on a real broker: a first run against a freshly started broker
(no group coordinator yet), a topic created a moment before the run, a broker restart in the
middle of a batch run. Each ends as a normal run would: exit 0, everything committed."""

from __future__ import annotations

import functools
from pathlib import Path

from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from procpool_kafka import ConsumerConfig, ProcPoolConsumer
from procpool_kafka.retry import RetryPolicy
from tests.conftest import PrivateBroker
from tests.integration.handlers import read_store, scripted
from tests.integration.test_cli import cli_env, run_cli, spawn_cli, summary_of
from tests.kafka_helpers import KafkaTestEnv, unique_name, wait_for


def batch_args(bootstrap: str, topic: str, group: str) -> list[str]:
    return [
        "run", "tests.integration.handlers:from_env", "-b", bootstrap, "-G", group,
        "-t", topic, "--workers", "2", "--until-end",
    ]  # fmt: skip


def test_first_run_on_a_freshly_started_broker(
    private_broker: PrivateBroker, tmp_path: Path
) -> None:
    """No __consumer_offsets yet: the group's first look-ups meet NOT_COORDINATOR and
    COORDINATOR_NOT_AVAILABLE, which are retried, never a traceback."""
    kafka = KafkaTestEnv(private_broker.bootstrap)
    try:
        topic = kafka.create_topic("fresh", partitions=3)
        kafka.produce(topic, [b"ok:"] * 30)
        group = unique_name("g")
        result = run_cli(
            batch_args(kafka.bootstrap, topic, group), cli_env(tmp_path / "store.jsonl"), 180
        )
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        assert summary_of(result.stdout)["ok"] == "30"
        assert summary_of(result.stdout)["committed"] == "3/3"
        assert kafka.committed(group, topic) == kafka.end_offsets(topic)
    finally:
        kafka.cleanup()


def test_batch_run_on_topics_created_a_moment_before(kafka: KafkaTestEnv, tmp_path: Path) -> None:
    """Metadata, watermarks and the retry topic creation right after the topic's creation
    (LEADER_NOT_AVAILABLE, UNKNOWN_TOPIC_OR_PART for a moment) are retried."""
    topic = unique_name("new")
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    admin.create_topics([NewTopic(topic, 4, 1)])[topic].result(timeout=30)
    kafka.track(topic, f"{topic}-retry", f"{topic}-dlq")
    policy = RetryPolicy(topic=topic, retry_topics=(f"{topic}-retry",), dlq_topic=f"{topic}-dlq")
    config = ConsumerConfig(
        bootstrap_servers=kafka.bootstrap,
        group_id=unique_name("g"),
        topics=[topic],
        workers=1,
        retry=[policy],
        create_topics=True,
    )
    with ProcPoolConsumer(
        config, functools.partial(scripted, str(tmp_path / "s"))
    ) as consumer:  # no leader wait before this
        summary = consumer.run(until_end=True)
    assert summary.records_ok == 0
    assert summary.end_commit is not None and summary.end_commit.complete


def test_broker_restart_in_the_middle_of_a_batch_run(
    private_broker: PrivateBroker, tmp_path: Path
) -> None:
    """Commits, fetches and the coordinator fail while the broker is away; the run carries on
    and ends with everything committed."""
    kafka = KafkaTestEnv(private_broker.bootstrap)
    try:
        topic = kafka.create_topic("restart", partitions=4)
        kafka.produce(topic, [b"slow:0.02:"] * 400)
        group = unique_name("g")
        store = tmp_path / "store.jsonl"
        process = spawn_cli(batch_args(kafka.bootstrap, topic, group), store)
        try:
            wait_for(lambda: len(read_store(store)) >= 60, timeout=90, message="work begun")
            private_broker.restart()
            stdout, stderr = process.communicate(timeout=180)
        finally:
            process.kill()
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr
        assert summary_of(stdout)["committed"] == "4/4"
        handled = {(e["partition"], e["offset"]) for e in read_store(store)}
        assert len(handled) == 400, "every record handled (some maybe twice)"
        assert kafka.committed(group, topic) == kafka.end_offsets(topic)
    finally:
        kafka.cleanup()
