"""Batch runs end exactly at the end, on a real broker: transactional topics, a consumer
reused for several runs, and Ctrl-C (one: graceful, two: forced) in the library and the CLI."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import Producer

from procpool_kafka import ProcPoolConsumer
from tests.integration.handlers import coordinates, read_store, scripted
from tests.integration.runner import REPO, consumer_config
from tests.integration.test_cli import CLI, base_args, cli_env, run_cli, summary_of
from tests.kafka_helpers import KafkaTestEnv, unique_name, wait_for


def produce_transactionally(
    kafka: KafkaTestEnv, topic: str, partition: int, committed: int, aborted: int
) -> None:
    """``committed`` records in one committed transaction, then ``aborted`` in an aborted one."""
    producer = Producer(
        {"bootstrap.servers": kafka.bootstrap, "transactional.id": unique_name("tx")}
    )
    producer.init_transactions(30)
    for count, commit in ((committed, True), (aborted, False)):
        if count == 0:
            continue
        producer.begin_transaction()
        for _ in range(count):
            producer.produce(topic, value=b"ok:", partition=partition)
        producer.flush(30)
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)


def test_until_end_finishes_on_transactional_topics_with_committed_and_aborted_tails(
    kafka: KafkaTestEnv, tmp_path: Path
) -> None:
    topic = kafka.create_topic("tx-batch", partitions=2)
    produce_transactionally(kafka, topic, partition=0, committed=100, aborted=0)
    produce_transactionally(kafka, topic, partition=1, committed=100, aborted=7)
    store = tmp_path / "store.jsonl"
    group = unique_name("g")
    result = run_cli([*base_args(kafka, topic, group), "--until-end"], cli_env(store))
    assert result.returncode == 0, result.stderr
    assert summary_of(result.stdout)["ok"] == "200", "the aborted records are never handled"
    assert len(read_store(store)) == 200
    # the last offsets are transaction markers (and aborted records): committed past them
    assert kafka.committed(group, topic) == kafka.end_offsets(topic)


def test_one_consumer_runs_several_batches_each_summary_its_own(
    kafka: KafkaTestEnv, tmp_path: Path
) -> None:
    topic = kafka.create_topic("reuse", partitions=2)
    kafka.produce(topic, [b"ok:"] * 40)
    store = str(tmp_path / "store.jsonl")
    config = consumer_config(kafka.bootstrap, [topic])
    with ProcPoolConsumer(config, functools.partial(scripted, store)) as consumer:
        first = consumer.run(until_end=True)
        pids = set(consumer.worker_pids())
        again = consumer.run(until_end=True)
        kafka.produce(topic, [b"ok:"] * 5)
        third = consumer.run(until_end=True)
        assert set(consumer.worker_pids()) == pids, "the warm pool is reused"
    assert (first.records_ok, again.records_ok, third.records_ok) == (40, 0, 5)
    assert len(read_store(store)) == 45, "nothing handled twice"
    assert kafka.committed(config.group_id, topic) == kafka.end_offsets(topic)


LIBRARY_INTERRUPT = """
import functools, json, sys
from procpool_kafka import ConsumerConfig, ProcPoolConsumer
from tests.integration.handlers import scripted
config = ConsumerConfig(**json.loads(sys.argv[1]))
with ProcPoolConsumer(config, functools.partial(scripted, sys.argv[2])) as consumer:
    summary = consumer.run()
print("returned:", summary.records_ok, flush=True)
"""


def test_keyboard_interrupt_stops_library_run_gracefully(
    kafka: KafkaTestEnv, tmp_path: Path
) -> None:
    topic = kafka.create_topic("kbint", partitions=1)
    kafka.produce(topic, [b"slow:3:"])
    store = tmp_path / "store.jsonl"
    group = unique_name("g")
    config = {"bootstrap_servers": kafka.bootstrap, "group_id": group, "topics": [topic]}
    process = subprocess.Popen(
        [sys.executable, "-c", LIBRARY_INTERRUPT, json.dumps(config), str(store)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: read_store(store, "start"), timeout=60, message="handler started")
        process.send_signal(signal.SIGINT)  # Ctrl-C: KeyboardInterrupt in the main thread
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "returned: 1" in stdout, "the running handler finished within revoke_timeout"
    assert kafka.committed(group, topic) == {0: 1}
    assert coordinates(store) == {(topic, 0, 0)}


def test_second_sigint_forces_the_stop_within_seconds(kafka: KafkaTestEnv, tmp_path: Path) -> None:
    topic = kafka.create_topic("cli-force", partitions=1)
    kafka.produce(topic, [b"hang:"])
    store = tmp_path / "store.jsonl"
    log_path = tmp_path / "stderr.log"
    args = [*base_args(kafka, topic, unique_name("g")), "--revoke-timeout", "30"]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*CLI, *args], cwd=REPO, env=cli_env(store), stdout=subprocess.PIPE, stderr=log
        )
    try:
        wait_for(lambda: read_store(store, "start"), timeout=60, message="handler started")
        process.send_signal(signal.SIGINT)
        wait_for(lambda: "draining" in log_path.read_text(), timeout=30, message="drain begun")
        forced = time.monotonic()
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        elapsed = time.monotonic() - forced
    finally:
        process.kill()
    assert process.returncode == 130, log_path.read_text()
    assert elapsed < 10, f"forced stop took {elapsed:.1f}s (revoke_timeout is 30 s)"
    assert os.path.exists(store)
